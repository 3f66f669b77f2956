import numpy as np
import pandas as pd
import pytest

from treesae import verdicts as V

TREES = ("stacked", "residual", "tree")


def test_verdict_maps_intervals_to_each_outcome():
    assert V.verdict(0.2, 0.1, 0.3) == V.SUPPORTED
    assert V.verdict(-0.2, -0.3, -0.1) == V.CONTRADICTED
    assert V.verdict(-0.2, -0.3, -0.1, expect=-1) == V.SUPPORTED
    assert V.verdict(0.05, -0.1, 0.2) == V.NO_DIFFERENCE
    assert V.verdict(float("nan"), 0, 1) == V.NOT_TESTABLE and V.verdict(None, None, None) == V.NOT_TESTABLE
    assert V.combine([V.SUPPORTED, V.SUPPORTED]) == V.SUPPORTED
    assert V.combine([V.SUPPORTED, V.NO_DIFFERENCE]) == V.NO_DIFFERENCE
    assert V.combine([V.SUPPORTED, V.CONTRADICTED, V.NOT_TESTABLE]) == V.CONTRADICTED
    assert V.combine([V.SUPPORTED, V.NOT_TESTABLE]) == V.NOT_TESTABLE


def _runs(fvu: dict, seeds=(0, 1, 2), noise=0.002, dead=None):
    """One run per architecture and seed; each seed's FVU noise is shared by every architecture (so a planted
    tie is exact and a planted gap is measured against a real seed-to-seed spread)."""
    rng = np.random.default_rng(0)
    seed_noise = {s: rng.normal(0, noise) for s in seeds}
    rows = []
    for arch, v in fvu.items():
        for s in seeds:
            rows.append(dict(architecture=arch, corpus="brown", layer=15, d_sae=2304, k=32, seed=s, aux_k=True,
                             tied_init=True, b_dec_init="geometric_median", fvu=v + seed_noise[s],
                             dead_fraction=0.01 + rng.normal(0, 0.001)))
    for item, d in (dead or {}).items():
        for s in seeds:
            rows.append(dict(rows[0], seed=s, aux_k=item != "aux_k", tied_init=item != "tied_init",
                             dead_fraction=d + rng.normal(0, 0.001)))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fvu, expected", [
    (dict(topk=0.20, batchtopk=0.19, stacked=0.30, residual=0.24, tree=0.28), V.SUPPORTED),
    (dict(topk=0.20, batchtopk=0.19, stacked=0.30, residual=0.17, tree=0.28), V.CONTRADICTED),  # beats TopK
    (dict(topk=0.20, batchtopk=0.19, stacked=0.24, residual=0.24, tree=0.28), V.NO_DIFFERENCE),  # a tie at the top
])
def test_treesae_ranking(fvu, expected):
    r = V.treesae_ranking(_runs(fvu), k=32, variants=TREES)
    assert r["verdict"] == expected, r
    assert "fewer than" not in r["basis"]
    one_seed = V.treesae_ranking(_runs(fvu, seeds=(0,)), k=32, variants=TREES)
    assert one_seed["verdict"] == V.NOT_TESTABLE
    assert one_seed["basis"].endswith("fewer than 2 converged seeds of " + ", ".join(TREES) + ", TopK or BatchTopK")
    two = V.treesae_ranking(_runs({a: v for a, v in fvu.items() if a != "residual"}), k=32, variants=TREES)
    assert two["basis"].endswith("fewer than 2 converged seeds of residual"), two  # tested without it, and says so


def test_dead_latent_claim():
    m = _runs(dict(topk=0.2), dead={"aux_k": 0.2, "tied_init": 0.05})
    base = m.iloc[0]
    assert V.aux_k_tied_init_reduce_dead(m, base)["verdict"] == V.SUPPORTED
    m = _runs(dict(topk=0.2), dead={"aux_k": 0.2, "tied_init": 0.01})
    assert V.aux_k_tied_init_reduce_dead(m, base)["verdict"] == V.NO_DIFFERENCE
    m = _runs(dict(topk=0.2), dead={"aux_k": 0.001, "tied_init": 0.05})
    assert V.aux_k_tied_init_reduce_dead(m, base)["verdict"] == V.CONTRADICTED
    none = V.aux_k_tied_init_reduce_dead(_runs(dict(topk=0.2)), base)
    assert none["verdict"] == V.NOT_TESTABLE and none["basis"].endswith("of the no-aux-k arm, the no-tied-init arm")
    m = _runs(dict(topk=0.2), dead={"aux_k": 0.2, "tied_init": 0.05})
    half = V.aux_k_tied_init_reduce_dead(m[~((m.tied_init == False) & (m.seed > 0))], base)  # noqa: E712
    assert half["verdict"] == V.NOT_TESTABLE and half["basis"].endswith("of the no-tied-init arm"), half


