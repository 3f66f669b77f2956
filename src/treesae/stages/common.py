"""Tables and metrics files of the stages, written deterministically (same values, same bytes) and atomically.

No torch: the table-reading stages (numbers, figures, paper) depend on this file. Selections of runs from
stage 02's runs table live in ``treesae.runs``.
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
from ..runs import recipe_runs

FLOAT_FORMAT = "%.6g"
SIG_DIGITS = 6
TABLES = {  # what the table-reading stages (numbers, figures) read, by name -> path under data/; dvc.yaml lists each
    "train.config": "train/config.json", "train.metrics": "train/metrics.json",
    "position.profile": "analysis/position/profile.csv", "position.deciles": "analysis/position/deciles.csv",
    "position.intervention": "analysis/position/intervention.csv",
    "position.lm_vs_sae_tokens": "analysis/position/lm_vs_sae_tokens.csv",
    "position.corpora": "analysis/position/corpora.csv", "position.metrics": "analysis/position/metrics.json",
    "matching.pairs": "analysis/matching/pairs.csv", "matching.factors": "analysis/matching/factors.csv",
    "matching.effects": "analysis/matching/effects.csv", "matching.effects_boot": "analysis/matching/effects_boot.csv",
    "matching.pair_features": "analysis/matching/pair_features.csv",
    "matching.layer_pairs": "analysis/matching/layer_pairs.csv",
    "matching.embedding_umap": "analysis/matching/embedding_umap.csv",
    "matching.embedding_tsne": "analysis/matching/embedding_tsne.csv", "matching.metrics": "analysis/matching/metrics.json",
    "hierarchy.coactivation": "analysis/hierarchy/coactivation.csv",
    "hierarchy.decoder_cosine": "analysis/hierarchy/decoder_cosine.csv",
    "hierarchy.levels": "analysis/hierarchy/levels.csv", "hierarchy.l0_per_token": "analysis/hierarchy/l0_per_token.csv",
    "hierarchy.probe_scores": "analysis/hierarchy/probe_scores.csv",
    "hierarchy.metrics": "analysis/hierarchy/metrics.json", "saebench.metrics": "analysis/saebench/metrics.json",
    "synthetic.scores": "analysis/synthetic/scores.csv", "synthetic.metrics": "analysis/synthetic/metrics.json",
}


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


def load_tables(names) -> dict:
    """{name: DataFrame (CSV) or dict (JSON)} of ``TABLES``' ``names``."""
    return {n: (read_json if TABLES[n].endswith(".json") else read_table)(paths.data(TABLES[n])) for n in names}


def recipe_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """The training curves (data/train/curves/) of the base run and its recipe ablations (``runs.recipe_runs``), with
    their run, ``variant`` and architecture."""
    return pd.concat([read_table(paths.data("train", "curves", f"{run}.csv")).assign(
        run=run, variant=r.variant, architecture=r.architecture) for run, r in recipe_runs(metrics).iterrows()],
        ignore_index=True)
