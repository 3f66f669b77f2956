"""Verdicts on the paper's claims (``CLAIMS``: the hypotheses the project set out to test, and the TreeSAE's
hierarchy goal), computed from the paper's numbers with their intervals.

Each claim reduces to estimates whose sign the claim predicts. An estimate with interval [lo, hi]:
  supported                 the interval excludes zero on the predicted side
  contradicted              it excludes zero on the other side
  no detectable difference  it holds zero
  not testable here         no estimate (too few replicated runs, a missing analysis)
A claim of several parts is supported when every part is, contradicted when any part is, and otherwise
"no detectable difference" (or "not testable here" when a part cannot be estimated).

Intervals: between two groups of seeds, the difference of means +- 2 standard errors (Welch; each group
needs >= 2 seeds); for feature matching, the SAE bootstrap of ``analysis.factors.factor_effects``.
"""
import math

import numpy as np
import pandas as pd

from .runs import default_recipe, flag
from .seeds import BOOT_TAG
from .stats import interval, mean_difference

SUPPORTED, CONTRADICTED, NO_DIFFERENCE, NOT_TESTABLE = ("supported", "contradicted", "no detectable difference",
                                                        "not testable here")
CLAIMS = {
    "treesae_ranking": "one TreeSAE variant beats the other two but trails TopK/BatchTopK at matched L0 (held-out FVU)",
    "treesae_ranking_ground_truth": "the same on the synthetic world (stage 08): one TreeSAE variant beats the other "
                                    "two but trails TopK/BatchTopK at matched L0 (unexplained variance)",
    "treesae_hierarchy_lm": "on the language model a TreeSAE variant's hierarchy beats TopK's and Matryoshka's "
                            "(Cao et al.'s probe test with the gate lifted)",
    "corpus_matters_most": "for feature matching the corpus (dataset) matters more than seed, architecture or size",
    "encoder_decoder_disagree": "encoder and decoder matching disagree",
    "position_early_layers": "position features concentrate in early layers",
    "aux_k_tied_init_reduce_dead": "AuxK and tied init reduce dead latents",
}
FLAT_PEERS = ("topk", "batchtopk")  # what claim (a) names: the TreeSAE variants trail these
HIERARCHY_PEERS = ("topk", "matryoshka")  # what a TreeSAE's hierarchy must beat
DISAGREE_MARGIN = 0.1  # enc/dec matching "disagree" when over 10% of the latents shared by either are shared by one only


def verdict(estimate, lo, hi, expect: int = 1) -> str:
    """The verdict on one estimate whose predicted sign is ``expect`` (+1 or -1)."""
    if any(v is None or not math.isfinite(float(v)) for v in (estimate, lo, hi)):
        return NOT_TESTABLE
    if lo > 0 or hi < 0:
        return SUPPORTED if (1 if lo > 0 else -1) == expect else CONTRADICTED
    return NO_DIFFERENCE


def combine(parts: list[str]) -> str:
    if any(p == CONTRADICTED for p in parts):
        return CONTRADICTED
    if any(p == NOT_TESTABLE for p in parts):
        return NOT_TESTABLE
    return SUPPORTED if parts and all(p == SUPPORTED for p in parts) else NO_DIFFERENCE


def _fewer(names: list[str]) -> str:
    """The basis' note on what a verdict had to leave out."""
    return f"; fewer than 2 converged seeds of {', '.join(names)}" if names else ""


def _part(out: dict, key: str, est, lo, hi, expect: int = 1) -> str:
    out.update({f"{key}.estimate": est, f"{key}.lo": lo, f"{key}.hi": hi})
    return verdict(est, lo, hi, expect)