def test_corpus_claim_from_planted_factor_effects():
    from tests.analysis.test_factors import _planted_pairs
    from treesae.analysis.factors import factor_effects
    factors = ("corpus", "seed", "architecture", "layer")
    big = V.corpus_matters_most(*factor_effects(*_planted_pairs({"corpus": 0.2, "architecture": 0.05}), factors=factors))
    assert big["verdict"] == V.NOT_TESTABLE  # no d_sae factor in this design: that part cannot be estimated
    assert big["basis"].endswith("no pair of SAEs differs in d_sae alone in this sweep") and big["vs_architecture.lo"] > 0
    pairs, meta = _planted_pairs({"corpus": 0.2, "architecture": 0.05, "layer": 0.03})
    meta = meta.rename(columns={"layer": "d_sae"})
    r = V.corpus_matters_most(*factor_effects(pairs, meta, factors=("corpus", "seed", "architecture", "d_sae")))
    assert r["verdict"] == V.SUPPORTED and r["vs_architecture.lo"] > 0
    pairs, meta = _planted_pairs({"corpus": 0.05, "architecture": 0.2, "layer": 0.03})
    r = V.corpus_matters_most(*factor_effects(pairs, meta.rename(columns={"layer": "d_sae"}),
                                              factors=("corpus", "seed", "architecture", "d_sae")))
    assert r["verdict"] == V.CONTRADICTED


def test_encoder_decoder_claim():
    rng = np.random.default_rng(0)
    n = 2000
    cos = rng.uniform(0.3, 1.0, n)
    agree = pd.DataFrame(dict(cos_dec=cos, cos_enc=cos + rng.normal(0, 0.01, n)))  # the two matchings coincide
    assert V.encoder_decoder_disagree(agree, 0.7)["verdict"] == V.CONTRADICTED
    apart = pd.DataFrame(dict(cos_dec=cos, cos_enc=rng.uniform(0.3, 1.0, n)))  # unrelated
    assert V.encoder_decoder_disagree(apart, 0.7)["verdict"] == V.SUPPORTED
    assert V.encoder_decoder_disagree(apart.assign(cos_enc=np.nan), 0.7)["verdict"] == V.NOT_TESTABLE


def test_position_claim():
    assert V.position_early_layers({3: 0.30, 21: 0.02}, {3: 1024, 21: 1024})["verdict"] == V.SUPPORTED
    assert V.position_early_layers({3: 0.02, 21: 0.30}, {3: 1024, 21: 1024})["verdict"] == V.CONTRADICTED
    assert V.position_early_layers({3: 0.03, 21: 0.02}, {3: 1024, 21: 1024})["verdict"] == V.NO_DIFFERENCE
    assert V.position_early_layers({3: 0.3}, {3: 1024})["verdict"] == V.NOT_TESTABLE


def test_flatten():
    out = V.flatten({"x": dict(verdict=V.SUPPORTED, basis="b", **{"p.estimate": 1.0})})
    assert out == {"verdict.x": V.SUPPORTED, "verdict.x.basis": "b", "verdict.x.p.estimate": 1.0}


def test_treesae_hierarchy_names_each_variant_and_needs_two_seeds():
    """The best variant's probe score must beat TopK's and Matryoshka's; every variant's gaps are reported, and a
    peer with one seed makes the claim not testable (named in the basis)."""
    rows = [dict(architecture=a, score=v + e) for a, v in (("topk", 0.30), ("matryoshka", 0.35), ("tree", 0.45),
                                                         ("stacked", 0.10)) for e in (-0.01, 0.0, 0.01)]
    out = V.treesae_hierarchy(pd.DataFrame(rows), TREES)
    assert out["verdict"] == V.SUPPORTED and out["best_variant"] == "tree"
    assert out["tree_vs_matryoshka.estimate"] == pytest.approx(0.10) and out["stacked_vs_topk.hi"] < 0
    worse = pd.DataFrame([r for r in rows if r["architecture"] != "tree"])
    assert V.treesae_hierarchy(worse, TREES)["verdict"] == V.CONTRADICTED
    one = pd.DataFrame([r for r in rows if r["architecture"] != "matryoshka"] + [dict(architecture="matryoshka", score=0.3)])
    r = V.treesae_hierarchy(one, TREES)
    assert r["verdict"] == V.NOT_TESTABLE and "matryoshka" in r["basis"]
