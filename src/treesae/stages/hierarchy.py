"""Stage 05: hierarchy statistics of the multi-level SAEs, with TopK as the flat reference.

The SAEs: the frontier runs at the base run's k (same corpus, layer, dictionary size and seed) of
``architectures`` (TreeSAE variants, Matryoshka, TopK). Codes are computed on held-out tokens of the
base run's corpus and layer (position 0 excluded, as in training). A latent is *active* on a token
when its code is non-zero. Parents: the tree's own ``parent_of`` ("given"), and for every SAE the
parent inferred from co-activation (``analysis.hierarchy.infer_parents``: for each latent the coarser
latent -- for a flat SAE, any at least as frequent latent -- with the largest coverage lift
s(c, p) = (P(p | c) - P(p)) / (1 - P(p))), so that all SAEs compare like for like ("inferred").

Writes to data/analysis/hierarchy/:

* ``coactivation.csv``: per parent-child pair, P(parent | child), P(child | parent), lift and the same
  with a shuffled parent (``coactivation``), per SAE and parent mode (``variant`` labels the figure).
* ``decoder_cosine.csv``: decoder cosine of child and parent, and with a shuffled parent.
* ``level_correlation.csv``: |Pearson r| between consecutive levels' codes vs circularly shifted codes.
* ``scores.csv``: ``hierarchy_score`` (mean lift above its baseline) per SAE and mode.
* ``levels.csv``: per level: width, dead latents (never active on the N held-out tokens; window N =
  ``n_tokens``), L0 of the level and nMSE of the cumulative reconstruction from levels 0..l (where
  prefixes are trained to reconstruct: tree, residual, Matryoshka).
* ``l0_per_token.csv``: histogram of per-token L0 (active latents per token) of every frontier
  architecture and k (the TopK caveat: a fixed k per token against BatchTopK and ReLU-L1).
* ``metrics.json``: the headline numbers (keys in ``summarize``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import config, paths
from ..analysis import hierarchy as H
from ..cache import ActivationCache
from ..corpora import safe_name
from ..metrics import reconstruction_metrics
from ..model import runtime
from ..runs import base_run, frontier, hierarchy_runs, probe_runs, read_metrics
from ..saes import load_saes as read_saes, names
from ..tensors import dense
from . import common

NAME = "hierarchy"


@dataclass
class HierarchyParams:
    architectures: list[str] = field(default_factory=lambda: ["topk"] + names(multi_level=True))  # topk: flat reference
    max_tokens: int = 32768        # held-out tokens (position 0 excluded)
    min_count: int = 5             # latents firing fewer times are left out of the parent statistics
    batch_size: int = 4096
    seed: int = 0                  # shuffled baselines
    probe_children: int = 5        # Cao et al.'s probe test: children per parent
    probe_min_count: int = 50      # children firing fewer times get no probe
    probe_top: int = 5             # a pair is hierarchical when both decoder rows are among this many nearest the probe
    probe_implication: float = 0.5  # ... and the child's firing implies the parent's: P(parent | child) >= this

    def __post_init__(self):
        if not self.architectures:
            raise ValueError("hierarchy.architectures is empty")
        if self.max_tokens < 2 or self.min_count < 1 or self.batch_size < 1:
            raise ValueError("hierarchy: need max_tokens >= 2, min_count >= 1, batch_size >= 1")
        if self.probe_children < 1 or self.probe_min_count < 2 or self.probe_top < 2 or not 0 <= self.probe_implication <= 1:
            raise ValueError("hierarchy: need probe_children >= 1, probe_min_count >= 2, probe_top >= 2, "
                             "0 <= probe_implication <= 1")


def variant_label(architecture: str, mode: str) -> str:
    """Figure label: the architecture (inferred parents) or e.g. "tree (given)"."""
    return architecture if mode == "inferred" else f"{architecture} ({mode})"


def _bar(desc: str, progress: bool, unit: str = "sae", **kw):
    """Progress on stderr (done, rate, ETA) over the SAEs of ``iterable``, or ``total`` tokens (unit "tok")."""
    return tqdm(desc=f"hierarchy {desc}", unit=unit, unit_scale=unit == "tok", mininterval=10, disable=not progress,
                **kw)


# --- stage 05, one call per notebook cell ---

def setup(model: dict, hierarchy: dict, train: dict | None = None) -> dict:
    """Validate the sections, pin threads, pick the SAEs. ``train``: its held-out draw (``eval.seed``) and
    ``sink_ratio``, so the codes are computed on tokens the SAEs' metrics also use."""
    mp, hp = runtime(model), config.parse(HierarchyParams, hierarchy, "hierarchy")
    metrics = read_metrics()
    train = train or {}
    return dict(model=mp, hierarchy=hp, metrics=metrics, base=base_run(metrics),
                sink_ratio=train.get("sink_ratio"), heldout_seed=(train.get("eval") or {}).get("seed"),
                runs=hierarchy_runs(metrics, hp.architectures), probe_runs=probe_runs(metrics, hp.architectures),
                frontier=frontier(metrics), out=common.out_dir(NAME))