def treesae_ranking(m: pd.DataFrame, k: int, variants, metric: str = "fvu") -> dict:
    """Claim (a) at matched k (L0 = k for every architecture here): the best TreeSAE variant's ``metric``
    beats the next variant's, and TopK's or BatchTopK's (the better) beats the best variant's. ``m``: one row
    per SAE (metrics.csv) of one corpus, layer and size; full-recipe runs, every seed. ``variants``: the
    TreeSAE variants' names (``treesae.saes.names(hierarchical=True)``)."""
    runs = m[(m.k == k) & default_recipe(m)]
    by = {a: runs[runs.architecture == a][metric].to_numpy() for a in set(runs.architecture)}
    trees = sorted((a for a in variants if len(by.get(a, [])) >= 2), key=lambda a: by[a].mean())
    flats = sorted((a for a in FLAT_PEERS if len(by.get(a, [])) >= 2), key=lambda a: by[a].mean())
    out = {"basis": f"held-out {metric} at k = {k}, mean over seeds, difference +- 2 SE"
                    + _fewer([a for a in variants if a not in trees] + ([] if flats else ["TopK or BatchTopK"]))}
    if len(trees) < 2 or not flats:
        return dict(out, verdict=NOT_TESTABLE)
    out.update(best_variant=trees[0], runner_up=trees[1], best_flat=flats[0])
    parts = [_part(out, "beats_other_variants", *mean_difference(by[trees[1]], by[trees[0]])),
             _part(out, "trails_flat", *mean_difference(by[trees[0]], by[flats[0]]))]
    return dict(out, verdict=combine(parts))


def treesae_hierarchy(scores: pd.DataFrame, variants) -> dict:
    """Each TreeSAE variant's hierarchy score minus TopK's and minus Matryoshka's (parts ``<variant>_vs_<peer>``),
    mean over seeds +- 2 SE; the verdict is the best variant's. ``scores``: one row per SAE (architecture,
    score), e.g. stage 05's probe_scores.csv in mode "mcs"."""
    by = {a: g.score.to_numpy(float) for a, g in scores.groupby("architecture")}
    trees = sorted((a for a in variants if len(by.get(a, [])) >= 2), key=lambda a: -by[a].mean())
    out = {"basis": "Cao et al.'s probe test, gate lifted, children by masked cosine similarity; mean over seeds, "
                    "difference +- 2 SE"}
    missing = [a for a in HIERARCHY_PEERS if len(by.get(a, [])) < 2] + ([] if trees else ["a TreeSAE variant"])
    if missing:
        return dict(out, verdict=NOT_TESTABLE, basis=f"{out['basis']}; fewer than 2 seeds of {', '.join(missing)}")
    parts = {a: [_part(out, f"{a}_vs_{p}", *mean_difference(by[a], by[p])) for p in HIERARCHY_PEERS] for a in trees}
    return dict(out, best_variant=trees[0], verdict=combine(parts[trees[0]]))


def corpus_matters_most(effects: pd.DataFrame, boot: pd.DataFrame, threshold: float = 0.7) -> dict:
    """Claim (b) from ``factor_effects``: the corpus's effect is above zero (it changes features more than a
    new seed does) and above the architecture's and the dictionary size's (bootstrap contrasts)."""
    out = {"basis": f"decoder sharing lost by changing the factor beyond a new seed (cosine {threshold}), SAE bootstrap"}
    if "corpus" not in boot:
        return dict(out, verdict=NOT_TESTABLE)
    e = effects.set_index("factor")
    parts = [_part(out, "vs_seed", e.at["corpus", "effect"], e.at["corpus", "lo"], e.at["corpus", "hi"])]
    missing = []
    for f in ("architecture", "d_sae"):
        if f in boot:
            parts.append(_part(out, f"vs_{f}", e.at["corpus", "effect"] - e.at[f, "effect"],
                               *interval(boot["corpus"] - boot[f])))
        else:
            parts.append(NOT_TESTABLE)
            missing.append(f)
    if missing:
        out["basis"] += f"; no pair of SAEs differs in {' or '.join(missing)} alone in this sweep"
    return dict(out, verdict=combine(parts))


