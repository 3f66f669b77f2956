import pytest
import torch

from treesae.saes import MatryoshkaConfig, build


@pytest.mark.parametrize("prefixes, msg", [([8, 8, 16], "strictly increasing"), ([8, 64], "exceeds d_sae=32"),
                                           ([], "must not be empty"), ([0, 8], "every prefix size must be")])
def test_prefix_validation(prefixes, msg):
    with pytest.raises(ValueError, match=msg):
        MatryoshkaConfig(d_in=8, d_sae=32, k=2, prefixes=prefixes)
    with pytest.raises(ValueError, match="selection must be 'batchtopk' or 'topk'"):
        MatryoshkaConfig(d_in=8, d_sae=32, k=2, selection="jumprelu")


def test_prefix_sizes_and_levels():
    assert MatryoshkaConfig(d_in=8, d_sae=64, k=2).prefix_sizes == [4, 8, 16, 32, 64]
    assert MatryoshkaConfig(d_in=8, d_sae=64, k=2, prefixes=[8, 16]).prefix_sizes == [8, 16, 64]
    sae = build("matryoshka", d_in=8, d_sae=64, k=2, prefixes=[8, 16, 64])
    assert sae.levels == [slice(0, 8), slice(8, 16), slice(16, 64)]


@pytest.mark.parametrize("selection", ["batchtopk", "topk"])
def test_loss_is_mean_of_prefix_reconstructions(selection, x_small):
    sae = build("matryoshka", d_in=12, d_sae=40, k=4, prefixes=[5, 15], selection=selection)
    loss, logs, z = sae.training_loss(x_small)
    per_prefix = []
    for m in (5, 15, 40):
        x_hat = z[:, :m] @ sae.W_dec[:m] + sae.b_dec
        per_prefix.append(((x_hat - x_small) ** 2).sum() / (x_small ** 2).sum())
        assert torch.allclose(logs[f"level{len(per_prefix) - 1}/nmse"], per_prefix[-1].detach())
    torch.testing.assert_close(loss.detach(), torch.stack(per_prefix).mean().detach())
    assert logs["level0/l0"] + logs["level1/l0"] + logs["level2/l0"] == logs["l0"]
    if selection == "topk":
        assert ((z > 0).sum(1) <= 4).all()


@pytest.mark.parametrize("selection", ["batchtopk", "topk"])
def test_sparse_and_dense_paths_agree(sparse_vs_dense, x_small, selection):
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    sparse_vs_dense("matryoshka", x_small, dead, d_in=12, d_sae=40, k=4, k_aux=5, prefixes=[5, 15],
                    selection=selection)
