"""Every architecture's training throughput as a fraction of its own roofline, measured in one run.

    python benchmarks/bench_roofline.py [--threads 2] [--steps 6] [--warmup 2] [--only topk,relu] [--adopted 0.28]

Each architecture of stage 02 (params.yaml's `train.architectures` extras, the sweep's k split for the
multi-level ones) at d_in 576, 4,608 latents, k 32, batch 4,096, trained by train_sweep on the same synthetic
activations, each in its own subprocess (peak RSS apart). Minimal FLOPs per token: every encoder GEMM
forward (2 x in x out for each W_enc, which selection needs dense) plus 8 x d_in x L0 for what only the
active latents need (W_enc gradient 2, decoder forward 2 and its two gradients 4), with L0 the measured
mean over the timed steps. The roofline is that count at the GEMM rate of x[4096, 576] @ W[576, 4608], probed
between the architecture's own steps (bench_train.GemmProbe), so every row is bound under its own load.
``--adopted F``: the learned tree starts with a random F of each child level under a random coarser parent
(seeded), as a trained tree holds some (26-28% in the treelm run); at 0 every child is under the root, as at init.
"""
import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from bench_train import BATCH, D_IN, D_SAE, K, LR, GemmProbe, make_data

ORDER = ("topk", "batchtopk", "matryoshka", "relu", "stacked", "residual", "tree")


def encoder_flops(sae) -> int:
    """2 x in x out per token summed over every encoder weight (W_enc of each level)."""
    return sum(2 * p.numel() for n, p in sae.named_parameters() if n.split(".")[-1] == "W_enc")


def measure(a):
    from treesae import config
    from treesae.runs import Run
    from treesae.saes import build_run
    from treesae.train import TrainConfig, train_sweep
    torch.set_num_threads(a.threads)
    data = make_data(a)
    extras = config.read_params()["train"]["architectures"]
    sae = build_run(Run(a._arch, "synthetic", 0, D_SAE, K, 0), D_IN, extras)
    if a.adopted and getattr(sae, "parent_rule", None) == "learned":
        g = torch.Generator().manual_seed(0)
        for o, w in zip(sae.level_offsets[1:], sae.level_widths[1:]):
            kids = torch.randperm(w, generator=g)[:round(a.adopted * w)] + o
            sae.parent_index[kids] = torch.randint(0, o, (len(kids),), generator=g)
    cfg = TrainConfig(n_tokens=BATCH * (a.steps + a.warmup), batch_size=BATCH, lr=LR, lr_end=LR, lr_schedule="constant",
                      log_every=1, checkpoint_every=0, threads=a.threads, init_sample_tokens=BATCH,
                      dead_after_tokens=1000 * BATCH)
    probe = GemmProbe(a.warmup)
    probe.tick()
    curve = train_sweep({"s": sae}, data, cfg, progress=False, callback=lambda *_: probe.tick())["s"]
    r = probe.result()
    l0 = float(curve.l0.iloc[a.warmup:].mean())
    flop = encoder_flops(sae) + 8 * D_IN * l0
    r.update(l0=l0, flop_per_token=flop, roofline_tok_s=r["gflops"] * 1e9 / flop,
             maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    r["of_roofline"] = r["tok_s"] / r["roofline_tok_s"]
    print(json.dumps(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default=",".join(ORDER))
    ap.add_argument("--adopted", type=float, default=0.0, help="the learned tree's share of children with a parent")
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)  # make_data's interface
    ap.add_argument("--layer", type=int, default=15, help=argparse.SUPPRESS)
    ap.add_argument("--_arch", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._arch:
        return measure(a)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    print(f"d_in {D_IN}, {D_SAE:,} latents, k {K}, batch {BATCH}, {a.threads} threads, {a.steps} timed steps after "
          f"{a.warmup}\n| architecture | tokens/s | L0 | MFLOP/token | GEMM GFLOP/s | roofline tok/s | of roofline "
          f"| peak RSS MB |\n|---|---|---|---|---|---|---|---|")
    res = {}
    tag = {"tree": f"_adopted{round(100 * a.adopted)}"} if a.adopted else {}
    for arch in a.only.split(","):
        p = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--_arch", arch], env=env, capture_output=True, text=True)
        if p.returncode:
            print(f"| {arch} | failed: {p.stderr.strip().splitlines()[-1]} |")
            continue
        r = res[arch] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"| {arch}{tag.get(arch, '')} | {r['tok_s']:,.0f} | {r['l0']:.1f} | {r['flop_per_token'] / 1e6:.2f} | {r['gflops']:.0f} "
              f"| {r['roofline_tok_s']:,.0f} | {r['of_roofline']:.0%} | {r['maxrss_mb']:,.0f} |")
    for arch, r in res.items():
        print(f"RATIO train_{arch}{tag.get(arch, '')}_of_roofline {r['of_roofline']:.3f}")
    for arch, r in res.items():
        print(f"PEAK_RSS_MB train_{arch}{tag.get(arch, '')} {r['maxrss_mb']:.0f}")


if __name__ == "__main__":
    main()
