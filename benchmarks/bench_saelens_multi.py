"""Sweeps of N SAEs: treesae's train_sweep against sae-lens' MultiSAETrainer, side by side in one run.

    python benchmarks/bench_saelens_multi.py [--n 1,4,16] [--d-sae 768,1152,4608] [--repeat 3] [--quality-steps 300]
    python benchmarks/bench_saelens_multi.py --device cuda --d-in 768 --d-sae 768,3072,12288,24576 --n 1 --batch 4096

N TopK SAEs (k 32, independent inits) train on the same batches, by ours (one train_sweep) and by sae-lens'
MultiSAETrainer (one SAETrainer per SAE over a shared stream), each (trainer, N, d_sae) in its own
subprocess so that peak memory does not mix. Settings as equal as the two trainers allow: Adam
(0.9, 0.999), constant lr, fp32, the same batch size, sae-lens' TopK with its defaults (dense codes,
AuxK 1/32 after a 1000-step window that these runs never reach), ours with its defaults (sparse kernels,
grad-norm clip 1, geometric-median b_dec). tokens/s is batch tokens per second of the whole sweep
(every SAE sees each token), timed over the steps after --warmup (CUDA synchronised).

Quality: one SAE per trainer, --quality-steps steps on the same data, then held-out nMSE
(sum ||x - x_hat||^2 / sum ||x - mean||^2 on --heldout rows the trainers never saw). A speed-up counts
only if ours is within --tolerance (relative) of sae-lens' nMSE or below it.

Data: --cache DIR (an activation cache, layer --layer, the train split) or synthetic activations with
sparse structure (each row a sum of 16 of 8,192 random unit directions with Zipfian rates plus noise).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

K, LR = 32, 3e-4


def make_data(a, n):
    g = torch.Generator().manual_seed(1234)  # the benchmark's data stream; SAE inits use torch.manual_seed
    if a.cache:
        import numpy as np
        from treesae.cache import ActivationCache
        x = ActivationCache.open(a.cache).activations(a.layer, split="train")
        if x.shape[0] < n:
            raise SystemExit(f"--cache layer {a.layer} has {x.shape[0]} rows, the run needs {n}: fewer --steps")
        return torch.as_tensor(np.asarray(x[:n]), dtype=torch.float32)
    m, active = 8192, 16
    dirs = torch.nn.functional.normalize(torch.randn(m, a.d_in, generator=g), dim=1)
    cols = torch.multinomial(1 / torch.arange(1, m + 1) ** 0.7, n * active, replacement=True, generator=g)
    rows = torch.arange(n).repeat_interleave(active)
    codes = torch.sparse_coo_tensor(torch.stack([rows, cols]), 3 * torch.rand(n * active, generator=g), (n, m))
    return torch.sparse.mm(codes, dirs) + 0.05 * torch.randn(n, a.d_in, generator=g)

def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wall time of every step after the first ``warmup`` (call ``tick`` once per finished step)."""

    def __init__(self, dev, warmup):
        self.dev, self.warmup, self.times, self.n, self.last = dev, warmup, [], 0, None

    def tick(self):
        sync(self.dev)
        now = time.perf_counter()
        if self.n > self.warmup:
            self.times.append(now - self.last)
        self.n, self.last = self.n + 1, now


def ours(a, data, n_sae, d_sae, steps, clock=None):
    from treesae.saes import build
    from treesae.train import TrainConfig, train_sweep
    torch.manual_seed(0)
    saes = {f"s{i}": build("topk", d_in=a.d_in, d_sae=d_sae, k=K).to(a.dev) for i in range(n_sae)}
    cfg = TrainConfig(n_tokens=a.batch * steps, batch_size=a.batch, lr=LR, lr_end=LR, lr_schedule="constant",
                      log_every=10 ** 9, checkpoint_every=0, threads=a.threads, init_sample_tokens=a.batch,
                      dead_after_tokens=1000 * a.batch)
    if clock:
        clock.tick()
    train_sweep(saes, data, cfg, progress=False, callback=(lambda *_: clock.tick()) if clock else None)
    return saes, lambda sae, x: sae(x)


def theirs(a, data, n_sae, d_sae, steps, clock=None):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer
    torch.manual_seed(0)
    saes = {f"s{i}": TopKTrainingSAE(TopKTrainingSAEConfig(d_in=a.d_in, d_sae=d_sae, k=K, aux_loss_coefficient=1 / 32,
                                                           device=str(a.dev))) for i in range(n_sae)}
    cfg = SAETrainerConfig(total_training_samples=a.batch * steps, train_batch_size_samples=a.batch, lr=LR, lr_end=LR,
                           dead_feature_window=1000, feature_sampling_window=10 ** 9, device=str(a.dev))

    def batches():  # the trainer asks for batch i+1 when step i is done
        for i in range(steps):
            if clock:
                clock.tick()
            yield {"h": data[i * a.batch:(i + 1) * a.batch]}
    MultiSAETrainer(cfg=cfg, saes=saes, hook_names={n: "h" for n in saes}, data_provider=batches()).fit()
    if clock:
        clock.tick()
    return saes, lambda sae, x: sae.decode(sae.encode(x))


TRAINERS = {"ours": ours, "sae-lens": theirs}


