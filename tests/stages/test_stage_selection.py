"""Which SAEs and pairs stages 03-05 pick from the runs table."""
from types import SimpleNamespace

import pandas as pd
import pytest

from treesae.analysis import factors as FX
from treesae.stages import hierarchy, matching, position

from synthetic_runs import metrics_table


def test_matching_pairs_single_factor_and_adjacent_layers():
    m = metrics_table()
    meta = matching.meta_table(m, matching.FACTORS)
    pairs = matching.plan_pairs(meta, matching.FACTORS)
    assert len(pairs) == len({frozenset(p) for p in pairs})  # no duplicates
    # harvested layers are spaced (3, 9, 15, 21): adjacent = consecutive among them
    assert sorted(matching.adjacent_layer_pairs(meta, matching.FACTORS)) == [
        ("topk-brown-L15-d4608-k32-s0", "topk-brown-L21-d4608-k32-s0"),
        ("topk-brown-L3-d4608-k32-s0", "topk-brown-L9-d4608-k32-s0"),
        ("topk-brown-L9-d4608-k32-s0", "topk-brown-L15-d4608-k32-s0")]
    few = ("seed", "aux_k", "tied_init")  # a profile that compares recipes only (profiles/deadlatents.yaml)
    assert matching.adjacent_layer_pairs(matching.meta_table(m, few), few) == []
    assert matching.plan_pairs(matching.meta_table(m, few), few)
    counts = matching.plan(dict(meta=meta, pairs=pairs, matching=matching.MatchingParams())).factor.value_counts().to_dict()
    # 7 architectures x 3 k: C(7,2)*3 architecture pairs, 7*C(3,2) k pairs; seeds 0,1,2; sizes; layers; recipes
    assert counts == {"architecture": 63, "k": 21, "seed": 3, "d_sae": 3, "layer": 6, "corpus": 1, "aux_k": 1,
                      "tied_init": 1, "b_dec_init": 1}
    every = matching.plan_pairs(meta, matching.FACTORS, "all")  # the planned pairs first, then every other pair
    assert every[:len(pairs)] == pairs and len(every) == len({frozenset(p) for p in every}) == len(m) * (len(m) - 1) // 2
    assert matching.MatchingParams().pairs == "all"
    t = matching.annotate_pairs(pd.DataFrame(every, columns=["a", "b"]), meta, m, matching.FACTORS)
    one = t.factor.notna()  # pairs differing in several factors keep a row, without factor values
    assert t[~one].value_a.isna().all() and t[~one].value_b.isna().all()
    # planned = the single-factor pairs + the pairs differing in seed and one other factor (factor_effects' between)
    planned = t.iloc[:len(pairs)]
    two = planned[planned.factor.isna()]
    no_seed = tuple(f for f in matching.FACTORS if f != "seed")
    assert one.sum() + len(two) == len(pairs) and len(two) == 2 * 17  # seeds 1, 2 x the base's 17 one-factor variants
    assert all(meta.at[a, "seed"] != meta.at[b, "seed"] and FX.differing_factor(meta, a, b, no_seed) not in (None, "none")
               for a, b in zip(two.a, two.b))
    r = t.set_index(["a", "b"]).loc[("topk-brown-L15-d4608-k32-s0", "topk-brown-L15-d4608-k32-s1")]
    assert (r.factor, r.value_a, r.value_b, r.architecture_b) == ("seed", 0, 1, "topk")
    with pytest.raises(ValueError, match="matching.pairs must be all or planned"):
        matching.MatchingParams(pairs="some")
    assert matching.representative_pair(m, meta, "seed", matching.FACTORS) == ("topk-brown-L15-d4608-k32-s0",
                                                                              "topk-brown-L15-d4608-k32-s1")


def test_matching_embedding_runs():
    m = metrics_table()
    s = dict(metrics=m, matching=matching.MatchingParams())
    assert sorted(matching.embedding_runs(s).index) == sorted([
        "topk-brown-L15-d4608-k32-s0", "topk-brown-L3-d4608-k32-s0", "topk-brown-L9-d4608-k32-s0",
        "topk-brown-L21-d4608-k32-s0", "topk-brown-L15-d4608-k32-s1", "topk-brown-L15-d4608-k32-s2",
        "topk-pydocs-L15-d4608-k32-s0"])


def test_position_tables():
    norms = pd.DataFrame([dict(corpus="c", layer=L, position=p, norm_median=(8.0 if p == 0 and L else 1.0) * (L + 1))
                          for L in range(3) for p in range(5)])
    s = position.sink_table(norms)
    assert list(s.sink_ratio) == [1.0, 8.0, 8.0]
    prof = pd.DataFrame([dict(layer=9, position=p, mean_act=10.0 if p == 0 else 1.0 + p, l0=4.0, nmse=0.5, resid_norm=3.0)
                         for p in range(4)])
    ps = position.profile_summary(prof)
    assert ps.loc[9, "mean_act_pos0"] == 10 and ps.loc[9, "mean_act_pos1plus"] == 3
    dec = pd.DataFrame({"layer": 3, "feature": [0, 1, 0, 1], "include_first": [True, True, False, False],
                        "n_active": [5, 0, 4, 0], "q50": [1.0, None, 1.0, None], "q90": [3.0, None, 2.0, None]})
    d = position.deciles_summary(dec).set_index("include_first")
    assert d.loc[True, "active_latents"] == 1 and d.loc[False, "frac_q90_up10"] == 1.0
    rotary = SimpleNamespace(cfg=SimpleNamespace(positional_embedding_type="rotary"))
    learned = SimpleNamespace(cfg=SimpleNamespace(positional_embedding_type="standard"))
    assert position.remove_mode(rotary) == "freeze" and position.remove_mode(learned) == "zero"


def test_hierarchy_variant_label():
    assert hierarchy.variant_label("tree", "given") == "tree (given)" and hierarchy.variant_label("topk", "inferred") == "topk"
