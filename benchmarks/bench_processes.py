"""Stage 02's sweep in one process with all threads against several single-thread ranks (``train.processes``).

    python benchmarks/bench_processes.py [--steps 200] [--threads 2]

The sweep of ``params.yaml`` (``train``: its runs in stage 02's order, expanded by ``treesae.runs``), with
each run's batch and ``k``; runs are grouped by (corpus, layer) as stage 02 groups them. One process with ``--threads`` threads trains
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

def _sweep():
    from treesae import config
    from treesae.runs import expand
    train = config.section("train")
    return train, expand(train)


def _data(corpus: str, layer: int):
    path = Path(__file__).resolve().parents[1] / "data" / "activations" / corpus
    if path.exists():
        from treesae.cache import ActivationCache
        return ActivationCache.open(path).activations(layer, "train", drop_first=True, sink_ratio=10.0), True
    g = torch.Generator().manual_seed(layer)
    x = torch.randn(1 << 17, 64, generator=g) @ torch.randn(64, 576, generator=g) / 8 + torch.randn(1 << 17, 576, generator=g)
    return x, False


def worker(a):
    from treesae.saes import build_run
    from treesae.train import TrainConfig, train_sweep
    torch.set_num_threads(a.threads_each)
    train, sweep = _sweep()
    batch = train["optim"]["batch_size"]
    groups = {}
    for run in sweep[a.rank::a.world]:
        groups.setdefault((run.corpus, run.layer), []).append(run)
    ms, cached = 0.0, True
    for (corpus, layer), runs in groups.items():
        data, cached = _data(corpus, layer)
        saes = {run.name: build_run(run, data.shape[1], train.get("architectures") or {}) for run in runs}
        stamps = []
        cfg = TrainConfig(n_tokens=batch * (a.steps + 1), batch_size=batch, log_every=50, threads=a.threads_each,
                          checkpoint_every=0)
        train_sweep(saes, data, cfg, progress=False, callback=lambda step, tokens, s: stamps.append(time.perf_counter()))
        ms += (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3
    print(json.dumps(dict(rank=a.rank, saes=len(sweep[a.rank::a.world]), groups=len(groups), ms_per_step=ms,
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
    train, sweep = _sweep()
    print(f"params.yaml's sweep: {len(sweep)} SAEs ({', '.join(sorted({f'{r.d_sae:,}' for r in sweep}))} latents), "
          f"batch {train['optim']['batch_size']:,}, {a.steps} timed steps per group, "
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
