"""Stage 06: every paper figure, drawn from the tables of stages 02-05 and 08.

The only writer of ``figures/``. It reads tables (CSV / JSON) only and imports no torch, no SAE code and
no analysis (``tests/test_dvc_deps.py`` checks the import closure), so changing a plot's style reruns this
stage and the paper alone; the numbers the paper quotes are the numbers stage's (``stages.numbers``).

``SPECS`` declares each figure once: the ``treesae.figures`` function that draws it, the tables it reads
(``common.TABLES``' names, plus ``metrics`` and ``curves``), how its arguments are selected from them, and
whether the paper shows it. The paper template's figure list is ``paper_slugs()`` (tested).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import pandas as pd
from IPython.display import Image

from .. import config, paths
from .. import figures as F
from ..registry import names
from ..runs import base_run, frontier_seeds, read_metrics
from . import common


@dataclass
class FiguresParams:
    fps: int = 2              # frames per second of the layer-by-layer decoder map (GIF)
    n_bins: int = 10          # lm_vs_sae_loss: per-token nMSE bins (deciles)

    def __post_init__(self):
        if self.fps < 1 or self.n_bins < 2:
            raise ValueError("figures: need fps >= 1 and n_bins >= 2")


@dataclass(frozen=True)
class Spec:
    draw: Callable                 # treesae.figures function: (*args, path, **kwargs) -> path
    tables: tuple[str, ...]        # what it reads
    args: Callable[[dict], tuple]  # the loaded tables -> its positional arguments
    kwargs: Callable[[dict], dict] = lambda t: {}   # the loaded tables -> keyword arguments
    params: tuple[str, ...] = ()   # FiguresParams fields passed as keyword arguments too
    suffix: str = ".png"
    paper: bool = True             # shown in the paper (paper/template.md calls figure(slug, ...))


def _frontier(t):
    return (frontier_seeds(t["metrics"]).reset_index(),)


def _l0_at_base_k(t):
    l0 = t["hierarchy.l0_per_token"]
    return (l0[l0.k == int(base_run(t["metrics"]).k)][["architecture", "l0", "count"]],)


def _lm_vs_sae(condition: Callable[[dict], str]):
    def args(t):
        tok = t["position.lm_vs_sae_tokens"]
        return (tok[tok.condition == condition(t)],)
    return args


SPECS: dict[str, Spec] = {
    "frontier_nmse_l0": Spec(F.frontier_nmse_l0, ("metrics",), _frontier),
    "frontier_ce_l0": Spec(F.frontier_ce_l0, ("metrics",), _frontier),
    "dead_latents_training": Spec(F.dead_latents_training, ("curves",),
                                  lambda t: (t["curves"][["variant", "tokens", "dead_fraction", "architecture"]],)),
    "l0_distribution": Spec(F.l0_distribution, ("hierarchy.l0_per_token", "metrics"), _l0_at_base_k),
    "treesae_levels": Spec(F.treesae_levels, ("hierarchy.levels",), lambda t: (
        t["hierarchy.levels"][t["hierarchy.levels"].variant.isin(names(multi_level=True))],)),
    "hierarchy_correlation": Spec(F.hierarchy_correlation, ("hierarchy.coactivation", "hierarchy.decoder_cosine"),
                                  lambda t: (t["hierarchy.coactivation"], t["hierarchy.decoder_cosine"])),
    "position_activation_layers": Spec(F.position_activation_layers, ("position.profile",),
                                       lambda t: (t["position.profile"],)),
    "position_deciles": Spec(F.position_deciles, ("position.deciles",), lambda t: (t["position.deciles"],)),
    "position_intervention": Spec(F.position_intervention, ("position.intervention",),
                                  lambda t: (t["position.intervention"],)),
    "lm_vs_sae_loss": Spec(F.lm_vs_sae_loss, ("position.lm_vs_sae_tokens",), _lm_vs_sae(lambda t: "clean"),
                           params=("n_bins",)),
    "lm_vs_sae_loss_no_position": Spec(F.lm_vs_sae_loss, ("position.lm_vs_sae_tokens", "position.metrics"),
                                       _lm_vs_sae(lambda t: t["position.metrics"]["remove_mode"]), params=("n_bins",)),
    "matching_enc_vs_dec": Spec(F.matching_enc_vs_dec, ("matching.pair_features", "matching.metrics"),
                                lambda t: (t["matching.pair_features"],),
                                kwargs=lambda t: {"threshold": t["matching.metrics"]["threshold"]}),
    "matching_by_factor": Spec(F.matching_by_factor, ("matching.factors",), lambda t: (t["matching.factors"],)),
    "matching_layers": Spec(F.matching_layers, ("matching.layer_pairs",), lambda t: (t["matching.layer_pairs"],)),
    "matching_all_pairs": Spec(F.matching_all_pairs, ("matching.pairs",), lambda t: (t["matching.pairs"],)),
    "decoder_umap": Spec(F.decoder_umap, ("matching.embedding_umap",), lambda t: (t["matching.embedding_umap"],)),
    "decoder_tsne": Spec(F.decoder_umap, ("matching.embedding_tsne",), lambda t: (t["matching.embedding_tsne"],),
                         kwargs=lambda t: {"title": "Decoder directions (t-SNE, cosine)"}, paper=False),
    "decoder_umap_layers": Spec(F.decoder_umap_animation, ("matching.embedding_umap",),
                                lambda t: (t["matching.embedding_umap"],), kwargs=lambda t: {"frame": "layer"}, params=("fps",),
                                suffix=".gif", paper=False),
    "synthetic_benchmark": Spec(F.synthetic_benchmark, ("synthetic.scores",), lambda t: (t["synthetic.scores"],)),
}


def slugs() -> list[str]:
    """Every file stage 06 draws, in ``SPECS``' order."""
    return list(SPECS)


