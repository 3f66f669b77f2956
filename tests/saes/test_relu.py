import pytest
import torch

from treesae.saes import ReLUConfig, build


def test_config_validation():
    with pytest.raises(ValueError, match="l1_coef must be >= 0"):
        ReLUConfig(d_in=8, d_sae=16, l1_coef=-0.1)
    with pytest.raises(ValueError, match="no sparse kernels; set sparse=False"):
        ReLUConfig(d_in=8, d_sae=16, sparse=True)


def test_anthropic_defaults():
    sae = build("relu", d_in=8, d_sae=16)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((16,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert not sae.cfg.normalize_decoder and not sae.cfg.apply_b_dec_to_input


@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_encode_and_decoder_norm_weighted_l1(x_small, apply_b_dec):
    sae = build("relu", d_in=12, d_sae=32, l1_coef=0.3, apply_b_dec_to_input=apply_b_dec)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
        sae.W_dec.mul_(torch.linspace(0.5, 3, 32)[:, None])
    shift = sae.b_dec if apply_b_dec else 0
    z = ((x_small - shift) @ sae.W_enc + sae.b_enc).relu()
    torch.testing.assert_close(sae.encode(x_small), z)
    loss, logs, z_out = sae.training_loss(x_small)
    x_hat = z @ sae.W_dec + sae.b_dec
    nmse = ((x_hat - x_small) ** 2).sum() / (x_small ** 2).sum()
    l1 = (z * sae.W_dec.norm(dim=1)).sum() / x_small.norm(dim=1).sum()
    torch.testing.assert_close(loss, nmse + 0.3 * l1)
    torch.testing.assert_close(logs["l1"], l1.detach())
    assert logs["l0"] == (z > 0).sum() / 48 and logs["l0"] > 0
    torch.testing.assert_close(z_out, z.detach())


def test_l1_warm_up_ramps_with_optimizer_steps(x_small, tmp_path):
    from treesae.saes import load_sae, save_sae
    sae = build("relu", d_in=12, d_sae=32, l1_coef=0.3, l1_warm_up_steps=4)
    l1 = lambda: sae.training_loss(x_small)[1]["l1"]  # noqa: E731
    nmse = lambda: sae.training_loss(x_small)[1]["nmse"]  # noqa: E731
    for step, scale in enumerate([0.25, 0.5, 0.75, 1.0, 1.0]):
        assert sae.l1_scale == scale
        torch.testing.assert_close(sae.training_loss(x_small)[0], nmse() + 0.3 * scale * l1())
        sae.after_optimizer_step()
    assert int(sae.steps) == 5
    with pytest.raises(ValueError, match="l1_warm_up_steps must be >= 0"):
        ReLUConfig(d_in=8, d_sae=16, l1_warm_up_steps=-1)
    save_sae(sae, tmp_path / "s")  # the counter is training state: not exported, reset on load
    assert int(load_sae(tmp_path / "s").steps) == 0
