"""Harvest throughput against the bare forward pass over the same tokens, and peak memory.

Each measurement runs in its own process (so peak RSS is its own), alternating bare / harvest and
keeping the best of ``--repeats``, because this machine is shared and noisy. Prints a table.

    .venv/bin/python benchmarks/bench_harvest.py [--contexts 64 256] [--layers 3 9 15 21] [--threads 2]
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args):
    import numpy as np
    import torch
    from treesae import corpora, harvest, model
    model.pin_threads(args.threads)
    model.set_offline()
    lm = model.load_model()
    with tempfile.TemporaryDirectory() as tmp:
        cdir = corpora.prepare("brown", lm.tokenizer, 128, 0.1, args.contexts, 0, out_dir=Path(tmp) / "corpus")
        tokens = torch.from_numpy(np.load(cdir / "tokens.npy")).long()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        if args.child == "bare":
            with torch.no_grad():
                for b in range(0, len(tokens), args.batch_size):
                    lm(tokens[b:b + args.batch_size], stop_at_layer=max(args.layers))
        else:
            harvest.harvest(lm, cdir, Path(tmp) / "act", args.layers, batch_size=args.batch_size,
                            shard_contexts=args.shard_contexts, summary_contexts=0, progress=False)
        dt = time.perf_counter() - t
    print(json.dumps(dict(seconds=dt, tokens=tokens.numel(), rss_before_mb=rss0 / 1024,
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def measure(kind, contexts, args):
    cmd = [sys.executable, __file__, "--child", kind, "--contexts", str(contexts), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--shard-contexts", str(args.shard_contexts), "--layers", *map(str, args.layers)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["bare", "harvest"])
    ap.add_argument("--contexts", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9, 15, 21])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shard-contexts", type=int, default=32, help="small, so both sizes span several shards")
    args = ap.parse_args()
    if args.child:
        args.contexts = args.contexts[0]
        return child(args)
    print(f"$ {' '.join(sys.argv)}\nlayers {args.layers}, {args.threads} threads, batch {args.batch_size}, "
          f"contexts of 128 tokens, shards of {args.shard_contexts} contexts")
    print(f"{'contexts':>8} {'tokens':>8} {'bare tok/s':>11} {'harvest tok/s':>14} {'ratio':>6} {'bare peak MB':>13} {'harvest peak MB':>16}")
    tail = []
    for n in args.contexts:
        best = {"bare": None, "harvest": None}
        for _ in range(args.repeats):
            for kind in ("bare", "harvest"):
                r = measure(kind, n, args)
                if best[kind] is None or r["seconds"] < best[kind]["seconds"]:
                    best[kind] = r
        b, h = best["bare"], best["harvest"]
        print(f"{n:>8} {b['tokens']:>8} {b['tokens'] / b['seconds']:>11.0f} {h['tokens'] / h['seconds']:>14.0f} "
              f"{b['seconds'] / h['seconds']:>6.2f} {b['peak_rss_mb']:>13.0f} {h['peak_rss_mb']:>16.0f}")
        tail += [f"RATIO harvest_vs_bare_{n}ctx {b['seconds'] / h['seconds']:.3f}",
                 f"PEAK_RSS_MB bare_{n}ctx {b['peak_rss_mb']:.0f}", f"PEAK_RSS_MB harvest_{n}ctx {h['peak_rss_mb']:.0f}"]
    print("ratio = harvest throughput / bare forward throughput (target >= 0.9); peak = max RSS of that process")
    print("\n".join(tail))


if __name__ == "__main__":
    main()
