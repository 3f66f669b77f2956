"""Training throughput on a GPU: treesae's train_sweep for TopK at growing dictionary size, against the
roofline of its own minimal FLOPs at the fp32 GEMM rate measured in the same run.

    python benchmarks/bench_gpu.py [--device cuda] [--steps 50] [--warmup 10]

d_in 768 (GPT-2 small), k 32, batch 4096, one SAE per run, synthetic activations resident on the device.
FLOPs per token of a sparse-backward TopK step (as in bench_train.py): 2*d_in*(d_sae + 4k). The GEMM
rate is the best of repeated x[B, d_in] @ W[d_in, d_sae] products at each size (fp32, TF32 off: what the
trainer runs). tokens/s counts the timed steps only (after --warmup steps, CUDA synchronised).
"""
import argparse
import resource
import time

import torch

from treesae.runs import Run
from treesae.saes import build_run
from treesae.train import TrainConfig, train_sweep

D_IN, K, BATCH = 768, 32, 4096


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def gemm_rate(dev, d_sae, reps=20):
    x, W = torch.randn(BATCH, D_IN, device=dev), torch.randn(D_IN, d_sae, device=dev)
    best = float("inf")
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        x @ W
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return 2 * BATCH * D_IN * d_sae / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="768,3072,12288,24576")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dense", action="store_true", help="the dense reference kernels (sparse=False)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    basis = torch.randn(64, D_IN, generator=g)
    data = (torch.randn(BATCH * (a.steps + a.warmup), 64, generator=g) @ basis
            + 0.1 * torch.randn(BATCH * (a.steps + a.warmup), D_IN, generator=g)).to(dev)
    rows = []
    for d_sae in map(int, a.sizes.split(",")):
        sae = build_run(Run("topk", "synthetic", 0, d_sae, K, 0), D_IN, {"topk": {"sparse": False}} if a.dense else {}).to(dev)
        cfg = dict(batch_size=BATCH, lr=3e-4, log_every=10 ** 9, checkpoint_every=0, init_sample_tokens=0)
        train_sweep({"s": sae}, data[:BATCH * a.warmup], TrainConfig(n_tokens=BATCH * a.warmup, **cfg), progress=False)
        sync(dev)
        t = time.perf_counter()
        train_sweep({"s": sae}, data[BATCH * a.warmup:], TrainConfig(n_tokens=BATCH * a.steps, **cfg), progress=False)
        sync(dev)
        tok_s = BATCH * a.steps / (time.perf_counter() - t)
        rate = gemm_rate(dev, d_sae)
        roof = rate / (2 * D_IN * (d_sae + 4 * K))
        rows.append((d_sae, tok_s, rate / 1e12, roof, tok_s / roof))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"TopK training on {name}: d_in {D_IN}, k {K}, batch {BATCH}, {a.steps} timed steps, "
          f"{'dense' if a.dense else 'sparse'} kernels")
    print("| d_sae | tokens/s | fp32 GEMM TFLOP/s | roofline tokens/s | of roofline |\n|---|---|---|---|---|")
    for d_sae, tok_s, tf, roof, frac in rows:
        print(f"| {d_sae:,} | {tok_s:,.0f} | {tf:.1f} | {roof:,.0f} | {frac:.0%} |")
    for d_sae, *_, frac in rows:
        print(f"RATIO gpu_train_topk_d{d_sae}_of_roofline {frac:.3f}")
    if dev.type == "cuda":
        print(f"PEAK_GPU_MB gpu_train {torch.cuda.max_memory_allocated(dev) / 2 ** 20:.0f}")
    print(f"PEAK_RSS_MB gpu_train {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
