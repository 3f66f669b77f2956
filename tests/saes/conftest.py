import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _loss_and_grads(sae, x, dead):
    sae.zero_grad(set_to_none=True)
    loss, logs, z = sae.training_loss(x, dead)
    loss.backward()
    return loss.detach(), logs, z, {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


@pytest.fixture
def sparse_vs_dense():
    """check(arch, x, dead=None, **cfg): the sparse and dense paths give the same loss, codes and
    gradients (float64); returns the sparse module's (loss, logs, z, grads)."""
    from treesae.saes import build

    def check(arch, x, dead=None, **cfg):
        a = build(arch, sparse=True, **cfg).double()
        b = build(arch, sparse=False, **cfg).double()
        x = x.double()
        a.init_from_sample(x)
        b.init_from_sample(x)
        ra, rb = _loss_and_grads(a, x, dead), _loss_and_grads(b, x, dead)
        torch.testing.assert_close(ra[0], rb[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ra[2], rb[2], rtol=1e-10, atol=1e-12)
        assert ra[3].keys() == rb[3].keys()
        for name in ra[3]:
            torch.testing.assert_close(ra[3][name], rb[3][name], rtol=1e-8, atol=1e-10, msg=name)
        return ra

    return check


@pytest.fixture
def x_small():
    return torch.randn(48, 12, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
