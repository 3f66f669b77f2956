import pytest
import torch

from treesae.saes.sparse import (Codes, GatheredLinear, Kernels, SparseDecode, aux_select, batch_topk_select,
                                 row_offsets, topk_select)

gen = torch.Generator().manual_seed(0)


def ragged(B=7, N=20, per_row=(3, 0, 5, 1, 0, 4, 2)):
    """Row-major entries with varying counts per row (empty rows included)."""
    rows = torch.arange(B).repeat_interleave(torch.tensor(per_row))
    cols = torch.cat([torch.randperm(N, generator=gen)[:n] for n in per_row])
    return rows, cols, row_offsets(rows, B)


def test_sparse_decode_matches_dense_autograd():
    B, N, d = 7, 20, 5
    rows, cols, offsets = ragged(B, N)
    vals = torch.randn(rows.numel(), dtype=torch.float64, generator=gen, requires_grad=True)
    W = torch.randn(N, d, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(B, d, dtype=torch.float64, generator=gen)
    out = SparseDecode.apply(vals, rows, cols, offsets, W)
    dense = Codes(vals, rows, cols, offsets, (B, N)).dense() @ W
    torch.testing.assert_close(out, dense)
    ga = torch.autograd.grad(out, [vals, W], g)
    gb = torch.autograd.grad(dense, [vals, W], g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v, w: SparseDecode.apply(v, rows, cols, offsets, w), (vals, W))


def test_gathered_linear_matches_dense_autograd():
    B, N, d = 7, 20, 5
    rows, cols, _ = ragged(B, N)
    x, shift, W, b = (torch.randn(*s, dtype=torch.float64, generator=gen, requires_grad=True)
                      for s in ((B, d), (d,), (d, N), (N,)))
    pre = torch.addmm(b, x - shift, W)
    g = torch.randn(rows.numel(), dtype=torch.float64, generator=gen)
    out = GatheredLinear.apply(pre.detach()[rows, cols], x, shift, W, b, rows, cols, (x - shift).detach())
    torch.testing.assert_close(out, pre[rows, cols])
    ga = torch.autograd.grad(out, [x, shift, W, b], g)
    gb = torch.autograd.grad(pre[rows, cols], [x, shift, W, b], g)
    for a, bb in zip(ga, gb):
        torch.testing.assert_close(a, bb, rtol=1e-12, atol=1e-12)


def test_kernels_sparse_and_dense_agree_and_scratch_is_reused():
    x = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    W = torch.randn(4, 9, dtype=torch.float64, generator=gen)
    b = torch.zeros(9, dtype=torch.float64)
    ks, kd = Kernels(True), Kernels(False)
    p1 = ks.linear(x, None, W, b)
    torch.testing.assert_close(p1, kd.linear(x, None, W, b))
    p2 = ks.linear(2 * x, None, W, b)
    assert p2.data_ptr() == p1.data_ptr()  # one scratch buffer per weight


def test_topk_and_aux_select():
    pre = torch.randn(5, 12, generator=gen)
    rows, cols, offsets = topk_select(pre, 3)
    assert torch.equal(rows, torch.arange(5).repeat_interleave(3)) and torch.equal(offsets, torch.arange(0, 15, 3))
    assert torch.equal(pre[rows, cols].view(5, 3).sort(1).values, pre.topk(3).values.sort(1).values)
    dead = torch.zeros(12, dtype=torch.bool)
    assert aux_select(pre, dead, 4) is None
    dead[[1, 5, 7]] = True
    rows, cols, _ = aux_select(pre, dead, 4)  # clamps to the 3 dead latents
    assert rows.numel() == 15 and dead[cols].all()
    dead[:] = True
    dead[0] = False
    _, cols, _ = aux_select(pre, dead, 2)
    expect = pre[:, 1:].topk(2).indices + 1
    assert torch.equal(cols.view(5, 2).sort(1).values, expect.sort(1).values)


@pytest.mark.parametrize("B, N, n", [(64, 50, 64 * 4), (8, 6, 40), (3, 5, 100), (128, 300, 128 * 16)])
def test_batch_topk_select_is_exact(B, N, n):
    pre = torch.randn(B, N, generator=gen)
    rows, cols, offsets = batch_topk_select(pre, n)
    flat = pre.relu().flatten()
    n_pos = int((flat > 0).sum())
    want = flat.topk(min(n, n_pos)).indices.sort().values
    got = rows * N + cols
    assert torch.equal(got, want)
    assert torch.all(rows[1:] >= rows[:-1])
    assert torch.equal(offsets, row_offsets(rows, B))


def test_modules_with_scratch_buffers_copy_and_pickle(x_small):
    import copy
    import pickle

    from treesae.saes import build

    sae = build("topk", d_in=12, d_sae=32, k=4)
    z = sae.encode(x_small)
    for clone in (copy.deepcopy(sae), pickle.loads(pickle.dumps(sae))):
        torch.testing.assert_close(clone.encode(x_small), z)
        assert clone.kernels._scratch.keys() <= {id(clone.W_enc)}


def coo_t_matmul(rows, cols, vals, dense, n_cols):
    """The reference: ``S^T @ dense`` through a COO sparse product (the kernel it replaced)."""
    st = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (n_cols, dense.shape[0]))
    return torch.sparse.mm(st, dense)