def measure(a):
    """One subprocess: a throughput run (kind 'speed') or a quality run (kind 'quality')."""
    torch.set_num_threads(a.threads)
    kind, trainer, n_sae, d_sae = a._measure.split(":")
    n_sae, d_sae = int(n_sae), int(d_sae)
    out = {}
    if kind == "speed":
        steps = a.steps + a.warmup
        data = make_data(a, a.batch * steps).to(a.dev)
        clock = Clock(a.dev, a.warmup)
        TRAINERS[trainer](a, data, n_sae, d_sae, steps, clock)
        out["tok_s"] = a.batch * len(clock.times) / sum(clock.times)
    else:
        steps = a.quality_steps
        data = make_data(a, a.batch * steps + a.heldout).to(a.dev)
        train, held = data[:-a.heldout], data[-a.heldout:]
        saes, recon = TRAINERS[trainer](a, train, n_sae, d_sae, steps)
        with torch.no_grad():
            x_hat = recon(saes["s0"], held)
            out["nmse"] = float(((held - x_hat) ** 2).sum() / ((held - held.mean(0)) ** 2).sum())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if a.dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(a.dev) / 2 ** 20
    print(json.dumps(out))


def run_one(a, spec):
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    p = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--_measure", spec], env=env, capture_output=True, text=True)
    if p.returncode:
        print(f"measurement {spec} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", default="1,4,16", help="SAEs per sweep")
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", default="768,1152,4608", help="dictionary sizes (comma-separated)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    ap.add_argument("--repeat", type=int, default=3, help="measurements of each (N, d_sae), the trainers' order alternating")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quality-steps", type=int, default=300, help="steps of the nMSE comparison (0: skip)")
    ap.add_argument("--heldout", type=int, default=8192)
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative nMSE tolerance")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.dev = torch.device(a.device)
    if a._measure:
        return measure(a)
    ns, sizes = [int(n) for n in a.n.split(",")], [int(d) for d in a.d_sae.split(",")]
    dev_name = torch.cuda.get_device_name(a.dev) if a.dev.type == "cuda" else f"cpu, {a.threads} threads"
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"TopK d_in {a.d_in}, k {K}, batch {a.batch}, lr {LR}, {a.steps} timed steps after {a.warmup}, on {dev_name}; "
          f"data: {a.cache or 'synthetic sparse'}")
    mem = "peak_gpu_mb" if a.dev.type == "cuda" else "peak_rss_mb"
    print(f"{a.repeat} measurements per row, the two trainers side by side (alternating which goes first); tok/s medians")
    print(f"| d_sae | N | ours tok/s | sae-lens tok/s | ratio (median; min-max) | ours {mem} | sae-lens {mem} |\n"
          "|---|---|---|---|---|---|---|")
    ratios, peaks = {}, {}
    for d_sae in sizes:
        for n in ns:
            runs = []
            for i in range(a.repeat):
                order = list(TRAINERS)[::1 if i % 2 == 0 else -1]
                r = {t: run_one(a, f"speed:{t}:{n}:{d_sae}") for t in order}
                if None not in r.values():
                    runs.append(r)
            if not runs:
                continue
            tag = f"n{n}_d{d_sae}"
            rs = sorted(r["ours"]["tok_s"] / r["sae-lens"]["tok_s"] for r in runs)
            ratios[tag] = statistics.median(rs)
            peaks[tag] = (max(r["ours"][mem] for r in runs), max(r["sae-lens"][mem] for r in runs))
            med = {t: statistics.median(r[t]["tok_s"] for r in runs) for t in TRAINERS}
            print(f"| {d_sae:,} | {n} | {med['ours']:,.0f} | {med['sae-lens']:,.0f} | {ratios[tag]:.2f}x "
                  f"({rs[0]:.2f}-{rs[-1]:.2f}) | {peaks[tag][0]:,.0f} | {peaks[tag][1]:,.0f} |", flush=True)
    quality = {}
    if a.quality_steps:
        print(f"\nheld-out nMSE after {a.quality_steps} steps ({a.quality_steps * a.batch:,} tokens), one SAE each, "
              f"{a.heldout:,} held-out rows:\n| d_sae | ours | sae-lens | ours / sae-lens |\n|---|---|---|---|")
        for d_sae in sizes:
            q = {t: run_one(a, f"quality:{t}:1:{d_sae}") for t in TRAINERS}
            if None in q.values():
                continue
            quality[d_sae] = q["ours"]["nmse"] / q["sae-lens"]["nmse"]
            print(f"| {d_sae:,} | {q['ours']['nmse']:.4f} | {q['sae-lens']['nmse']:.4f} | {quality[d_sae]:.3f} |")
        worse = [d for d, v in quality.items() if v > 1 + a.tolerance]
        print(f"quality: {'ours trains worse at d_sae ' + str(worse) if worse else 'ours within tolerance or better'} "
              f"(tolerance {a.tolerance:.0%})")
    where = "gpu_" if a.dev.type == "cuda" else ""
    for tag, v in ratios.items():
        print(f"RATIO {where}train_vs_saelens_multi_{tag} {v:.2f}")
    for d_sae, v in quality.items():
        print(f"RATIO {where}nmse_vs_saelens_d{d_sae} {v:.3f}")
    for tag, (o, t) in peaks.items():
        print(f"PEAK_{'GPU' if where else 'RSS'}_MB {where}ours_{tag} {o:.0f}")
        print(f"PEAK_{'GPU' if where else 'RSS'}_MB {where}saelens_multi_{tag} {t:.0f}")


if __name__ == "__main__":
    main()
