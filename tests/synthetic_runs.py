"""A synthetic stage-02 runs table (data/train/metrics.csv) built with the real sweep expansion.

    from synthetic_runs import metrics_table      # tests/ is on sys.path (its conftest.py)
"""
import numpy as np
import pandas as pd

from treesae import runs

TRAIN = {
    "base": {"architecture": "topk", "corpus": "brown", "layer": 15, "d_sae": 4608, "k": 32, "seed": 0},
    "grids": {
        "frontier": {"architecture": ["topk", "batchtopk", "matryoshka", "relu", "stacked", "residual", "tree"],
                     "k": [16, 32, 64]},
        "seed": {"seed": [1, 2]},
        "corpus": {"corpus": ["pydocs"]},
        "size": {"d_sae": [2304, 9216]},
        "layer": {"layer": [3, 9, 21]},
        "recipe": {"options": [{"aux_k": False}, {"tied_init": False}, {"geometric_median_init": False}]},
    },
}


def metrics_table(seed=0) -> pd.DataFrame:
    """What stage 02 (treesae.stages.train.evaluate) writes, with made-up metric values, indexed by run name."""
    rng = np.random.default_rng(seed)
    grids = runs.grids_of(TRAIN)
    rows = []
    for r in runs.expand(TRAIN):
        f = r.factors()
        nmse = 0.3 / np.sqrt(r.k) * (1 + rng.random() / 5)
        row = dict(f, grids=",".join(grids[r.name]), n_tokens=32768, nmse=nmse, fvu=nmse * 1.8,
                   explained_variance=1 - nmse * 1.8, l0=float(r.k), l0_p10=float(r.k), l0_p50=r.k, l0_p90=float(r.k),
                   dead_fraction=0.5 if f["aux_k"] is False else 0.01 * rng.random(), dead_window_tokens=32768,
                   ce_clean=3.8, ce_zero=10.0, ce_increase=0.1 + nmse, ce_score=0.9, kl_score=0.88, n_predictions=2032)
        if r.architecture in ("stacked", "residual", "tree", "matryoshka"):
            for i in range(3):
                row.update({f"l0_level{i}": r.k / 3, f"dead_fraction_level{i}": 0.01 * i,
                            f"nmse_cumulative_level{i}": np.nan if r.architecture == "stacked" else nmse * (3 - i)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("name")
