"""Stage 04: feature matching across SAEs.

Every SAE of stage 02 enters. ``pairs: all`` (the default) matches every unordered pair of SAEs;
``pairs: planned`` only those the factor and layer analyses need: pairs that differ in exactly one
training factor (``analysis.factors.single_factor_pairs``) plus SAEs of adjacent harvested layers
(``layer_pairs``), a fifth of all pairs in the default sweep. Per pair, latents are matched one-to-one
by the cosine of their decoder rows and, separately, of their encoder columns (Hungarian assignment); a
latent is *shared* when its matched cosine exceeds ``threshold`` (0.7), and the shared ratio is over the
smaller dictionary. Writes to data/analysis/matching/:

* ``pairs.csv``: ``compare_saes`` per pair (n_a, n_b, dec/enc shared ratio and mean cosine, agree =
  fraction of latents whose decoder and encoder partners coincide, within-SAE top-2 control) with the
  differing factor and its two values.
* ``factors.csv``: ``factor_table``: mean (min, max) shared ratio per differing factor.
* ``pair_features.csv``: per latent of one representative pair (the base run and the run that differs
  from it in ``pair_factor``, the corpus by default): decoder and encoder partners and cosines, and each
  latent's within-SAE top-2 cosine.
* ``top2.csv``: per SAE, two controls: each decoder row's cosine to its nearest other row (within-SAE
  redundancy) and to its own random init (how far training moved it; every run has its own init).
* ``layer_pairs.csv``: matching along layers (x = the lower layer).
* ``embedding_umap.csv`` / ``embedding_tsne.csv``: 2-D maps of unit decoder rows of a few SAEs
  (``decoder_embedding``, a seeded subsample of each), with their factors.
* ``metrics.json``: the headline numbers (keys in ``summarize``).

Resume: each pair's ``compare_saes`` row is stored as soon as it is matched, in data/.partial/matching/
(``PairCache``; outside DVC's outputs), keyed by both SAEs' unit decoder and encoder directions, threshold,
method and the matching code (``analysis.matching.pair_key``). A rerun after an interruption matches only the
missing pairs and writes the same bytes. The cache is kept after success (~300 bytes a pair; stale keys are
never read): a rerun for another reason (e.g. embedding settings, ``pairs: planned``) matches no pair again.
``rm -rf data/.partial/matching`` clears it.

Progress on stderr: pairs matched (rate, ETA over the pairs the cache lacks) and SAEs of the controls. The
UMAP / t-SNE fit (``analysis.matching.decoder_embedding``) reports its size before and its time after.
"""
from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import config, paths
from ..analysis import factors as F
from ..analysis import matching as M
from ..analysis.matching import PAIR_COLUMNS
from ..convergence import cosine_to_init
from ..io import JsonStore
from ..model import runtime
from ..runs import FACTORS, base_run, pick, read_metrics
from ..saes import load_saes as read_saes
from . import common

NAME = "matching"


@dataclass
class MatchingParams:
    threshold: float = 0.7             # a matched latent is shared above this cosine
    factors: list[str] = field(default_factory=lambda: list(FACTORS))  # training factors a single-factor pair may differ in
    pairs: str = "all"                 # all: every unordered pair of SAEs; planned: single-factor + adjacent-layer pairs
    method: str = "auto"               # assignment solver (all exact): auto (lapjv / scipy), sparse (certified), scipy
    n_jobs: int = 2                    # pairs matched concurrently (threads); results do not depend on it
    pair_factor: str = "corpus"        # representative pair: the base run and the run differing only in this factor
    embedding_grids: list[str] = field(default_factory=lambda: ["base", "layer", "seed", "corpus"])
    max_per_sae: int = 500             # decoder rows per SAE in the embedding (seeded subsample)
    n_neighbors: int = 15
    min_dist: float = 0.1
    perplexity: float = 30.0
    seed: int = 0

    def __post_init__(self):
        if not any(math.isclose(self.threshold, t) for t in M.THRESHOLDS):  # the pairs table's dec_shared_<t> columns
            raise ValueError(f"matching.threshold must be one of {list(M.THRESHOLDS)} (the cosines at which every pair's "
                             f"sharing is recorded), got {self.threshold}")
        if self.pairs not in ("all", "planned"):
            raise ValueError(f"matching.pairs must be all or planned, got {self.pairs!r}")
        if self.method not in ("auto", "sparse", "scipy"):
            raise ValueError(f"matching.method must be auto, sparse or scipy, got {self.method!r}")
        if self.max_per_sae < 2 or self.n_jobs < 1:
            raise ValueError("matching.max_per_sae must be >= 2 and matching.n_jobs >= 1")