def encoder_decoder_disagree(feats: pd.DataFrame, threshold: float, n_boot: int = 2000, seed: int = 0) -> dict:
    """Claim (c) on the representative pair's latents (``match_pair`` columns cos_dec, cos_enc): the share of
    latents shared by exactly one of the two matchings among those shared by either, against DISAGREE_MARGIN;
    interval from a bootstrap over latents."""
    f = feats.dropna(subset=["cos_dec", "cos_enc"])
    d, e = (f.cos_dec > threshold).to_numpy(), (f.cos_enc > threshold).to_numpy()
    either, one = d | e, d ^ e
    out = {"basis": f"latents shared by one matching only / by either (cosine {threshold}), minus {DISAGREE_MARGIN}"}
    if either.sum() < 10:
        return dict(out, verdict=NOT_TESTABLE)
    rng = np.random.default_rng([seed, BOOT_TAG, 1])
    idx = rng.integers(0, len(f), size=(n_boot, len(f)))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = one[idx].sum(1) / either[idx].sum(1)
    est = one.sum() / either.sum()
    lo, hi = interval(boot)
    part = _part(out, "one_only_share", est - DISAGREE_MARGIN, lo - DISAGREE_MARGIN, hi - DISAGREE_MARGIN)
    return dict(out, verdict=part)


def position_early_layers(frac: dict[int, float], n_latents: dict[int, int]) -> dict:
    """Claim (d), its layer half: the earliest layer's fraction of position features minus the latest's,
    +- 2 binomial standard errors over latents. (That they sit at the first token has no interval here.)"""
    out = {"basis": "fraction of position features, earliest minus latest layer, +- 2 SE (binomial over latents)"}
    if len(frac) < 2:
        return dict(out, verdict=NOT_TESTABLE)
    lo_l, hi_l = min(frac), max(frac)
    p, q = frac[lo_l], frac[hi_l]
    se = math.sqrt(p * (1 - p) / n_latents[lo_l] + q * (1 - q) / n_latents[hi_l])
    se = se or 1.0 / max(n_latents[lo_l], n_latents[hi_l])  # both 0 or 1: one latent's worth
    out.update(early_layer=lo_l, late_layer=hi_l)
    return dict(out, verdict=_part(out, "early_minus_late", p - q, p - q - 2 * se, p - q + 2 * se))


def aux_k_tied_init_reduce_dead(m: pd.DataFrame, base: pd.Series) -> dict:
    """Claim (e): held-out dead fraction without AuxK (and without tied init) minus with the full recipe, over
    the seeds of the base configuration (architecture, corpus, layer, size, k)."""
    cfg = ["architecture", "corpus", "layer", "d_sae", "k"]
    like = m[np.logical_and.reduce([m[c] == base[c] for c in cfg])]
    full = default_recipe(like)
    out = {"basis": "held-out dead fraction without minus with the recipe item, mean over seeds, difference +- 2 SE"}
    parts, short = [], [] if full.sum() >= 2 else ["the full recipe"]
    for item, other in (("aux_k", "tied_init"), ("tied_init", "aux_k")):
        off = like[~flag(like[item]) & flag(like[other])] if item in like and other in like else like.iloc[:0]
        short += [] if len(off) >= 2 else [f"the no-{item.replace('_', '-')} arm"]
        parts.append(_part(out, f"no_{item}", *mean_difference(off.dead_fraction, like[full].dead_fraction)))
    return dict(out, basis=out["basis"] + _fewer(short), verdict=combine(parts))


def flatten(claims: dict[str, dict]) -> dict:
    """numbers.json keys: verdict.<claim> and verdict.<claim>.<detail>."""
    out = {}
    for name, d in claims.items():
        out[f"verdict.{name}"] = d["verdict"]
        out.update({f"verdict.{name}.{k}": v for k, v in d.items() if k != "verdict"})
    return out
