"""Runs (``treesae.runs``): every SAE's init is drawn from a hash of its whole identity."""
import torch

from treesae import runs


def _dec(run):
    return runs.build(run, 16, {"relu": {"l1_coef_by_k": {4: 1.0}}}).W_dec.detach()


def test_runs_differing_in_any_one_factor_start_from_different_inits():
    base = runs.Run("topk", "brown", 9, 64, 4, 0)
    for f, v in dict(architecture="batchtopk", corpus="pydocs", layer=3, k=8, seed=1, options=(("aux_k", False),)).items():
        other = runs.Run(**{**base.__dict__, f: v})
        assert other.init_seed() != base.init_seed(), f
        assert not torch.equal(_dec(other), _dec(base)), f
    bigger = _dec(runs.Run("topk", "brown", 9, 128, 4, 0))
    assert not torch.equal(bigger[:64], _dec(base))  # a larger dictionary is not the smaller one extended
    # no other stream seeded with the run's seed reproduces its init
    assert not torch.equal(_dec(base), runs.build(base, 16, {}).__class__(
        runs.build(base, 16, {}).cfg.__class__(d_in=16, d_sae=64, k=4, seed=0)).W_dec.detach())
    assert _dec(base).equal(_dec(runs.Run("topk", "brown", 9, 64, 4, 0)))  # deterministic


def test_shared_init_is_an_explicit_control_arm():
    import torch
    shared = (("shared_init", True),)
    a, b = runs.Run("topk", "brown", 9, 64, 4, 0, shared), runs.Run("topk", "pydocs", 3, 64, 8, 0, shared)
    assert a.init_seed() == b.init_seed() and torch.equal(_dec(a), _dec(b))
    assert not torch.equal(_dec(a), _dec(runs.Run("topk", "brown", 9, 64, 4, 1, shared)))
    assert "shared_init" not in runs.sae_config(a, 16, {})  # a run option, not an SAE config field


def test_a_run_name_is_a_file_name_whatever_the_corpus():
    """SAE directories and curve files are named after runs: an online corpus (hf:<dataset>/<name>) must not
    make sub-directories; the offline corpora keep their names."""
    assert runs.Run("topk", "hf:Skylion007/openwebtext:train", 5, 24576, 32, 0).name == \
        "topk-hf_Skylion007_openwebtext_train-L5-d24576-k32-s0"
    assert runs.Run("topk", "brown", 15, 1152, 32, 0).name == "topk-brown-L15-d1152-k32-s0"