def meta_table(metrics: pd.DataFrame, factors) -> pd.DataFrame:
    """One row per SAE (index: run name) with the factor columns the matching compares."""
    missing = [f for f in factors if f not in metrics.columns]
    if missing:
        raise ValueError(f"metrics.csv lacks factor column(s) {missing}; matching.factors: {list(factors)}")
    return metrics[list(factors)].copy()


def adjacent_layer_pairs(meta: pd.DataFrame, factors) -> list[tuple]:
    """SAEs at consecutive harvested layers that agree on every other factor, (lower, upper); none when the
    profile's matching.factors leave out layer."""
    return F.layer_pairs(meta, tuple(factors)) if "layer" in factors else []


def plan_pairs(meta: pd.DataFrame, factors, which: str = "planned") -> list[tuple]:
    """single_factor_pairs + layer_pairs + pairs differing in seed and one other factor (what ``effects``
    needs), without duplicates (unordered), in that order; ``which="all"`` appends every other unordered pair
    of meta's index (in index order)."""
    seen, out = set(), []
    rest = list(itertools.combinations(meta.index, 2)) if which == "all" else []
    no_seed = tuple(f for f in factors if f != "seed")
    seed_and_one = [(a, b) for a, b in itertools.combinations(meta.index, 2)
                    if meta.at[a, "seed"] != meta.at[b, "seed"] and F.differing_factor(meta, a, b, no_seed) is not None]
    for a, b in F.single_factor_pairs(meta, tuple(factors)) + adjacent_layer_pairs(meta, factors) + seed_and_one + rest:
        key = frozenset((a, b))
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def representative_pair(metrics: pd.DataFrame, meta: pd.DataFrame, factor: str, factors) -> tuple:
    """(base run, the first run that differs from it only in ``factor``)."""
    base = base_run(metrics).name
    for other in meta.index:
        if other != base and F.differing_factor(meta, base, other, tuple(factors)) == factor:
            return base, other
    raise ValueError(f"no SAE differs from the base run {base} in {factor!r} alone; set matching.pair_factor to a "
                     f"factor with a grid (e.g. seed, corpus, k).")


class PairCache(JsonStore):
    """``compare_saes`` rows on disk (``io.JsonStore``): an entry with other fields or a non-number reads as missing."""

    def __init__(self, root):
        fields = set(PAIR_COLUMNS[2:])
        super().__init__(root, check=lambda row: set(row) == fields and all(type(v) in (int, float) for v in row.values()))


class CountedCache:
    """A pair cache that drives a progress bar: each pair it lacks adds to the total, each pair stored since
    advances it (``compare_saes`` looks every pair up before matching any, and stores each as it finishes)."""

    def __init__(self, cache, bar):
        self.cache, self.bar, self.lock = cache, bar, threading.Lock()

    def get(self, key):
        row = self.cache.get(key)
        if row is None:
            self.bar.total += 1
        return row

    def __setitem__(self, key, row):
        self.cache[key] = row
        with self.lock:
            self.bar.update()


# --- stage 04, one call per notebook cell ---

def setup(model: dict, matching: dict) -> dict:
    """Validate the section, pin threads, choose the pairs to match."""
    mp, mt = runtime(model), config.parse(MatchingParams, matching, "matching")
    metrics = read_metrics()
    meta = meta_table(metrics, mt.factors)
    pairs = plan_pairs(meta, mt.factors, mt.pairs)
    if not pairs:
        raise ValueError("no pair of SAEs to match: the sweep needs two SAEs (with pairs: planned, two that differ "
                         "in a single factor).")
    return dict(model=mp, matching=mt, metrics=metrics, meta=meta, pairs=pairs,
                pair=representative_pair(metrics, meta, mt.pair_factor, mt.factors), out=common.out_dir(NAME))


def plan(setup: dict) -> pd.DataFrame:
    """The pairs to match and the factor each differs in."""
    f = tuple(setup["matching"].factors)
    return pd.DataFrame([dict(a=a, b=b, factor=F.differing_factor(setup["meta"], a, b, f)) for a, b in setup["pairs"]])


def load_saes(setup: dict) -> dict:
    """{run name: SAE} for every SAE in a pair or in the embedding."""
    names = list(dict.fromkeys([n for p in setup["pairs"] for n in p] + list(embedding_runs(setup).index)))
    return read_saes(names)