def runs(setup: dict) -> pd.DataFrame:
    cols = ["architecture", "corpus", "layer", "d_sae", "k", "seed", "nmse", "l0", "dead_fraction"]
    return setup["runs"][[c for c in cols if c in setup["runs"]]]


def activations(setup: dict):
    """Held-out activations [N, d_model] of the base corpus and layer: randomly drawn contexts (train.eval.seed),
    position 0 and attention sinks (train.sink_ratio) excluded, as in stage 02's metrics."""
    b = setup["base"]
    cache = ActivationCache.open(paths.data("activations", safe_name(b.corpus)), expect={"model": setup["model"].name})
    return cache.activations(int(b.layer), "heldout", drop_first=True, max_tokens=setup["hierarchy"].max_tokens,
                             seed=setup["heldout_seed"], sink_ratio=setup["sink_ratio"])


def load_saes(setup: dict) -> dict:
    """{architecture: SAE} of the hierarchy runs."""
    saes = read_saes(setup["runs"].index)
    return {r.architecture: saes[n] for n, r in setup["runs"].iterrows()}


def encode(setup: dict, saes: dict, X, progress: bool = True) -> dict:
    """{architecture: sparse codes [N, d_sae]}."""
    with _bar("encode", progress, "tok", total=len(saes) * len(X)) as bar:
        return {a: H.codes(sae, X, setup["hierarchy"].batch_size, progress=bar) for a, sae in saes.items()}


def _has_tree(sae) -> bool:
    """The SAE has parents of its own (a learned tree that has not adopted any yet has none)."""
    return sae.parent_of is not None and bool((sae.parent_of >= 0).any())


def parents(setup: dict, saes: dict, Z: dict, progress: bool = True) -> dict:
    """{(architecture, mode): DataFrame(child, parent, level)}: "given" for SAEs with parent_of, and
    "inferred" (``infer_parents``) for every SAE."""
    out = {}
    for a, sae in _bar("parents", progress, iterable=saes.items()):
        if _has_tree(sae):
            p = sae.parent_of.cpu().numpy()
            lvl = np.full(len(p), -1)
            for i, s in enumerate(sae.levels):
                lvl[s] = i
            ch = np.nonzero(p >= 0)[0]
            out[(a, "given")] = pd.DataFrame({"child": ch, "parent": p[ch], "level": lvl[ch]})
        out[(a, "inferred")] = H.infer_parents(Z[a], sae.levels, setup["hierarchy"].min_count)
    return out


def _parent_array(pairs: pd.DataFrame, d_sae: int) -> np.ndarray:
    arr = np.full(d_sae, -1, dtype=np.int64)
    arr[pairs.child.to_numpy(int)] = pairs.parent.to_numpy(int)
    return arr


def coactivation(setup: dict, saes: dict, Z: dict, parents: dict) -> pd.DataFrame:
    """Per SAE and parent mode, ``coactivation`` of every parent-child pair (children firing >= min_count)."""
    hp, parts = setup["hierarchy"], []
    for (a, mode), pairs in parents.items():
        sae = saes[a]
        t = H.coactivation(Z[a], _parent_array(pairs, sae.d_sae), sae.levels, hp.seed)
        parts.append(t[t.n_child >= hp.min_count].assign(architecture=a, mode=mode, variant=variant_label(a, mode)))
    t = pd.concat(parts, ignore_index=True)
    t = t[["variant", "architecture", "mode"] + [c for c in t.columns if c not in ("variant", "architecture", "mode")]]
    common.write_table(t, setup["out"] / "coactivation.csv")
    return t


