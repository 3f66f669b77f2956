"""Stage 02's sweep in one process with all threads against several single-thread ranks (``train.processes``).

    python benchmarks/bench_processes.py [--steps 200] [--threads 2]

The default sweep's ten SAEs in its three (corpus, layer) groups, in stage 02's order: Brown layer 15 (TopK
1,152 latents at seeds 0-2, BatchTopK 1,152 at seeds 0-1, TopK 576 at seeds 0-1), Python docs layer 15 (TopK
1,152, seeds 0-1), Brown layer 3 (TopK 1,152); k 32, batch 1,024. One process with ``--threads`` threads trains
each group on shared batches, group after group; then ``--threads`` processes of one thread each train their
round-robin share (``treesae.distributed.share``), at the same time. Each process times ``--steps`` steps of each
of its groups after that group's init and first step, and adds the groups' ms per step: the time per step of
the whole stage, every group running the same number of steps. The split's time is its slowest rank's. Data:
the activation caches when they exist (``make paper``), else synthetic activations of the same width. Ends
with RATIO and PEAK_RSS_MB lines.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SWEEP = [("topk", "brown", 15, 1152, 0), ("topk", "brown", 15, 1152, 1), ("topk", "brown", 15, 1152, 2),
         ("topk", "pydocs", 15, 1152, 0), ("topk", "pydocs", 15, 1152, 1), ("batchtopk", "brown", 15, 1152, 0),
         ("batchtopk", "brown", 15, 1152, 1), ("topk", "brown", 15, 576, 0), ("topk", "brown", 15, 576, 1),
         ("topk", "brown", 3, 1152, 0)]  # the order stage 02 expands params.yaml's sweep in


def _data(corpus: str, layer: int):
    path = Path(__file__).resolve().parents[1] / "data" / "activations" / corpus
    if path.exists():
        from treesae.cache import ActivationCache
        return ActivationCache.open(path).activations(layer, "train", drop_first=True, sink_ratio=10.0), True
    g = torch.Generator().manual_seed(layer)
    x = torch.randn(1 << 17, 64, generator=g) @ torch.randn(64, 576, generator=g) / 8 + torch.randn(1 << 17, 576, generator=g)
    return x, False


def worker(a):
    from treesae import saes as S
    from treesae.train import TrainConfig, train_sweep
    torch.set_num_threads(a.threads_each)
    groups = {}
    for arch, corpus, layer, d, seed in SWEEP[a.rank::a.world]:
        groups.setdefault((corpus, layer), []).append((arch, d, seed))
    ms, cached = 0.0, True
    for (corpus, layer), runs in groups.items():
        data, cached = _data(corpus, layer)
        saes = {f"{arch}-{d}-s{seed}": S.build(arch, d_in=data.shape[1], d_sae=d, k=32) for arch, d, seed in runs}
        stamps = []
        cfg = TrainConfig(n_tokens=1024 * (a.steps + 1), batch_size=1024, log_every=50, threads=a.threads_each,
                          checkpoint_every=0)
        train_sweep(saes, data, cfg, progress=False, callback=lambda step, tokens, s: stamps.append(time.perf_counter()))
        ms += (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3
    print(json.dumps(dict(rank=a.rank, saes=len(SWEEP[a.rank::a.world]), groups=len(groups), ms_per_step=ms,
                          cached=cached, maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def run(a, world: int, threads_each: int) -> list[dict]:
    cmd = lambda r: [sys.executable, __file__, "--worker", "--rank", str(r), "--world", str(world),  # noqa: E731
                     "--threads-each", str(threads_each), "--steps", str(a.steps)]
    procs = [subprocess.Popen(cmd(r), stdout=subprocess.PIPE, text=True) for r in range(world)]
    out = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--threads-each", type=int, default=1)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    one = run(a, 1, a.threads)
    split = run(a, a.threads, 1)
    print(f"the default sweep's {len(SWEEP)} SAEs, batch 1,024, {a.steps} timed steps per group, "
          f"data: {'the activation caches' if one[0]['cached'] else 'synthetic'}")
    print("| layout | SAEs (groups) per process | ms per step, whole sweep (slowest process) | peak RSS MB (largest) |\n"
          "|---|---|---|---|")
    for name, rows in ((f"1 process x {a.threads} threads", one), (f"{a.threads} processes x 1 thread", split)):
        per = ", ".join(f"{r['saes']} ({r['groups']})" for r in rows)
        print(f"| {name} | {per} | {max(r['ms_per_step'] for r in rows):.0f} | {max(r['maxrss_mb'] for r in rows):,.0f} |")
    print(f"RATIO train_processes_vs_threads {max(r['ms_per_step'] for r in one) / max(r['ms_per_step'] for r in split):.2f}")
    print(f"PEAK_RSS_MB train_one_process {max(r['maxrss_mb'] for r in one):.0f}")
    print(f"PEAK_RSS_MB train_per_rank {max(r['maxrss_mb'] for r in split):.0f}")


if __name__ == "__main__":
    main()
