import pytest
import torch

import treesae.saes.base as base
from treesae.saes import TopKConfig, build


def test_k_larger_than_dictionary_is_rejected():
    with pytest.raises(ValueError, match=r"TopKConfig: k=40 is larger than the dictionary \(d_sae=32\); choose k <= d_sae"):
        TopKConfig(d_in=8, d_sae=32, k=40)
    with pytest.raises(ValueError, match="k_aux must be an integer >= 1"):
        TopKConfig(d_in=8, d_sae=32, k=4, k_aux=0)
    with pytest.raises(ValueError, match="aux_coef must be >= 0"):
        TopKConfig(d_in=8, d_sae=32, k=4, aux_coef=-1.0)


def test_k_aux_defaults_and_clamp():
    cfg = TopKConfig(d_in=8, d_sae=32, k=4)
    assert (cfg.k_aux, cfg.aux_coef) == (256, 1 / 32)
    assert cfg.k_aux_eff == 16
    assert TopKConfig(d_in=8, d_sae=4096, k=4).k_aux_eff == 256


def test_codes_are_topk_of_relu(x_small):
    sae = build("topk", d_in=12, d_sae=32, k=5, tied_init=False)
    z = sae.encode(x_small)
    assert ((z > 0).sum(1) <= 5).all() and (z >= 0).all()
    pre = torch.addmm(sae.b_enc, x_small - sae.b_dec, sae.W_enc).detach()
    ref = torch.zeros_like(pre).scatter_(1, pre.topk(5).indices, pre.topk(5).values).relu()
    torch.testing.assert_close(z, ref)


def test_rescaled_topk_is_sae_lens_topk(x_small):
    """rescale_acts_by_decoder_norm: codes and reconstructions equal sae-lens' TopK with the same flag and weights
    (decoder rows of unequal norms), and our nMSE's gradients are its MSE's up to the constant between the two."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm needs normalize_decoder=False"):
        TopKConfig(d_in=12, d_sae=32, k=5, rescale_acts_by_decoder_norm=True)
    gen = torch.Generator().manual_seed(0)
    sae = build("topk", d_in=12, d_sae=32, k=5, normalize_decoder=False, rescale_acts_by_decoder_norm=True, tied_init=False)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(32, 1, generator=gen) * 3 + 0.05)
        sae.b_dec.copy_(torch.randn(12, generator=gen) * 0.1)
    sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=12, d_sae=32, k=5, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sl, name).copy_(getattr(sae, name))
    z = sae.encode(x_small)
    torch.testing.assert_close(z, sl.encode(x_small).detach())
    torch.testing.assert_close(sae(x_small), sl(x_small).detach())
    plain = build("topk", d_in=12, d_sae=32, k=5, normalize_decoder=False, tied_init=False)
    plain.load_state_dict(sae.state_dict())
    assert not torch.equal(plain.encode(x_small) > 0, z > 0)  # the control: the norms change which latents fire
    loss, _, _ = sae.training_loss(x_small)
    loss.backward()
    acts, _ = sl.encode_with_hidden_pre(x_small)
    ((sl.decode(acts) - x_small) ** 2).sum(-1).mean().backward()
    scale = x_small.pow(2).sum() / len(x_small)  # MSE = nMSE * sum ||x||^2 / B
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad * scale, getattr(sl, name).grad, rtol=1e-4, atol=1e-6, msg=name)


def test_tied_init():
    sae = build("topk", d_in=12, d_sae=32, k=4)
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert not torch.equal(build("topk", d_in=12, d_sae=32, k=4, tied_init=False).W_enc, sae.W_dec.t())


def test_sparse_and_dense_paths_agree(sparse_vs_dense, x_small):
    cfg = dict(d_in=12, d_sae=40, k=4)
    sparse_vs_dense("topk", x_small, **cfg)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40, generator=torch.Generator().manual_seed(0))[:15]] = True
    via_columns = sparse_vs_dense("topk", x_small, dead, k_aux=6, **cfg)  # AuxK as GEMMs on dead columns
    old = base.AUX_DENSE_RATIO
    try:
        base.AUX_DENSE_RATIO = 0.0  # AuxK via the sparse kernels
        via_kernels = sparse_vs_dense("topk", x_small, dead, k_aux=6, **cfg)
    finally:
        base.AUX_DENSE_RATIO = old
    assert via_columns[1]["aux"] > 0
    torch.testing.assert_close(via_columns[0], via_kernels[0], rtol=1e-10, atol=0)
    for name, g in via_columns[3].items():
        torch.testing.assert_close(g, via_kernels[3][name], rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("ratio", [8.0, 0.0])
def test_auxk_only_touches_dead_latents(x_small, ratio):
    dead = torch.zeros(40, dtype=torch.bool)
    dead[[0, 3, 7, 11, 19, 23, 31]] = True
    grads = []
    old = base.AUX_DENSE_RATIO
    try:
        base.AUX_DENSE_RATIO = ratio
        for coef in (0.0, 1.0):
            sae = build("topk", d_in=12, d_sae=40, k=4, k_aux=3, aux_coef=coef).double()
            loss, logs, _ = sae.training_loss(x_small.double(), dead)
            loss.backward()
            grads.append({n: p.grad for n, p in sae.named_parameters()})
            assert logs["aux"] > 0
    finally:
        base.AUX_DENSE_RATIO = old
    diff = {n: grads[1][n] - grads[0][n] for n in grads[0]}
    assert diff["W_dec"][~dead].abs().max() == 0 and diff["W_dec"][dead].abs().max() > 0
    assert diff["W_enc"][:, ~dead].abs().max() == 0 and diff["W_enc"][:, dead].abs().max() > 0
    assert diff["b_enc"][~dead].abs().max() == 0


def test_auxk_off_or_nothing_dead_gives_zero(x_small):
    dead = torch.ones(40, dtype=torch.bool)
    _, logs, _ = build("topk", d_in=12, d_sae=40, k=4, aux_k=False).training_loss(x_small, dead)
    assert logs["aux"] == 0
    _, logs, _ = build("topk", d_in=12, d_sae=40, k=4).training_loss(x_small, torch.zeros(40, dtype=torch.bool))
    assert logs["aux"] == 0


def test_loss_is_nmse_plus_aux(x_small):
    sae = build("topk", d_in=12, d_sae=40, k=4)
    loss, logs, _ = sae.training_loss(x_small)
    x_hat = sae(x_small)
    nmse = ((x_hat - x_small) ** 2).sum() / (x_small ** 2).sum()
    torch.testing.assert_close(loss.detach(), nmse.detach())
    torch.testing.assert_close(logs["mse"], ((x_hat - x_small) ** 2).sum(1).mean().detach())


def test_training_reduces_loss(x_small):
    sae = build("topk", d_in=12, d_sae=40, k=4)
    sae.init_from_sample(x_small)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = sae.training_loss(x_small)[0]
        first = first if first is not None else loss.item()
        loss.backward()
        sae.before_optimizer_step()
        opt.step()
        sae.after_optimizer_step()
    assert loss.item() < 0.5 * first
