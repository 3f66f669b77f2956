import pytest
import torch

from treesae.saes import TreeConfig, build


def test_widths_and_rounding():
    cfg = TreeConfig(d_in=8, size=4608, k=32, branching=2)
    assert cfg.level_widths == [658, 1316, 2632] and cfg.d_sae == 4606  # 4608 // 7 * (1 + 2 + 4)
    assert TreeConfig(d_in=8, size=84, n_levels=2, branching=3, k=2).level_widths == [21, 63]


@pytest.mark.parametrize("kw, msg", [
    (dict(widths=[10, 25]), r"widths \[10, 25\] must grow by exactly branching=2 per level"),
    (dict(widths=[10, 20], ks=[2, 5]), r"level 1: k=5 exceeds branching \* k of level 0 \(2 \* 2\)"),
    (dict(size=5, n_levels=3), "too small"),
    (dict(size=70, branching=0), "branching must be an integer >= 1"),
])
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TreeConfig(d_in=8, **({"k": 2} | kw))


def test_parent_of():
    sae = build("tree", d_in=8, widths=[3, 6, 12], k=2)
    p = sae.parent_of
    assert p.shape == (21,) and (p[:3] == -1).all()
    assert p[3:9].tolist() == [0, 0, 1, 1, 2, 2]
    assert p[9:].tolist() == [3 + j // 2 for j in range(12)]
    assert build("topk", d_in=8, d_sae=8, k=2).parent_of is None


@pytest.mark.parametrize("sparse", [True, False])
def test_children_fire_only_with_their_parent(sparse, x_small):
    sae = build("tree", d_in=12, widths=[4, 8, 16], ks=[2, 3, 4], sparse=sparse)
    with torch.no_grad():  # make many children want to fire
        for enc in sae.encoders[1:]:
            enc.b_enc.add_(1.0)
    z = sae.encode(x_small)
    p = sae.parent_of
    child = torch.arange(4, 28)
    active_child = z[:, child] > 0
    assert active_child.any()
    assert not (active_child & ~(z[:, p[child]] > 0)).any()
    for l, (sl, k) in enumerate(zip(sae.levels, [2, 3, 4])):
        assert ((z[:, sl] > 0).sum(1) <= k).all()
    # children are the top-k among the children of active parents
    pre = (x_small - sae.b_dec) @ sae.encoders[1].W_enc + sae.encoders[1].b_enc
    allowed = (z[:, :4] > 0).repeat_interleave(2, dim=1)
    masked = pre.masked_fill(~allowed, float("-inf"))
    top = masked.topk(3)
    ref = torch.zeros_like(pre).scatter_(1, top.indices, top.values.clamp_min(0))
    torch.testing.assert_close(z[:, 4:12], ref.detach())


def test_sparse_and_dense_paths_agree(sparse_vs_dense, x_small):
    dead = torch.zeros(28, dtype=torch.bool)
    dead[[1, 5, 6, 13, 20, 27]] = True
    _, logs, z, _ = sparse_vs_dense("tree", x_small, dead, d_in=12, widths=[4, 8, 16], ks=[2, 3, 4], k_aux=2)
    assert logs["level2/aux"] > 0
    assert logs["l0"] == sum(logs[f"level{l}/l0"] for l in range(3))
