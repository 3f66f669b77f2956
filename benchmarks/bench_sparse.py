"""Time one TopK training step (loss + backward) on the CPU: sparse kernels vs dense vs sae-lens.

    OMP_NUM_THREADS=1 python benchmarks/bench_sparse.py [--batch 4096 --d-in 576 --d-sae 4608 --k 32]

Not collected by pytest (a benchmark, not a test). Prints the minimum over --reps steps of the
process CPU time (user + system, so page faults count), which other processes on a shared machine
disturb far less than wall time; with one thread it equals wall time on an idle machine. With
--threads > 1 it uses wall time (CPU time would add the threads up).
"""
import argparse
import resource
import time

import torch
import torch.nn.functional as F

from treesae.saes import build
from treesae.saes.sparse import Codes, GatheredLinear, SparseDecode, _sparse_t_matmul, fixed_rows


CLOCK = time.process_time


def step_time(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


def kernel_alternatives(B, d, N, k, reps):
    """The choices inside the sparse path, each against its alternatives (ms, forward + backward)."""
    g = torch.Generator().manual_seed(0)
    x, gout = torch.randn(B, d, generator=g), torch.randn(B, d, generator=g)
    W_enc = (torch.randn(d, N, generator=g) / d ** 0.5).requires_grad_()
    W_dec = torch.randn(N, d, generator=g).requires_grad_()
    pre = (x @ W_enc).detach()
    top = pre.topk(k, dim=1, sorted=False)
    rows, offsets = fixed_rows(B, k)
    cols, v = top.indices.reshape(-1), top.values.reshape(-1).requires_grad_()

    def dec_custom():
        SparseDecode.apply(v, rows, cols, offsets, W_dec).backward(gout)

    def dec_embedding_bag_autograd():
        F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=v).backward(gout)

    def dec_dense():
        (Codes(v, rows, cols, offsets, (B, N)).dense() @ W_dec).backward(gout)

    def gradW_coo():
        _sparse_t_matmul(rows, cols, v.detach(), x, N)

    def gradW_index_add(chunk=64):
        out = torch.zeros(N, d)
        vv = v.detach().view(B, k)
        for s in range(0, B, chunk):
            out.index_add_(0, cols[s * k:(s + chunk) * k], (vv[s:s + chunk, :, None] * x[s:s + chunk, None]).reshape(-1, d))

    def gradW_dense():
        Codes(v.detach(), rows, cols, offsets, (B, N)).dense().t() @ x

    def enc_gathered():
        GatheredLinear.apply(v.detach(), x, None, W_enc, torch.zeros(N), rows, cols, x).backward(v.detach())

    def enc_dense_autograd():
        p = x @ W_enc
        p.reshape(-1)[rows * N + cols].backward(v.detach())

    print(f"kernel alternatives, B={B} d={d} N={N} k={k} (ms, CPU time):")
    for name, fn in [("decoder fwd+bwd: custom SparseDecode (used)", dec_custom),
                     ("decoder fwd+bwd: F.embedding_bag autograd", dec_embedding_bag_autograd),
                     ("decoder fwd+bwd: dense z @ W_dec", dec_dense),
                     ("grad W (S^T X): COO spmm (used)", gradW_coo),
                     ("grad W (S^T X): chunked index_add", gradW_index_add),
                     ("grad W (S^T X): dense [B, N] matmul", gradW_dense),
                     ("encoder fwd+bwd: GatheredLinear (used)", enc_gathered),
                     ("encoder fwd+bwd: dense autograd", enc_dense_autograd)]:
        W_enc.grad = W_dec.grad = v.grad = None
        print(f"  {name:45s} {step_time(fn, reps) * 1e3:8.1f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dead-frac", type=float, default=0.05)
    p.add_argument("--kernels", action="store_true", help="also time each kernel against its alternatives")
    p.add_argument("--archs", nargs="*", default=[], help="also time these architectures (e.g. batchtopk tree)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    global CLOCK
    CLOCK = time.process_time if a.threads == 1 else time.perf_counter
    if a.kernels:
        kernel_alternatives(a.batch, a.d_in, a.d_sae, a.k, a.reps)
    x = torch.randn(a.batch, a.d_in, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(a.d_sae, dtype=torch.bool)
    dead[: int(a.dead_frac * a.d_sae)] = True

    def ours(sparse, dead_mask, dense_z):
        sae = build("topk", d_in=a.d_in, d_sae=a.d_sae, k=a.k, sparse=sparse)

        def step():
            sae.zero_grad(set_to_none=True)
            loss, _, _ = sae.training_loss(x, dead_mask, dense_z=dense_z)
            loss.backward()
            sae.before_optimizer_step()
            sae.after_optimizer_step()
        return step

    rows = [("treesae sparse, no dead, sparse z", ours(True, None, False)),
            ("treesae sparse, no dead, dense z", ours(True, None, True)),
            (f"treesae sparse, {a.dead_frac:.0%} dead (AuxK), sparse z", ours(True, dead, False)),
            ("treesae dense, no dead", ours(False, None, True))]
    try:
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput

        sl = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae, k=a.k))

        def sl_step():
            sl.zero_grad(set_to_none=True)
            out = sl.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
            out.loss.backward()
        rows.append(("sae-lens TopKTrainingSAE, no dead", sl_step))
    except ImportError:
        pass
    for arch in a.archs:
        extra = dict(d_sae=a.d_sae) if arch in ("batchtopk", "matryoshka", "relu") else dict(size=a.d_sae)
        if arch != "relu":
            extra["k"] = a.k
        sae = build(arch, d_in=a.d_in, **extra)

        def arch_step(sae=sae):
            sae.zero_grad(set_to_none=True)
            loss, _, _ = sae.training_loss(x, dead, dense_z=False)
            loss.backward()
            sae.before_optimizer_step()
            sae.after_optimizer_step()
        rows.append((f"treesae {arch} (d_sae {sae.d_sae}), {a.dead_frac:.0%} dead", arch_step))
    print(f"B={a.batch} d_in={a.d_in} d_sae={a.d_sae} k={a.k} threads={a.threads}")
    times = {}
    for name, fn in rows:
        t = times[name] = step_time(fn, a.reps)
        print(f"{name:45s} {t * 1e3:8.1f} ms/step {a.batch / t:9.0f} tok/s")
    sparse = times["treesae sparse, no dead, sparse z"]
    for name, slug in (("treesae dense, no dead", "dense"), ("sae-lens TopKTrainingSAE, no dead", "saelens")):
        if name in times:
            print(f"RATIO sparse_step_vs_{slug} {times[name] / sparse:.3f}")
    print(f"PEAK_RSS_MB sparse {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
