"""The decoder recipe on the language model, converged: stage 02's runs tables compared side by side.

    python -m treesae.workspace recipelm build/recipelm --harvest-from $PWD
    (cd build/recipelm && TREESAE_ROOT=$PWD dvc repro train)
    python benchmarks/recipe_lm_compare.py data/train/metrics.csv build/recipelm/data/train/metrics.csv

Every table must come from the same harvest, optimiser and held-out draw (the recipelm profile is the default's
with other decoder options). Rows are grouped by architecture and recipe (the run's options; ``{}`` is the
default recipe) over the runs at the base's corpus, layer, width and k. Prints, per group, the seeds, held-out
FVU, CE increase, dead fraction, last-quarter FVU gain and how many converged; then each recipe minus the default
(mean +- 2 SE over seeds, ``treesae.stats.mean_difference``) and ``RATIO fvu_<arch>_<recipe>_of_default``.
"""
import argparse
import json
import resource

import pandas as pd

from treesae.stats import mean_difference

RECIPES = {"{}": "default",
           json.dumps({"decoder_init_norm": 0.1, "normalize_decoder": False, "rescale_acts_by_decoder_norm": True},
                      sort_keys=True): "fold_median",
           json.dumps({"decoder_init_norm": 0.1, "normalize_decoder": False}, sort_keys=True): "free_median"}
COLS = ("fvu", "ce_increase", "dead_fraction", "fvu_gain_last_quarter")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tables", nargs="+", help="stage 02 metrics.csv files")
    a = ap.parse_args()
    t = pd.concat([pd.read_csv(f, index_col="name") for f in a.tables])
    t = t[~t.index.duplicated()]
    base = t[(t.corpus == "brown") & (t.layer == 15) & (t.d_sae == 768) & (t.k == 32)].copy()
    base["recipe"] = base.options.map(lambda o: RECIPES.get(json.dumps(json.loads(o), sort_keys=True), o))
    base = base[base.recipe.isin(RECIPES.values())]
    rows = []
    for (arch, recipe), g in base.groupby(["architecture", "recipe"], sort=True):
        rows.append(dict(architecture=arch, recipe=recipe, seeds=",".join(map(str, sorted(g.seed))),
                         **{c: g[c].mean() for c in COLS}, converged=f"{int(g.converged.sum())}/{len(g)}"))
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("\nrecipe minus default (mean, +- 2 SE over seeds)")
    ratios = []
    for (arch, recipe), g in base.groupby(["architecture", "recipe"], sort=True):
        if recipe == "default":
            continue
        ref = base[(base.architecture == arch) & (base.recipe == "default")]
        parts = []
        for c in COLS[:2]:
            d, lo, hi = mean_difference(g[c], ref[c])
            parts.append(f"{c} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        print(f"  {arch:10s} {recipe:12s} " + "   ".join(parts))
        ratios.append((f"fvu_{arch}_{recipe}_of_default", g.fvu.mean() / ref.fvu.mean()))
    for name, r in ratios:
        print(f"RATIO {name} {r:.4f}")
    print(f"PEAK_RSS_MB recipe_lm_compare {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