def _bar(desc: str, progress: bool, **kw):
    return tqdm(desc=f"matching {desc}", mininterval=10, disable=not progress, **kw)


def compare(setup: dict, saes: dict, progress: bool = True) -> pd.DataFrame:
    """``compare_saes`` over the pairs of ``plan_pairs``, annotated (``annotate_pairs``); resumes from
    ``PairCache`` (module docstring)."""
    mt = setup["matching"]
    with _bar("pairs", progress, total=0, unit="pair") as bar:
        t = M.compare_saes(saes, setup["pairs"], threshold=mt.threshold, method=mt.method, n_jobs=mt.n_jobs,
                           cache=CountedCache(PairCache(paths.data(".partial", NAME)), bar))
    t = annotate_pairs(t, setup["meta"], setup["metrics"], mt.factors)
    common.write_table(t, setup["out"] / "pairs.csv")
    return t


def annotate_pairs(t: pd.DataFrame, meta: pd.DataFrame, metrics: pd.DataFrame, factors) -> pd.DataFrame:
    """Insert after a, b: the one factor the pair differs in (None for several or none), its two values,
    and both architectures."""
    t = t.copy()
    f = [F.differing_factor(meta, a, b, tuple(factors)) for a, b in zip(t.a, t.b)]
    t.insert(2, "factor", f)
    for i, side in ((3, "a"), (4, "b")):
        t.insert(i, f"value_{side}", [meta.at[x, g] if g in meta.columns else None for x, g in zip(t[side], f)])
    t.insert(5, "architecture_a", [metrics.at[a, "architecture"] for a in t.a])
    t.insert(6, "architecture_b", [metrics.at[b, "architecture"] for b in t.b])
    return t


def factors(setup: dict, pairs: pd.DataFrame) -> pd.DataFrame:
    """Shared ratio by the one factor that differs (ascending: the factor that changes features most first)."""
    t = F.factor_table(pairs, setup["meta"], tuple(setup["matching"].factors))
    common.write_table(t, setup["out"] / "factors.csv")
    return t


def effects(setup: dict, pairs: pd.DataFrame) -> pd.DataFrame:
    """Each factor's effect on the features from pairs with different seeds (``factor_effects``): sharing at the
    same level minus sharing across levels, with a 95% SAE-bootstrap interval, at every threshold of
    ``THRESHOLDS``. Writes effects.csv and the headline threshold's bootstrap replicates (effects_boot.csv,
    for contrasts between factors)."""
    mt, rows = setup["matching"], []
    for t in M.THRESHOLDS:
        e, boot = F.factor_effects(pairs, setup["meta"], tuple(mt.factors), column=f"dec_shared_{round(t * 100)}",
                                   seed=mt.seed)
        rows.append(e.assign(threshold=t))
        if math.isclose(t, mt.threshold):
            common.write_table(boot, setup["out"] / "effects_boot.csv")
    out = pd.concat(rows, ignore_index=True)[["threshold", *rows[0].columns]]
    common.write_table(out, setup["out"] / "effects.csv")
    return out


def pair_features(setup: dict, saes: dict) -> pd.DataFrame:
    """Per latent of the representative pair: decoder vs encoder matching (``match_pair``) and the
    within-SAE top-2 cosine of the latent (in its own SAE) and of its decoder partner."""
    a, b = setup["pair"]
    t = M.match_pair(saes[a], saes[b], setup["matching"].method)
    src, dst = (b, a) if bool(t.swapped.iloc[0]) else (a, b)
    t.insert(0, "a", src)
    t.insert(1, "b", dst)
    t["top2_i"] = M.within_sae_top2(M.directions(saes[src], "decoder"))[t.i]
    t["top2_j_dec"] = M.within_sae_top2(M.directions(saes[dst], "decoder"))[t.j_dec]
    common.write_table(t, setup["out"] / "pair_features.csv")
    return t


def top2(setup: dict, saes: dict, progress: bool = True) -> pd.DataFrame:
    """Controls per SAE. Within-SAE: mean, median, p90 of each decoder row's cosine to its nearest other
    row, and the fraction above the threshold. Init: median cosine of decoder rows to their random init
    and the fraction above the threshold (each run's own init, ``runs.Run.init_seed``)."""
    thr, rows = setup["matching"].threshold, []
    for n in _bar("top2", progress, iterable=list(dict.fromkeys(x for p in setup["pairs"] for x in p)), unit="sae"):
        c, i = M.within_sae_top2(M.directions(saes[n], "decoder")), cosine_to_init(saes[n])
        rows.append(dict(name=n, architecture=setup["metrics"].at[n, "architecture"], n_latents=len(c),
                         top2_mean=c.mean(), top2_median=np.median(c), top2_p90=np.quantile(c, 0.9),
                         frac_above=(c > thr).mean(), init_median=np.median(i), init_frac_above=(i > thr).mean()))
    t = pd.DataFrame(rows)
    common.write_table(t, setup["out"] / "top2.csv")
    return t


