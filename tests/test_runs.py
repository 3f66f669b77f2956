"""Runs (``treesae.runs``): every SAE's init is drawn from a hash of its whole identity."""
import pytest
import torch

from treesae import runs, saes

from synthetic_runs import metrics_table


def _dec(run):
    return saes.build_run(run, 16, {"relu": {"l1_coef_by_k": {4: 1.0}}}).W_dec.detach()


def test_runs_differing_in_any_one_factor_start_from_different_inits():
    base = runs.Run("topk", "brown", 9, 64, 4, 0)
    for f, v in dict(architecture="batchtopk", corpus="pydocs", layer=3, k=8, seed=1, options=(("aux_k", False),)).items():
        other = runs.Run(**{**base.__dict__, f: v})
        assert other.init_seed() != base.init_seed(), f
        assert not torch.equal(_dec(other), _dec(base)), f
    bigger = _dec(runs.Run("topk", "brown", 9, 128, 4, 0))
    assert not torch.equal(bigger[:64], _dec(base))  # a larger dictionary is not the smaller one extended
    # no other stream seeded with the run's seed reproduces its init
    assert not torch.equal(_dec(base), saes.build_run(base, 16, {}).__class__(
        saes.build_run(base, 16, {}).cfg.__class__(d_in=16, d_sae=64, k=4, seed=0)).W_dec.detach())
    assert _dec(base).equal(_dec(runs.Run("topk", "brown", 9, 64, 4, 0)))  # deterministic


def test_shared_init_is_an_explicit_control_arm():
    import torch
    shared = (("shared_init", True),)
    a, b = runs.Run("topk", "brown", 9, 64, 4, 0, shared), runs.Run("topk", "pydocs", 3, 64, 8, 0, shared)
    assert a.init_seed() == b.init_seed() and torch.equal(_dec(a), _dec(b))
    assert not torch.equal(_dec(a), _dec(runs.Run("topk", "brown", 9, 64, 4, 1, shared)))
    assert "shared_init" not in saes.run_config(a, 16, {})  # a run option, not an SAE config field


def test_a_run_name_is_a_file_name_whatever_the_corpus():
    """SAE directories and curve files are named after runs: an online corpus (hf:<dataset>/<name>) must not
    make sub-directories; the offline corpora keep their names."""
    assert runs.Run("topk", "hf:Skylion007/openwebtext:train", 5, 24576, 32, 0).name == \
        "topk-hf_Skylion007_openwebtext_train-L5-d24576-k32-s0"
    assert runs.Run("topk", "brown", 15, 1152, 32, 0).name == "topk-brown-L15-d1152-k32-s0"


# --- selections from the runs table (every stage's, one home)
def test_grids_base_and_pick():
    m = metrics_table()
    assert runs.base_run(m).name == "topk-brown-L15-d4608-k32-s0"
    assert runs.grid_sets(m)["topk-brown-L15-d4608-k32-s0"] == {"base", "frontier"}
    assert len(runs.pick(m, ["frontier"])) == 21
    assert set(runs.pick(m, ["seed"]).seed) == {1, 2}
    assert list(runs.pick(m, ["frontier"], architecture="tree").k) == [16, 32, 64]
    with pytest.raises(ValueError, match="exactly one"):
        runs.base_run(m.drop(runs.base_run(m).name))


def test_layer_runs_one_per_layer():
    m = metrics_table()
    r = runs.layer_runs(m)
    assert list(r.layer) == [3, 9, 15, 21] and (r.architecture == "topk").all() and (r.corpus == "brown").all()
    assert "topk-brown-L15-d4608-k32-s0" in r.index  # the base run serves layer 15
    with pytest.raises(ValueError, match="no relu SAE"):
        runs.layer_runs(m, "relu")


def test_hierarchy_runs_at_base_k():
    m = metrics_table()
    r = runs.hierarchy_runs(m, ["tree", "topk", "matryoshka", "stacked", "residual"])
    assert list(r.architecture) == ["tree", "topk", "matryoshka", "stacked", "residual"]
    assert (r.k == 32).all() and (r.layer == 15).all() and (r.corpus == "brown").all() and (r.seed == 0).all()
    assert len(runs.frontier(m)) == 21
    p = runs.probe_runs(m, ["tree", "topk"])  # every seed of the base configuration: the probe test's replicates
    assert list(p.architecture) == sorted(p.architecture, key=["tree", "topk"].index) and p.seed.nunique() > 1
    assert (p.k == 32).all() and (p.layer == 15).all() and (p.corpus == "brown").all() and (p.d_sae == 4608).all()
    assert set(p.index) >= set(r[r.architecture.isin(["tree", "topk"])].index)


def test_option_tag_and_run_groups():
    assert runs.option_tag("{}") == "default" and runs.option_tag('{"aux_k": false}') == "no_aux_k"
    assert runs.option_tag('{"geometric_median_init": false}') == "no_geometric_median_init"
    m = metrics_table()
    assert len(runs.frontier(m)) == 21
    assert sorted(runs.recipe_runs(m).variant) == ["default", "no_aux_k", "no_geometric_median_init", "no_tied_init"]