def coactivation_summary(coactivation: pd.DataFrame) -> pd.DataFrame:
    """Per variant: pairs, mean P(parent | child) and lift, real vs shuffled parents."""
    cols = ["p_parent_given_child", "p_parent_given_child_shuffled", "lift", "lift_shuffled"]
    g = coactivation.groupby("variant", sort=False)
    return g[cols].mean().assign(pairs=g.size())[["pairs", *cols]]


def decoder_cosine(setup: dict, saes: dict, parents: dict) -> pd.DataFrame:
    """Per SAE and parent mode, ``cross_level_decoder_cosine`` of the parent-child pairs."""
    parts = []
    for (a, mode), pairs in parents.items():
        t = H.cross_level_decoder_cosine(saes[a].W_dec, saes[a].levels, pairs, setup["hierarchy"].seed)
        parts.append(t.assign(architecture=a, mode=mode, variant=variant_label(a, mode)))
    t = pd.concat(parts, ignore_index=True)
    t = t[["variant", "architecture", "mode"] + [c for c in t.columns if c not in ("variant", "architecture", "mode")]]
    common.write_table(t, setup["out"] / "decoder_cosine.csv")
    return t


def level_correlation(setup: dict, saes: dict, Z: dict, progress: bool = True) -> pd.DataFrame:
    """Per multi-level SAE, ``level_correlation`` of consecutive levels."""
    hp = setup["hierarchy"]
    multi = {a: sae for a, sae in saes.items() if len(sae.levels) > 1}
    parts = [H.level_correlation(Z[a], sae.levels, hp.seed, hp.min_count).assign(architecture=a)
             for a, sae in _bar("level correlation", progress, iterable=multi.items())]
    cols = ["architecture", "level", "n_latents", "best_abs_r", "mean_abs_r", "best_abs_r_shuffled", "mean_abs_r_shuffled"]
    t = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
    common.write_table(t, setup["out"] / "level_correlation.csv")
    return t


def scores(setup: dict, saes: dict, Z: dict, progress: bool = True) -> pd.DataFrame:
    """``hierarchy_score`` per SAE: inferred parents for all, and given parents where the SAE has them."""
    hp, rows = setup["hierarchy"], []
    for a, sae in _bar("scores", progress, iterable=saes.items()):
        modes = [None] + ([sae.parent_of] if _has_tree(sae) else [])
        for p in modes:
            s = H.hierarchy_score(Z[a], sae.levels, p, hp.seed, hp.min_count)
            rows.append(dict(architecture=a, variant=variant_label(a, s["mode"]), **s))
    t = pd.DataFrame(rows)
    common.write_table(t, setup["out"] / "scores.csv")
    return t


def probe(setup: dict, X, progress: bool = True) -> pd.DataFrame:
    """Cao et al.'s probe test (``analysis.hierarchy.probe_pairs``) of every seed of each architecture. Modes:
    "mcs", children by masked cosine similarity on ungated codes (a tree's gate lifted, ``encode_ungated``; the
    other SAEs' own codes): like for like, and a gate cannot pass it (the headline); for trees also
    "mcs_gated" (their codes) and "given" (their own children), which a gate passes by construction
    (docs/LOG.md, "A hierarchy score a gate cannot pass"). Writes probe_pairs.csv (every pair) and probe_scores.csv (per SAE and mode)."""
    hp, pairs, rows = setup["hierarchy"], [], []
    for name, r in _bar("probe test", progress, iterable=list(setup["probe_runs"].iterrows())):
        sae = read_saes([name])[name]
        Z = H.codes(sae, X, hp.batch_size, ungated=True)
        tests = [("mcs", Z, None)]
        if hasattr(sae, "encode_ungated"):
            Zg = H.codes(sae, X, hp.batch_size)
            tests += [("mcs_gated", Zg, None)] + ([("given", Zg, sae.parent_of)] if _has_tree(sae) else [])
        for mode, codes, par in tests:
            t = H.probe_pairs(codes, X, sae.W_dec, par, hp.probe_children, hp.probe_min_count, hp.probe_top,
                              hp.probe_implication, seed=hp.seed)
            pairs.append(t.assign(run=name, architecture=r.architecture, seed=int(r.seed), mode=mode))
            rows.append(dict(run=name, architecture=r.architecture, seed=int(r.seed), mode=mode,
                             **H.probe_score(t, hp.probe_top)))
    common.write_table(pd.concat(pairs, ignore_index=True), setup["out"] / "probe_pairs.csv")
    t = pd.DataFrame(rows)
    common.write_table(t, setup["out"] / "probe_scores.csv")
    return t