def layers(setup: dict, pairs: pd.DataFrame) -> pd.DataFrame:
    """Matching along layers: the adjacent-layer pairs, x = the lower layer; series = architecture."""
    adj = {frozenset(p) for p in adjacent_layer_pairs(setup["meta"], setup["matching"].factors)}
    m = setup["metrics"]
    t = pairs[[frozenset((a, b)) in adj for a, b in zip(pairs.a, pairs.b)]].copy()
    la, lb = t.a.map(m.layer), t.b.map(m.layer)
    t = t.assign(layer=np.minimum(la, lb), layer_b=np.maximum(la, lb), series=t.architecture_a)
    t = t[["layer", "layer_b", "series", "a", "b", "dec_shared", "enc_shared", "dec_mean_cos", "enc_mean_cos", "agree"]]
    t = t.sort_values(["series", "layer"], kind="stable").reset_index(drop=True)
    common.write_table(t, setup["out"] / "layer_pairs.csv")
    return t


def embedding_runs(setup: dict) -> pd.DataFrame:
    """The SAEs of the decoder map: runs in ``embedding_grids`` with the base run's architecture."""
    m = setup["metrics"]
    return pick(m, setup["matching"].embedding_grids, architecture=base_run(m).architecture)


def embedding(setup: dict, saes: dict, method: str, progress: bool = True) -> pd.DataFrame:
    """``decoder_embedding`` (UMAP or t-SNE, cosine) of the embedding SAEs, with their factors."""
    mt, runs = setup["matching"], embedding_runs(setup)
    if progress:
        print(f"matching {method}: decoder rows of {len(runs)} SAEs, at most {mt.max_per_sae} each"
              + (" (a process's first UMAP compiles numba code, ~1 min)" if method == "umap" else ""), file=sys.stderr)
    t0 = time.perf_counter()
    t = M.decoder_embedding({n: saes[n] for n in runs.index}, method=method, seed=mt.seed, max_per_sae=mt.max_per_sae,
                            n_neighbors=mt.n_neighbors, min_dist=mt.min_dist, perplexity=mt.perplexity)
    if progress:
        print(f"matching {method}: {len(t)} points in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t = t.join(runs[["architecture", "corpus", "layer", "d_sae", "k", "seed"]].rename(columns={"seed": "sae_seed"}),
               on="sae")
    t.insert(0, "method", method)
    common.write_table(t, setup["out"] / f"embedding_{method}.csv")
    return t


