"""Glue shared by stages 03-06: the runs table of stage 02, picking SAEs from it, writing tables and
metrics files deterministically.

``data/train/metrics.csv`` has one row per SAE (index ``name``) with its training factors
(architecture, corpus, layer, d_sae, k, seed, tied_init, aux_k, b_dec_init), ``grids`` (the
comma-joined grids of ``params.yaml`` it belongs to: base, frontier, seed, corpus, size, layer,
recipe) and its held-out metrics. Nothing here imports torch, the analysis library or the SAEs at
module level: stage 06 depends on this file and must stay independent of them.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..io import write_bytes_atomic, write_json
from ..saes import load_sae

FLOAT_FORMAT = "%.6g"
SIG_DIGITS = 6


def metrics_path() -> Path:
    return paths.data("train", "metrics.csv")


def read_metrics(path=None) -> pd.DataFrame:
    """Stage 02's runs table, indexed by run name."""
    path = Path(path or metrics_path())
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the training stage first (`dvc repro train`).")
    return pd.read_csv(path, index_col="name")


def grid_sets(metrics: pd.DataFrame) -> pd.Series:
    """Run name -> set of grid names (the ``grids`` column split on commas)."""
    return metrics["grids"].fillna("").astype(str).map(lambda g: frozenset(x for x in g.split(",") if x))


def in_grids(metrics: pd.DataFrame, *grids) -> pd.Series:
    """Boolean mask: runs that belong to at least one of ``grids``."""
    want = set(grids)
    return grid_sets(metrics).map(lambda g: bool(g & want))


def base_run(metrics: pd.DataFrame) -> pd.Series:
    """The ``base`` run of the sweep (every grid varies it)."""
    rows = metrics[in_grids(metrics, "base")]
    if len(rows) != 1:
        raise ValueError(f"metrics.csv has {len(rows)} runs in the 'base' grid, expected exactly one.")
    return rows.iloc[0]


def pick(metrics: pd.DataFrame, grids=None, **equal) -> pd.DataFrame:
    """Runs in any of ``grids`` (None: all) whose columns equal the given values, in table order."""
    mask = pd.Series(True, index=metrics.index) if grids is None else in_grids(metrics, *grids)
    for col, value in equal.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple, set)) else [value]
        mask &= metrics[col].isin(list(values))
    return metrics[mask]


def layer_runs(metrics: pd.DataFrame, architecture: str = "topk", corpus: str | None = None) -> pd.DataFrame:
    """One SAE per layer: the base run and the ``layer`` grid (they differ only in layer), restricted to
    ``architecture`` and, when given, ``corpus``. Sorted by layer; index run name."""
    base = base_run(metrics)
    rows = pick(metrics, ["base", "layer"], architecture=architecture, corpus=corpus or base.corpus)
    if rows.empty:
        raise ValueError(f"no {architecture} SAE in the base run or the 'layer' grid of metrics.csv "
                         f"(corpus {corpus or base.corpus}); set the stage's architecture/corpus to a trained one.")
    rows = rows.sort_values(["layer", "seed"], kind="stable")
    return rows[~rows.layer.duplicated()]


def load_saes(names) -> dict:
    """{run name: SAE} from data/saes/<run>/ (eval mode, CPU)."""
    out = {}
    for n in names:
        p = paths.data("saes", n)
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: metrics.csv lists run {n} but its SAE is missing; rerun `dvc repro train`.")
        out[n] = load_sae(p).eval()
    return out


def out_dir(name: str) -> Path:
    """data/analysis/<name>/ (created)."""
    d = paths.data("analysis", name)
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_table(df: pd.DataFrame, path, index: bool = False) -> Path:
    """CSV with float_format %.6g, written atomically (same table, same bytes)."""
    buf = io.StringIO()
    df.to_csv(buf, index=index, float_format=FLOAT_FORMAT, lineterminator="\n")
    write_bytes_atomic(path, buf.getvalue().encode())
    return Path(path)


def read_table(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it (see dvc.yaml).")
    return pd.read_csv(path)


def tidy(x):
    """JSON-ready, deterministic: floats to 6 significant digits, NaN/inf -> None, numpy -> Python."""
    if isinstance(x, dict):
        return {str(k): tidy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray, pd.Index)):
        return [tidy(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{SIG_DIGITS}g}")
    if x is None or isinstance(x, str):
        return x
    if x is pd.NA or x is pd.NaT:
        return None
    return str(x)


def write_metrics(path, values: dict) -> dict:
    """A stage's metrics file (sorted keys, rounded floats); returns what was written."""
    values = tidy(values)
    write_json(path, values)
    return values


def read_json(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it (see dvc.yaml).")
    return json.loads(path.read_text())