def paper_slugs() -> list[str]:
    return [s for s, sp in SPECS.items() if sp.paper]


# --- stage 06, one call per notebook cell ---

def setup(figures: dict) -> dict:
    fp = config.parse(FiguresParams, figures, "figures")
    out = paths.root() / "figures"
    out.mkdir(parents=True, exist_ok=True)
    keep = {f"{s}{sp.suffix}" for s, sp in SPECS.items()}
    for f in out.iterdir():  # figures/ belongs to this stage: drop what an earlier version drew
        if f.is_file() and f.suffix in (".png", ".gif") and f.name not in keep:
            f.unlink()
    return dict(figures=fp, out=out)


def load_tables(setup: dict | None = None) -> dict:
    """Every table a spec reads: ``metrics`` (stage 02's runs table), ``curves`` (the recipe runs' training
    curves, with their ``variant``) and the ``common.TABLES`` the specs name."""
    m = read_metrics()
    wanted = dict.fromkeys(n for sp in SPECS.values() for n in sp.tables if n in common.TABLES)
    return {"metrics": m, "curves": common.recipe_curves(m), **common.load_tables(wanted)}


def inputs(setup: dict, tables: dict) -> pd.DataFrame:
    """What was read: rows per table."""
    t = pd.DataFrame([dict(table=k, rows=len(v) if isinstance(v, pd.DataFrame) else None,
                           keys=len(v) if isinstance(v, dict) else None) for k, v in tables.items()])
    return t.astype({"rows": "Int64", "keys": "Int64"})


def has_data(tables: dict, slug: str) -> bool:
    """Whether this profile trained what a figure shows (e.g. no TreeSAE variant: no ``treesae_levels``)."""
    return all(len(a) for a in SPECS[slug].args(tables))


def draw(setup: dict, tables: dict, slug: str):
    """Draw one figure to figures/<slug>.png (.gif for animations); returns it for display, or None (and
    draws nothing) when the profile has no data for it."""
    if not has_data(tables, slug):
        return None
    sp = SPECS[slug]
    kw = sp.kwargs(tables) | {p: getattr(setup["figures"], p) for p in sp.params}
    return Image(filename=str(sp.draw(*sp.args(tables), setup["out"] / f"{slug}{sp.suffix}", **kw)))


def listing(setup: dict, tables: dict) -> pd.DataFrame:
    """Every figure with data in this profile: file, size and sha256 (a missing one is an error)."""
    rows = []
    for slug in slugs():
        f = setup["out"] / f"{slug}{SPECS[slug].suffix}"
        if not has_data(tables, slug):
            f.unlink(missing_ok=True)
            continue
        if not f.exists():
            raise FileNotFoundError(f"figure {slug} was not drawn")
        rows.append(dict(file=f.name, bytes=f.stat().st_size, sha256=hashlib.sha256(f.read_bytes()).hexdigest()[:16]))
    return pd.DataFrame(rows)