def summarize(setup: dict) -> dict:
    """Headline numbers, written to metrics.json (the numbers stage prefixes "matching.").

    Keys (F: a differing factor; La_Lb: adjacent layers; R: a run name):
      threshold, n_saes, n_pairs, all_pairs (bool), factors (factors with pairs, most feature-changing first)
      most_changing_factor, least_changing_factor, corpus_changes_most (bool)
      factor.{F}.{n_pairs,dec_shared,dec_shared_min,dec_shared_max,enc_shared,dec_mean_cos}
      effect.{F}.{effect,lo,hi,n_within,n_between,within,between}   ``effects`` at the threshold (effect_t{50..90}.
                                        at the others); effect.factors: most feature-changing first
      seed_shared_ratio[.lo,.hi,.n_pairs]   base configuration, pairs differing only in seed: mean decoder shared
                                        ratio at the threshold, 95% SAE-bootstrap interval
      seed.{same,diff}.{n_pairs,dec_shared}   mean decoder shared ratio over matched pairs whose seed index is
                                        equal / differs (their inits differ either way)
      pair.{a,b,factor}                 the representative pair
      pair.{dec_shared,enc_shared,dec_mean_cos,enc_mean_cos,agree}
      pair.frac_shared_dec_only / frac_shared_enc_only / frac_shared_both
      pair.corr_dec_enc                 Pearson r over latents of decoder- vs encoder-matched cosine
      pair.mean_cos_dec_at_enc          mean decoder cosine of the encoder-matched partner
      top2.frac_above_mean, top2.median_mean      within-SAE control, mean over SAEs
      top2.base.{frac_above,median}               the base run's
      init.frac_above_mean, init.median_mean      decoder rows still near their random init, mean over SAEs
      init.base.{frac_above,median}               the base run's
      layers.L{a}_L{b}.{dec_shared,enc_shared,dec_mean_cos}
      embedding.n_saes, embedding.points_per_sae
    """
    out, mt, base = setup["out"], setup["matching"], base_run(setup["metrics"]).name
    pairs, fac, feats = (common.read_table(out / n) for n in ("pairs.csv", "factors.csv", "pair_features.csv"))
    t2, lay, emb = (common.read_table(out / n) for n in ("top2.csv", "layer_pairs.csv", "embedding_umap.csv"))
    thr = mt.threshold
    m = dict(threshold=thr, n_saes=len(set(pairs.a) | set(pairs.b)), n_pairs=len(pairs), all_pairs=mt.pairs == "all",
             factors=list(fac.factor),
             most_changing_factor=fac.factor.iloc[0] if len(fac) else None,
             least_changing_factor=fac.factor.iloc[-1] if len(fac) else None,
             corpus_changes_most=bool(len(fac) and fac.factor.iloc[0] == "corpus"))
    seed = setup["metrics"].seed
    same = pairs.a.map(seed).to_numpy() == pairs.b.map(seed).to_numpy()
    for key, sel in (("same", same), ("diff", ~same)):
        m[f"seed.{key}.n_pairs"] = int(sel.sum())
        if sel.any():
            m[f"seed.{key}.dec_shared"] = pairs.dec_shared[sel].mean()
    for _, r in fac.iterrows():
        for c in ("n_pairs", "dec_shared", "dec_shared_min", "dec_shared_max", "enc_shared", "dec_mean_cos"):
            m[f"factor.{r.factor}.{c}"] = r[c]
    eff = common.read_table(out / "effects.csv")
    for _, r in eff.iterrows():
        tag = "effect" if math.isclose(r.threshold, thr) else f"effect_t{round(r.threshold * 100)}"
        for c in ("effect", "lo", "hi", "n_within", "n_between", "within", "between"):
            m[f"{tag}.{r.factor}.{c}"] = r[c]
    head = eff[np.isclose(eff.threshold, thr)].sort_values("effect", ascending=False)
    m["effect.factors"] = list(head.factor)  # the factor that changes the features most first
    cs = F.cross_seed_sharing(pairs, setup["meta"], base, tuple(mt.factors), seed=mt.seed)
    m.update({"seed_shared_ratio": cs["mean"], "seed_shared_ratio.lo": cs["lo"], "seed_shared_ratio.hi": cs["hi"],
              "seed_shared_ratio.n_pairs": cs["n_pairs"]})
    a, b = setup["pair"]
    row = pairs[((pairs.a == a) & (pairs.b == b)) | ((pairs.a == b) & (pairs.b == a))]
    m.update({"pair.a": a, "pair.b": b, "pair.factor": mt.pair_factor})
    if len(row):
        for c in ("dec_shared", "enc_shared", "dec_mean_cos", "enc_mean_cos", "agree"):
            m[f"pair.{c}"] = row[c].iloc[0]
    d, e = feats.cos_dec > thr, feats.cos_enc > thr
    m.update({"pair.frac_shared_dec_only": (d & ~e).mean(), "pair.frac_shared_enc_only": (~d & e).mean(),
              "pair.frac_shared_both": (d & e).mean(), "pair.corr_dec_enc": feats.cos_dec.corr(feats.cos_enc),
              "pair.mean_cos_dec_at_enc": feats.cos_dec_at_enc.mean()})
    m["top2.frac_above_mean"], m["top2.median_mean"] = t2.frac_above.mean(), t2.top2_median.mean()
    m["init.frac_above_mean"], m["init.median_mean"] = t2.init_frac_above.mean(), t2.init_median.mean()
    tb = t2.set_index("name")
    if base in tb.index:
        m["top2.base.frac_above"], m["top2.base.median"] = tb.at[base, "frac_above"], tb.at[base, "top2_median"]
        m["init.base.frac_above"], m["init.base.median"] = tb.at[base, "init_frac_above"], tb.at[base, "init_median"]
    for _, r in lay.iterrows():
        for c in ("dec_shared", "enc_shared", "dec_mean_cos"):
            m[f"layers.L{int(r.layer)}_L{int(r.layer_b)}.{c}"] = r[c]
    m["embedding.n_saes"], m["embedding.points_per_sae"] = emb.sae.nunique(), int(emb.groupby("sae").size().max())
    return common.write_metrics(out / "metrics.json", m)
