"""Build the browser from stage outputs: ``python -m treesae.browser --help``.

    saes, meta, caches = load_inputs("data/saes", "data/train/metrics.csv", "data/activations")
    data = extract(saes, meta, caches, load_model())
    write_site(data, "build/browser")
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import pandas as pd

from .. import paths

NAME_COLUMNS = ("name", "run", "sae")


def load_inputs(saes_dir, meta_csv, activations_dir, name_column: str | None = None):
    """(saes, meta, caches) from a directory of ``save_sae`` outputs, a metrics table with one row per
    SAE, and the activation caches (``<activations_dir>/<corpus>``).

    saes: every sub-directory with a ``treesae.json``, by name. meta: index = the first of ``name_column``
    / "name" / "run" / "sae" that is a column, restricted to the SAEs found; it needs ``corpus`` and
    ``layer`` (``layer`` is read from the SAE's sae-lens ``hook_name`` metadata when missing).
    """
    from ..cache import ActivationCache  # noqa: PLC0415  (torch, as in main)
    from ..corpora import safe_name  # noqa: PLC0415
    from ..saes import load_sae  # noqa: PLC0415

    saes_dir, activations_dir = Path(saes_dir), Path(activations_dir)
    dirs = sorted(p for p in saes_dir.iterdir() if (p / "treesae.json").exists()) if saes_dir.is_dir() else []
    if not dirs:
        raise FileNotFoundError(f"no SAEs (directories with treesae.json) under {saes_dir}; run the training stage first")
    saes = {p.name: load_sae(p) for p in dirs}
    meta = pd.read_csv(meta_csv)
    col = name_column or next((c for c in NAME_COLUMNS if c in meta.columns), None)
    if col is None:
        raise ValueError(f"{meta_csv} has none of the columns {NAME_COLUMNS} naming the SAEs; pass name_column=")
    meta = meta.set_index(col)
    missing = [n for n in saes if n not in meta.index]
    if missing:
        raise KeyError(f"{meta_csv} has no row for SAEs {missing}")
    meta = meta.loc[list(saes)]
    if "layer" not in meta.columns or meta["layer"].isna().any():
        layers = {n: _layer_from_cfg(saes_dir / n) for n in saes}
        meta["layer"] = meta["layer"].fillna(pd.Series(layers)) if "layer" in meta.columns else pd.Series(layers)
    if "corpus" not in meta.columns:
        raise ValueError(f"{meta_csv} needs a 'corpus' column: the activation cache each SAE was trained on")
    caches = {c: ActivationCache.open(activations_dir / safe_name(c)) for c in sorted(meta["corpus"].astype(str).unique())}
    return saes, meta, caches


def _layer_from_cfg(path: Path):
    cfg = json.loads((path / "cfg.json").read_text()) if (path / "cfg.json").exists() else {}
    hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or ""
    m = re.search(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m treesae.browser",
                                 description="Write the static feature browser of trained SAEs (opens from file://). "
                                             "Relative paths resolve from the project root ($TREESAE_ROOT or the repository).")
    ap.add_argument("--saes", default="data/saes", help="directory of save_sae outputs (default: %(default)s)")
    ap.add_argument("--meta", default="data/train/metrics.csv", help="metrics table, one row per SAE (default: %(default)s)")
    ap.add_argument("--activations", default="data/activations", help="activation caches, one per corpus (default: %(default)s)")
    ap.add_argument("--out", default="build/browser", help="site directory, replaced atomically (default: %(default)s)")
    ap.add_argument("--model", default=None, help="model name for token strings and logit effects (default: the offline SmolLM2)")
    ap.add_argument("--name-column", default=None, help="column of --meta naming the SAEs (default: name, run or sae)")
    ap.add_argument("--n-top-contexts", type=int, default=12)
    ap.add_argument("--max-contexts", type=int, default=None, help="held-out contexts per SAE (default: all)")
    ap.add_argument("--batch-size", type=int, default=4096, help="tokens per encode batch")
    ap.add_argument("--match-top", type=int, default=3, help="decoder-cosine matches per other SAE (0: none)")
    ap.add_argument("--match-group", default=None, help="meta column: only match SAEs sharing its value (e.g. layer)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    for k in ("saes", "meta", "activations", "out"):  # relative paths resolve from the project root
        setattr(args, k, paths.root() / getattr(args, k))

    import torch  # noqa: PLC0415  (here and below: `--help` answers without loading torch and the model code)

    from ..model import DEFAULT_MODEL, load_model, set_offline  # noqa: PLC0415
    from . import extract, write_site  # noqa: PLC0415
    set_offline()
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    saes, meta, caches = load_inputs(args.saes, args.meta, args.activations, args.name_column)
    model = load_model(args.model or DEFAULT_MODEL)
    data = extract(saes, meta, caches, model, n_top_contexts=args.n_top_contexts, max_contexts=args.max_contexts,
                   batch_size=args.batch_size, match_top=args.match_top, match_group=args.match_group, progress=True)
    out = write_site(data, args.out)
    print(f"wrote {out}/index.html ({len(saes)} SAEs) in {time.perf_counter() - t:.1f} s")
    return out
