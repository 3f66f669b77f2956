import pytest
import torch

from treesae.saes import StackedConfig, build
from treesae.saes.hierarchical import geometric_widths


def test_widths_from_size_grow_by_growth():
    cfg = StackedConfig(d_in=8, size=4608, k=32)
    assert cfg.level_widths == [658, 1317, 2633] and cfg.d_sae == 4608
    assert geometric_widths(700, 3, 2.0) == [100, 200, 400]
    assert StackedConfig(d_in=8, size=90, n_levels=2, growth=2.0, k=4).level_widths == [30, 60]


def test_k_scale_per_2x_and_explicit_ks():
    cfg = StackedConfig(d_in=8, widths=[100, 200, 400], k=8, k_scale_per_2x=1.5)
    assert cfg.level_ks == [8, 12, 18] and cfg.k_total == 38
    assert StackedConfig(d_in=8, widths=[100, 200, 400], k=8).level_ks == [8, 8, 8]
    assert StackedConfig(d_in=8, widths=[10, 20], ks=[3, 5]).level_ks == [3, 5]


@pytest.mark.parametrize("kw, msg", [
    (dict(), r"give the level widths \(widths=\[...\]\) or the total size \(size=...\)"),
    (dict(widths=[10, 0]), "every level width must be an integer >= 1, got 0"),
    (dict(widths=[10, 20], size=40), "size=40 but sum\\(widths\\)=30"),
    (dict(widths=[10, 20], n_levels=3), "n_levels=3 but widths has 2 levels"),
    (dict(widths=[10, 20], k=12), "level 0: k=12 exceeds its width 10"),
    (dict(widths=[10, 20], ks=[2]), "ks has 1 entries for 2 levels"),
    (dict(size=3, n_levels=3, growth=0.1), "too small"),
    (dict(size=30, level_loss="sum"), "level_loss must be 'cumulative' or 'final'"),
])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        StackedConfig(d_in=8, **({"k": 2} | kw))


def test_structure(x_small):
    sae = build("stacked", d_in=12, widths=[6, 12, 24], k=2)
    assert [tuple(e.W_enc.shape) for e in sae.encoders] == [(12, 6), (6, 12), (12, 24)]
    assert sae.encoders[0].ln is None and sae.encoders[1].ln is not None
    assert torch.equal(sae.encoders[0].W_enc, sae.W_dec[:6].t())  # tied at level 0
    assert sae.levels == [slice(0, 6), slice(6, 18), slice(18, 42)]
    assert build("stacked", d_in=12, widths=[6, 12], k=2, layer_norm=False).encoders[1].ln is None
    _, logs, z = sae.training_loss(x_small)
    for l, sl in enumerate(sae.levels):
        assert logs[f"level{l}/l0"] == (z[:, sl] > 0).sum() / 48
        assert ((z[:, sl] > 0).sum(1) <= 2).all()
    assert sae.cfg.level_loss == "final"


def test_level_residual_feeds_the_parent_pre_activation(x_small):
    a = build("stacked", d_in=12, widths=[6, 12], k=2, level_residual=False)
    b = build("stacked", d_in=12, widths=[6, 12], k=2, level_residual=True)
    za, zb = a.encode(x_small), b.encode(x_small)
    assert torch.equal(za[:, :6], zb[:, :6])
    pre0 = torch.addmm(b.encoders[0].b_enc, x_small - b.b_dec, b.encoders[0].W_enc)
    enc = b.encoders[1]
    pre1 = enc.ln(zb[:, :6]) @ enc.W_enc + enc.b_enc + pre0.repeat_interleave(2, dim=1)
    ref = torch.zeros_like(pre1).scatter_(1, pre1.topk(2).indices, pre1.topk(2).values).relu()
    torch.testing.assert_close(zb[:, 6:], ref.detach())
    assert not torch.equal(za[:, 6:], zb[:, 6:])


@pytest.mark.parametrize("layer_norm, level_residual, level_loss", [(True, False, "final"), (True, True, "cumulative"),
                                                                     (False, True, "final")])
def test_sparse_and_dense_paths_agree(sparse_vs_dense, x_small, layer_norm, level_residual, level_loss):
    dead = torch.zeros(6 + 12 + 24, dtype=torch.bool)
    dead[::4] = True
    sparse_vs_dense("stacked", x_small, dead, d_in=12, widths=[6, 12, 24], k=2, k_scale_per_2x=1.5, k_aux=3,
                    layer_norm=layer_norm, level_residual=level_residual, level_loss=level_loss)
