import pytest
import torch

import treesae.saes.base as base
from treesae.saes import ResidualConfig, build


def test_config():
    cfg = ResidualConfig(d_in=8, size=70, k=4, k_scale_per_2x=2 ** 0.5)
    assert cfg.level_widths == [10, 20, 40] and cfg.level_ks == [4, 6, 8] and cfg.level_loss == "cumulative"
    with pytest.raises(ValueError, match="growth must be > 0"):
        ResidualConfig(d_in=8, size=70, growth=0)


def test_levels_encode_the_residual(x_small):
    sae = build("residual", d_in=12, widths=[5, 10, 20], k=3)
    z = sae.encode(x_small)
    r = x_small - sae.b_dec
    for enc, sl in zip(sae.encoders, sae.levels):
        pre = r @ enc.W_enc + enc.b_enc
        ref = torch.zeros_like(pre).scatter_(1, pre.topk(3).indices, pre.topk(3).values).relu()
        torch.testing.assert_close(z[:, sl], ref.detach())
        r = r - z[:, sl] @ sae.W_dec[sl]
    torch.testing.assert_close(sae(x_small), (x_small - r).detach())


def test_cumulative_loss_and_logs(x_small):
    sae = build("residual", d_in=12, widths=[5, 10, 20], k=3)
    loss, logs, z = sae.training_loss(x_small)
    levels = []
    for sl in sae.levels:
        x_hat = z[:, : sl.stop] @ sae.W_dec[: sl.stop] + sae.b_dec
        levels.append(((x_hat - x_small) ** 2).sum() / (x_small ** 2).sum())
        torch.testing.assert_close(logs[f"level{len(levels) - 1}/nmse"], levels[-1].detach())
    torch.testing.assert_close(loss.detach(), torch.stack(levels).mean().detach())
    torch.testing.assert_close(logs["nmse"], levels[-1].detach())


@pytest.mark.parametrize("ratio", [8.0, 0.0])
def test_sparse_and_dense_paths_agree(sparse_vs_dense, x_small, ratio):
    dead = torch.zeros(35, dtype=torch.bool)
    dead[::3] = True
    old = base.AUX_DENSE_RATIO
    try:
        base.AUX_DENSE_RATIO = ratio
        _, logs, _, _ = sparse_vs_dense("residual", x_small, dead, d_in=12, widths=[5, 10, 20], k=3, k_aux=2)
    finally:
        base.AUX_DENSE_RATIO = old
    assert all(logs[f"level{l}/aux"] > 0 for l in range(3))
