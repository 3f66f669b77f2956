"""Where a training step's time goes at the default profile's size, by operator (torch.profiler).

    python benchmarks/bench_step_profile.py [--d-sae 768 1152] [--saes 3] [--batch 1024] [--steps 40]

``--saes`` TopK SAEs (k 32, d_in 576) trained on shared batches of synthetic activations, once per
dictionary size, side by side in one process at ``--threads`` threads. The profile starts after the first
step (the SAEs' init is left out). Prints each size's ms per SAE-step and its top operators' share of the
profiled CPU time, then the encoder GEMM's share (the dense [batch, d_in] x [d_in, d_sae] product) and the
cost of the largest size relative to the smallest: how much a smaller dictionary saves.
"""
import argparse
import resource
import time

import torch
from torch.profiler import ProfilerActivity, profile

from treesae import saes as S
from treesae.train import TrainConfig, train_sweep


def step_profile(d_sae: int, a) -> tuple[float, list, float]:
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1 << 17, 576, generator=g)
    saes = {f"topk-{d_sae}-s{s}": S.build("topk", d_in=576, d_sae=d_sae, k=32, seed=s) for s in range(a.saes)}
    cfg = TrainConfig(n_tokens=a.batch * (a.steps + 1), batch_size=a.batch, log_every=a.steps, threads=a.threads,
                      checkpoint_every=0)
    stamps, prof = [], profile(activities=[ProfilerActivity.CPU], record_shapes=True)

    def step(*_):
        if not stamps:
            prof.start()
        stamps.append(time.perf_counter())
    train_sweep(saes, data, cfg, progress=False, callback=step)
    prof.stop()
    ms = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3 / a.saes
    ev = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in ev)
    gemm = sum(e.self_cpu_time_total for e in ev if e.key == "aten::addmm" and [a.batch, d_sae] in e.input_shapes)
    by_op = {}
    for e in ev:
        by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total / total
    return ms, sorted(((v, k) for k, v in by_op.items()), reverse=True)[:8], gemm / total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-sae", type=int, nargs="+", default=[768, 1152])
    ap.add_argument("--saes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = {d: step_profile(d, a) for d in dict.fromkeys(a.d_sae)}
    print(f"{a.saes} TopK SAEs (d_in 576, k 32) on shared batches of {a.batch:,}, {a.steps} steps, {a.threads} threads")
    print("| d_sae | ms per SAE-step | encoder GEMM share | top operators (share of CPU time) |\n|---|---|---|---|")
    for d, (ms, top, gemm) in rows.items():
        ops = ", ".join(f"{k.replace('aten::', '')} {v:.0%}" for v, k in top)
        print(f"| {d:,} | {ms:.1f} | {gemm:.0%} | {ops} |")
    lo, hi = min(rows), max(rows)
    for d, (_, _, gemm) in rows.items():
        print(f"RATIO step_encoder_gemm_share_d{d} {gemm:.2f}")
    if lo != hi:
        print(f"RATIO step_cost_d{hi}_vs_d{lo} {rows[hi][0] / rows[lo][0]:.2f}")
    print(f"PEAK_RSS_MB step_profile {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