def levels(setup: dict, saes: dict, Z: dict, X, progress: bool = True) -> pd.DataFrame:
    """Per SAE and level: width, dead, dead_fraction, l0, n_tokens (``dead_per_level``) and
    nmse_cumulative (``treesae.metrics.reconstruction_metrics`` on the same tokens; NaN where prefixes
    of levels are not trained to reconstruct, e.g. stacked, except at the last level, where it is the
    SAE's own nMSE)."""
    parts = []
    for a, sae in _bar("levels", progress, iterable=saes.items()):
        t = H.dead_per_level(Z[a], sae.levels)
        rm = reconstruction_metrics(sae, X, setup["hierarchy"].batch_size)
        t["nmse_cumulative"] = [rm.get(f"nmse_cumulative_level{i}", np.nan) for i in t.level]
        t.loc[t.index[-1], "nmse_cumulative"] = rm["nmse"]  # all levels: the SAE's reconstruction
        parts.append(t.assign(variant=a, run=setup["runs"].index[setup["runs"].architecture == a][0]))
    t = pd.concat(parts, ignore_index=True)
    t = t[["variant", "run", "level", "width", "dead", "dead_fraction", "l0", "nmse_cumulative", "n_tokens"]]
    common.write_table(t, setup["out"] / "levels.csv")
    return t


def l0_per_token(setup: dict, X, progress: bool = True) -> pd.DataFrame:
    """Histogram of active latents per token for every frontier SAE (architecture, k): rows
    (architecture, k, l0, count)."""
    rows, B = [], setup["hierarchy"].batch_size
    with _bar("l0 per token", progress, "tok", total=len(setup["frontier"]) * len(X)) as bar, torch.no_grad():
        for name, r in setup["frontier"].iterrows():
            sae = read_saes([name])[name]
            counts = []
            for i in range(0, len(X), B):
                z = sae.encode(X[i:i + B])
                z = dense(z)
                counts.append((z != 0).sum(1))
                bar.update(len(z))
            v, c = np.unique(torch.cat(counts).numpy(), return_counts=True)
            rows.append(pd.DataFrame({"architecture": r.architecture, "k": int(r.k), "l0": v, "count": c}))
    t = pd.concat(rows, ignore_index=True).sort_values(["architecture", "k", "l0"], kind="stable").reset_index(drop=True)
    common.write_table(t, setup["out"] / "l0_per_token.csv")
    return t