@pytest.mark.parametrize("B, N, d, k", [(1024, 768, 576, 32), (256, 96, 40, 8)])
def test_sparse_transpose_product_equals_the_coo_product_bit_for_bit(B, N, d, k):
    """float32 (training's dtype) bit for bit, at the paper's shape too; float64 to an ulp (another summation)."""
    from treesae.saes.sparse import _sparse_t_matmul
    pre = torch.randn(B, N, generator=gen)
    rows, cols, _ = topk_select(pre, k)   # TopK's order: unsorted columns within each row
    vals, dense = torch.randn(rows.numel(), generator=gen), torch.randn(B, d, generator=gen)
    assert torch.equal(_sparse_t_matmul(rows, cols, vals, dense, N + 5), coo_t_matmul(rows, cols, vals, dense, N + 5))
    torch.testing.assert_close(_sparse_t_matmul(rows, cols, vals.double(), dense.double(), N),
                               coo_t_matmul(rows, cols, vals.double(), dense.double(), N), rtol=1e-14, atol=1e-14)
    r, c, _ = ragged()   # empty rows, and columns no entry uses
    v, x = torch.randn(r.numel(), generator=gen), torch.randn(7, d, generator=gen)
    assert torch.equal(_sparse_t_matmul(r, c, v, x, 20), coo_t_matmul(r, c, v, x, 20))
    assert torch.equal(_sparse_t_matmul(r[:0], c[:0], v[:0], x, 20), torch.zeros(20, d))


def test_squared_error_gives_autograds_bits():
    from treesae.saes.base import squared_error
    x = torch.randn(64, 24, generator=gen)
    x_hat = (x + 0.3 * torch.randn(64, 24, generator=gen)).requires_grad_()
    ref = (x_hat - x).pow(2).sum()
    out = squared_error(x_hat, x)
    assert torch.equal(out, ref)
    assert torch.equal(torch.autograd.grad(out * 0.37, x_hat)[0], torch.autograd.grad(ref * 0.37, x_hat)[0])
    xr = x.clone().requires_grad_()   # the gradient to x, when x needs one
    assert torch.equal(torch.autograd.grad(squared_error(x_hat.detach(), xr), xr)[0],
                       torch.autograd.grad((x_hat.detach() - xr).pow(2).sum(), xr)[0])


def test_centred_input_is_shared_until_the_shift_or_the_input_changes():
    kn = Kernels(sparse=True)
    x, shift = torch.randn(8, 4, generator=gen), torch.nn.Parameter(torch.randn(4, generator=gen))
    a = kn._centre(x, shift)
    assert kn._centre(x, shift) is a and torch.equal(a, x - shift.detach())
    with torch.no_grad():
        shift.add_(1.0)   # what the optimizer does to b_dec
    b = kn._centre(x, shift)
    assert b is not a and torch.equal(b, x - shift.detach())
    x.mul_(2.0)
    assert torch.equal(kn._centre(x, shift), x - shift.detach())
    del x, a, b
    assert kn._centred is None   # freed with its input: no batch outlives its step
