"""Training throughput: treesae's train_sweep vs sae-lens' SAETrainer vs the encoder-GEMM roofline.

    python benchmarks/bench_train.py [--threads 2] [--steps 8] [--warmup 2] [--cache PATH]

Same TopK configuration for everyone: d_in 576, d_sae 4608, k 32, batch 4096, lr 3e-4, Adam, fp32, CPU.
Data: Gaussian-ish synthetic activations (low-rank + noise, heavy-tailed norms), or --cache PATH (a .npy
[N, 576] file, or an activation-cache directory read with ActivationCache, layer --layer).
sae-lens runs with its defaults (dense TopK codes; its use_sparse_activations=True path fails in
backward on CPU with torch 2.13: "Could not run 'aten::view' ... SparseCPU"), AuxK coefficient 1/32.
Each measurement runs in its own subprocess with pinned threads, so that peak RSS (getrusage maxrss)
does not mix; tokens/s counts only the steps after --warmup steps. Every trainer process also times the
encoder GEMM between its own steps (a probe, excluded from the step times), so each row's roofline is
measured under the same machine load as its steps: on a shared machine the load drifts by 2-3x within
minutes. "vs sae-lens" is the raw tokens/s ratio; "same-GEMM" divides each trainer's tokens/s by its own
probe's GEMM rate first (the ratio at equal machine speed). Measurements are interleaved and repeated
(--repeat); the run with the best fraction of its roofline is reported for each trainer.

Roofline: the encoder GEMM x[B,576] @ W_enc[576,4608] is dense (TopK needs every pre-activation) and is
timed by the probe (fastest probe of the process: the strictest bound). Counting FLOPs honestly for a trainer with sparse backward: encoder forward 2*d_in*d_sae,
encoder weight-gradient 2*d_in*k (only k non-zero pre-activation gradients per token; no input gradient),
decoder forward + both gradients 3*2*k*d_in, i.e. 2*d_in*(d_sae + 4k) FLOP/token at the measured GEMM rate.
A dense-backward trainer needs 5 dense GEMMs of that size (encoder fwd + W_enc grad, decoder fwd + two
grads): its bound is printed for reference. "of roofline" is our fraction of the sparse-backward bound.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

D_IN, D_SAE, K, BATCH, LR = 576, 4608, 32, 4096, 3e-4


def make_data(args):
    import numpy as np
    import torch
    n = BATCH * (args.steps + args.warmup)
    if args.cache:
        if args.cache.endswith(".npy"):
            data = np.load(args.cache, mmap_mode="r").reshape(-1, D_IN)
        else:
            from treesae.cache import ActivationCache
            data = ActivationCache.open(args.cache).activations(args.layer, split="train")
        if data.shape[0] < n:
            raise SystemExit(f"--cache has {data.shape[0]} rows, need {n}")
        return torch.as_tensor(np.asarray(data[:n]), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g) @ torch.randn(64, D_IN, generator=g) / 8 + torch.randn(n, D_IN, generator=g)
    return x * (1 + torch.rand(n, 1, generator=g) ** 4 * 3)  # heavy-tailed token norms, like residual streams


class GemmProbe:
    """Times x[B, d_in] @ W_enc[d_in, d_sae] between training steps; step times exclude the probe."""

    def __init__(self, warmup: int):
        import torch
        self.x, self.W, self.warmup = torch.randn(BATCH, D_IN), torch.randn(D_IN, D_SAE), warmup
        self.gemm, self.steps, self.n, self.last = [], [], 0, None

    def tick(self):
        """Call once per finished step."""
        now = time.perf_counter()
        if self.n > self.warmup:
            self.steps.append(now - self.last)
        self.n += 1
        t = time.perf_counter()
        self.x @ self.W
        self.gemm.append(time.perf_counter() - t)
        self.last = time.perf_counter()

    def result(self) -> dict:
        t_gemm = min(self.gemm[1:])
        return {"tok_s": BATCH * len(self.steps) / sum(self.steps), "gemm_s": t_gemm,
                "gflops": 2 * BATCH * D_IN * D_SAE / t_gemm / 1e9, "timed_steps": len(self.steps)}


def bound(gflops: float, sparse: bool = True) -> float:
    """Tokens/s bound from the GEMM rate: sparse backward 2*d_in*(d_sae + 4k) FLOP/token, dense 5 GEMMs."""
    flop = 2 * D_IN * (D_SAE + 4 * K) if sparse else 5 * 2 * D_IN * D_SAE
    return gflops * 1e9 / flop


def measure_ours(args, auxk=False):
    import torch
    from treesae.saes import build
    from treesae.train import TrainConfig, train_sweep
    data = make_data(args)
    torch.manual_seed(0)
    sae = build("topk", d_in=D_IN, d_sae=D_SAE, k=K)
    cfg = TrainConfig(n_tokens=BATCH * (args.steps + args.warmup), batch_size=BATCH, lr=LR, lr_end=LR,
                      lr_schedule="constant", log_every=10 ** 9, checkpoint_every=0, threads=args.threads,
                      dead_after_tokens=BATCH if auxk else 1000 * BATCH, init_sample_tokens=BATCH)
    probe = GemmProbe(args.warmup)
    probe.tick()  # step 0 starts here (after validation and init_from_sample)
    train_sweep({"topk": sae}, data, cfg, progress=False, callback=lambda *a: probe.tick())
    return probe.result()


def measure_saelens(args, auxk=False):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    torch.set_num_threads(args.threads)
    data = make_data(args)
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, aux_loss_coefficient=1 / 32))
    n_steps = args.steps + args.warmup
    cfg = SAETrainerConfig(total_training_samples=BATCH * n_steps, train_batch_size_samples=BATCH, lr=LR, lr_end=LR,
                           dead_feature_window=0 if auxk else 1000, feature_sampling_window=10 ** 9, device="cpu")
    probe = GemmProbe(args.warmup)

    def batches():  # the trainer asks for batch i+1 when step i is done
        for i in range(n_steps):
            probe.tick()
            yield data[i * BATCH:(i + 1) * BATCH]
    SAETrainer(cfg=cfg, sae=sae, data_provider=batches()).fit()
    probe.tick()
    return probe.result()


def measure_duel(args):
    """Ours and sae-lens alternating step by step in one process (plus the GEMM probe after each pair):
    both see the same machine load, so their ratio does not drift with it."""
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from treesae.saes import build
    from treesae.train import TrainConfig, train_sweep
    data = make_data(args)
    n_steps = args.steps + args.warmup
    torch.manual_seed(0)
    theirs = SAETrainer(cfg=SAETrainerConfig(total_training_samples=BATCH * n_steps, train_batch_size_samples=BATCH,
                                             lr=LR, lr_end=LR, feature_sampling_window=10 ** 9, device="cpu"),
                        sae=TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, aux_loss_coefficient=1 / 32)),
                        data_provider=iter(()))
    cfg = TrainConfig(n_tokens=BATCH * n_steps, batch_size=BATCH, lr=LR, lr_end=LR, lr_schedule="constant",
                      log_every=10 ** 9, checkpoint_every=0, threads=args.threads, init_sample_tokens=BATCH,
                      dead_after_tokens=1000 * BATCH)  # sae-lens' default window: 1000 steps
    probe, t_theirs = GemmProbe(args.warmup), []

    def cb(step, tokens, saes):  # our step `step` just finished: time one sae-lens step, then the probe
        t = time.perf_counter()
        theirs.step(data[(step - 1) * BATCH:step * BATCH])
        theirs.n_training_steps += 1
        dt = time.perf_counter() - t
        if step > args.warmup:
            t_theirs.append(dt)
        probe.last += dt  # exclude their step from our step time
        probe.tick()
    probe.tick()
    train_sweep({"topk": build("topk", d_in=D_IN, d_sae=D_SAE, k=K)}, data, cfg, progress=False, callback=cb)
    r = probe.result()
    r["theirs_tok_s"] = BATCH * len(t_theirs) / sum(t_theirs)
    return r


MEASURES = {"duel": measure_duel, "ours": measure_ours, "ours_auxk": lambda a: measure_ours(a, auxk=True),
            "saelens": measure_saelens, "saelens_auxk": lambda a: measure_saelens(a, auxk=True)}
LABELS = {"ours": "treesae train_sweep (TopK)", "saelens": "sae-lens SAETrainer (TopK)",
          "ours_auxk": "treesae, AuxK active", "saelens_auxk": "sae-lens, AuxK active"}


def run_one(name, args):
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--_measure", name, "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--layer", str(args.layer)] + (["--cache", args.cache] if args.cache else [])
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"measurement {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per trainer (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=2, help="interleaved repeats; the best of each is reported")
    ap.add_argument("--only", default="duel,ours,saelens,ours_auxk,saelens_auxk")
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.__dict__["_measure"]:
        import torch
        torch.set_num_threads(args.threads)
        out = MEASURES[args.__dict__["_measure"]](args)
        out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"config: d_in {D_IN}, d_sae {D_SAE}, k {K}, batch {BATCH}, threads {args.threads}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, best of {args.repeat} interleaved runs, "
          f"data: {args.cache or 'synthetic'}")
    names, res = args.only.split(","), {}
    for _ in range(args.repeat):
        for name in names:
            r = run_one(name, args)
            r["of_roofline"] = r["tok_s"] / bound(r["gflops"])
            if name not in res or r["of_roofline"] > res[name]["of_roofline"]:
                res[name] = r
    if "duel" in res:
        d = res["duel"]
        print(f"\nalternating steps in one process (same load for both): treesae {d['tok_s']:,.0f} tok/s, "
              f"sae-lens {d['theirs_tok_s']:,.0f} tok/s -> {d['tok_s'] / d['theirs_tok_s']:.2f}x; treesae at "
              f"{d['of_roofline']:.0%} of its roofline ({bound(d['gflops']):,.0f} tok/s at {d['gflops']:.0f} GFLOP/s)")
    base = res.get("saelens")
    print("\nseparate processes (peak RSS per trainer; tokens/s drift with the machine's load between processes):")
    print(f"| {'trainer':<27} | {'tokens/s':>8} | {'GEMM GFLOP/s':>12} | {'roofline tok/s':>14} | {'of roofline':>11} "
          f"| {'vs sae-lens':>11} | {'same-GEMM':>9} | {'peak RSS MB':>11} |")
    print("|" + "|".join("-" * (w + 2) for w in (27, 8, 12, 14, 11, 11, 9, 11)) + "|")
    for name in [n for n in LABELS if n in res]:
        r = res[name]
        raw = f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        same = f"{r['of_roofline'] / base['of_roofline']:.2f}x" if base else "-"
        print(f"| {LABELS[name]:<27} | {r['tok_s']:>8,.0f} | {r['gflops']:>12.0f} | {bound(r['gflops']):>14,.0f} "
              f"| {r['of_roofline']:>11.0%} | {raw:>11} | {same:>9} | {r['maxrss_mb']:>11,.0f} |")
    g = max(r["gflops"] for r in res.values())
    print(f"\nroofline = GEMM rate / (2*d_in*(d_sae + 4k)) FLOP/token (sparse backward); at the fastest probe "
          f"({g:.0f} GFLOP/s) that is {bound(g):,.0f} tok/s; a dense-backward trainer's bound would be "
          f"{bound(g, sparse=False):,.0f} tok/s.")
    if "duel" in res:
        print(f"RATIO train_vs_saelens_duel {res['duel']['tok_s'] / res['duel']['theirs_tok_s']:.2f}")
        print(f"RATIO train_topk_of_roofline {res['duel']['of_roofline']:.3f}")
    if base and "ours" in res:
        print(f"RATIO train_vs_saelens_separate {res['ours']['tok_s'] / base['tok_s']:.2f}")
    for name in [n for n in LABELS if n in res]:
        print(f"PEAK_RSS_MB train_{name} {res[name]['maxrss_mb']:.0f}")


if __name__ == "__main__":
    main()