def summarize(setup: dict) -> dict:
    """Headline numbers, written to metrics.json (the numbers stage prefixes "hierarchy.").

    Keys (A: an architecture of the stage; l: a level; K: a frontier k):
      n_tokens, k, d_sae, layer, corpus, min_count, architectures, probe_{top,children,min_count,implication}
      {A}.run
      {A}.score, {A}.score_raw, {A}.score_baseline, {A}.n_children          inferred parents (like for like)
      {A}.score_given, {A}.score_given_raw, {A}.score_given_baseline        given parents (tree)
      {A}.coact.{p_parent_given_child,p_parent_given_child_shuffled,lift,lift_shuffled}   means over pairs, inferred
      {A}.coact_given.{...}                                                the same, given parents
      {A}.decoder_cos, {A}.decoder_cos_shuffled (inferred); {A}.decoder_cos_given[_shuffled]
      {A}.probe.{score,raw,baseline,n_pairs,child_in_top}[.sd], {A}.probe.n_seeds   probe test, MCS pairs, over seeds
      {A}.probe_{mcs_gated,given}.{...}                                    trees: gated codes, their own pairs
      {A}.level{l}.{width,dead,dead_fraction,l0,nmse_cumulative}
      {A}.level{l}.{best_abs_r,best_abs_r_shuffled,mean_abs_r}            correlation with level l-1
      {A}.dead, {A}.dead_fraction                                         all levels together
      l0_per_token.{A}.k{K}.{mean,std,p10,p50,p90,min,max,frac_zero}      every frontier architecture
    """
    out, hp, b = setup["out"], setup["hierarchy"], setup["base"]
    r = lambda n: common.read_table(out / n)  # noqa: E731
    co, cos, lc, sc, lv, l0, pr = (r(n) for n in ("coactivation.csv", "decoder_cosine.csv", "level_correlation.csv",
                                                    "scores.csv", "levels.csv", "l0_per_token.csv", "probe_scores.csv"))
    m = dict(n_tokens=int(lv.n_tokens.iloc[0]), k=int(b.k), d_sae=int(b.d_sae), layer=int(b.layer), corpus=b.corpus,
             min_count=hp.min_count, architectures=list(setup["runs"].architecture), probe_top=hp.probe_top,
             probe_children=hp.probe_children, probe_min_count=hp.probe_min_count, probe_implication=hp.probe_implication)
    for name, row in setup["runs"].iterrows():
        m[f"{row.architecture}.run"] = name
    for _, s in sc.iterrows():
        tag = "" if s["mode"] == "inferred" else f"_{s['mode']}"
        m[f"{s.architecture}.score{tag}"], m[f"{s.architecture}.score{tag}_raw"] = s.score, s.raw
        m[f"{s.architecture}.score{tag}_baseline"], m[f"{s.architecture}.n_children{tag}"] = s.baseline, s.n_children
    for (a, mode), g in co.groupby(["architecture", "mode"], sort=False):
        tag = "coact" if mode == "inferred" else f"coact_{mode}"
        for c in ("p_parent_given_child", "p_parent_given_child_shuffled", "lift", "lift_shuffled"):
            m[f"{a}.{tag}.{c}"] = g[c].mean()
    for (a, mode), g in cos.groupby(["architecture", "mode"], sort=False):
        tag = "decoder_cos" if mode == "inferred" else f"decoder_cos_{mode}"
        m[f"{a}.{tag}"], m[f"{a}.{tag}_shuffled"] = g.cos.mean(), g.cos_shuffled.mean()
    for (a, mode), g in pr.groupby(["architecture", "mode"], sort=False):
        key = f"{a}.probe" if mode == "mcs" else f"{a}.probe_{mode}"
        m[f"{key}.n_seeds"] = len(g)
        for c in ("score", "raw", "baseline", "n_pairs", "child_in_top"):
            m[f"{key}.{c}"] = g[c].mean()
            if len(g) > 1:
                m[f"{key}.{c}.sd"] = g[c].std(ddof=1)
    for _, row in lv.iterrows():
        for c in ("width", "dead", "dead_fraction", "l0", "nmse_cumulative"):
            m[f"{row.variant}.level{int(row.level)}.{c}"] = row[c]
    for a, g in lv.groupby("variant", sort=False):
        m[f"{a}.dead"], m[f"{a}.dead_fraction"] = int(g.dead.sum()), g.dead.sum() / g.width.sum()
    for _, row in lc.iterrows():
        for c in ("best_abs_r", "best_abs_r_shuffled", "mean_abs_r"):
            m[f"{row.architecture}.level{int(row.level)}.{c}"] = row[c]
    for (a, k), g in l0.groupby(["architecture", "k"], sort=False):
        v, c = g.l0.to_numpy(float), g["count"].to_numpy(float)
        w = c / c.sum()
        mean = (v * w).sum()
        cdf = np.cumsum(w)
        q = lambda p: v[np.searchsorted(cdf, p - 1e-12)]  # noqa: E731
        key = f"l0_per_token.{a}.k{int(k)}"
        m.update({f"{key}.mean": mean, f"{key}.std": np.sqrt((w * (v - mean) ** 2).sum()), f"{key}.p10": q(0.1),
                  f"{key}.p50": q(0.5), f"{key}.p90": q(0.9), f"{key}.min": v.min(), f"{key}.max": v.max(),
                  f"{key}.frac_zero": w[v == 0].sum()})
    return common.write_metrics(out / "metrics.json", m)
