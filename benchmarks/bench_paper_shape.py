"""Training at the paper's shapes: this checkout's train_sweep against an earlier commit's, side by side.

    python benchmarks/bench_paper_shape.py [--against 9185314] [--d-sae 768 1152] [--steps 40] [--repeat 3]

One group of SAEs as stage 02 trains them on one rank (d_in 576, k 32, batch 1,024, one thread): TopK, BatchTopK,
Matryoshka and the tree (params.yaml's tree settings), independent inits, one train_sweep over the same batches of
synthetic activations with sparse structure. The earlier code runs from a temporary git worktree of ``--against``;
each (code, d_sae) measurement is its own subprocess, and the two codes alternate ``--repeat`` times so that a
shared machine's load falls on both. SAE-steps/s counts the steps after ``--warmup``. Every run also prints a
digest of its SAEs' weights after the last step: equal digests mean the two codes train bit-identical SAEs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUP = {"topk": {}, "batchtopk": {}, "matryoshka": {}, "tree": {"n_levels": 3, "branching": 2}}

CHILD = r"""
import hashlib, json, resource, sys, time, torch
from treesae import saes as S
from treesae.saes.base import weights_digest
from treesae.train import TrainConfig, train_sweep
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
g = torch.Generator().manual_seed(1234)  # data stream; the SAEs' inits come from their seeds
n, m, active, d_in = a["batch"] * (a["steps"] + a["warmup"]), 4096, 16, 576
dirs = torch.nn.functional.normalize(torch.randn(m, d_in, generator=g), dim=1)
cols = torch.multinomial(1 / torch.arange(1, m + 1) ** 0.7, n * active, replacement=True, generator=g)
codes = torch.sparse_coo_tensor(torch.stack([torch.arange(n).repeat_interleave(active), cols]),
                                3 * torch.rand(n * active, generator=g), (n, m))
data = torch.sparse.mm(codes, dirs) + 0.05 * torch.randn(n, d_in, generator=g) + 2.0
saes = {arch: S.build(arch, d_in=d_in, d_sae=a["d_sae"], k=32, seed=i, **extra)
        for i, (arch, extra) in enumerate(a["group"].items())}
cfg = TrainConfig(n_tokens=n, batch_size=a["batch"], lr=5e-4, log_every=25, threads=a["threads"],
                  checkpoint_every=0, dead_after_tokens=a["batch"] * 4)
stamps = []
train_sweep(saes, data, cfg, progress=False, callback=lambda *_: stamps.append(time.perf_counter()))
timed = stamps[a["warmup"] - 1:]
h = hashlib.sha256()
for name in sorted(saes):
    h.update(weights_digest(saes[name]))
print(json.dumps({"sae_steps_per_s": len(saes) * (len(timed) - 1) / (timed[-1] - timed[0]), "digest": h.hexdigest()[:16],
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(src: Path, args: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args["threads"]),
           "MKL_NUM_THREADS": str(args["threads"])}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"benchmark child failed ({src}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="9185314", help="the earlier commit (default: before the speed work)")
    ap.add_argument("--d-sae", type=int, nargs="+", default=[768, 1152])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), a.against], check=True)
        try:
            res = {}
            for d in a.d_sae:
                args = dict(d_sae=d, steps=a.steps, warmup=a.warmup, batch=a.batch, threads=a.threads, group=GROUP)
                for r in range(a.repeat):
                    for code, src in (("previous", base / "src"), ("current", ROOT / "src"))[::1 if r % 2 == 0 else -1]:
                        t0 = time.perf_counter()
                        res.setdefault((d, code), []).append(measure(src, args))
                        print(f"  d_sae {d} {code:8s} {res[(d, code)][-1]['sae_steps_per_s']:.2f} SAE-steps/s "
                              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    print(f"\n{len(GROUP)} SAEs ({', '.join(GROUP)}), d_in 576, k 32, batch {a.batch:,}, {a.threads} thread(s), "
          f"{a.steps} timed steps, {a.repeat} alternating repeats; previous = {a.against}")
    print("| d_sae | previous SAE-steps/s | current SAE-steps/s | ratio (median; min-max) | bit-identical |")
    print("|---|---|---|---|---|")
    ratios, summary = {}, []
    for d in a.d_sae:
        p, c = res[(d, "previous")], res[(d, "current")]
        rs = sorted(ci["sae_steps_per_s"] / pi["sae_steps_per_s"] for pi, ci in zip(p, c))
        ratios[d] = statistics.median(rs)
        same = len({x["digest"] for x in p + c}) == 1
        print(f"| {d:,} | {statistics.median(x['sae_steps_per_s'] for x in p):.2f} | "
              f"{statistics.median(x['sae_steps_per_s'] for x in c):.2f} | {ratios[d]:.2f}x ({rs[0]:.2f}-{rs[-1]:.2f}) "
              f"| {'yes' if same else 'NO'} |")
        summary.append((d, max(x["rss_mb"] for x in c)))
    for d in a.d_sae:
        print(f"RATIO train_paper_shape_vs_previous_d{d} {ratios[d]:.2f}")
    print(f"RATIO train_paper_shape_vs_previous {statistics.median(ratios.values()):.2f}")
    for d, rss in summary:
        print(f"PEAK_RSS_MB train_paper_shape_d{d} {rss:.0f}")


if __name__ == "__main__":
    main()
