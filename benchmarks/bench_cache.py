"""Cost of checking a layer's shards (sha256 + statistics) against reading the layer for training.

    python benchmarks/bench_cache.py [--contexts 2048]

Builds a synthetic float16 cache of one layer in a temporary directory (default-profile shapes: 128
tokens per context, d_model 576, shards of 512 contexts), then times, alternately, ``check_layer`` and
``activations`` (what stage 02 does with a layer) on warm page cache.
"""
import argparse
import hashlib
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from treesae.cache import ActivationCache


def build(root: Path, n_ctx: int, T=128, d=576, shard=512, layer=15):
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    shards = []
    for i, s in enumerate(range(0, n_ctx, shard)):
        arr = (rng.standard_normal((min(shard, n_ctx - s), T, d), dtype=np.float32) * 2).astype(np.float16)
        f = root / "shards" / f"layer{layer}_{i:05d}.npy"
        np.save(f, arr)
        shards.append(dict(index=i, n_contexts=len(arr), sha256={str(layer): hashlib.sha256(f.read_bytes()).hexdigest()}))
    for name, a in (("tokens", np.zeros((n_ctx, T), np.int32)), ("doc_ids", np.zeros(n_ctx, np.int32)),
                    ("split", np.zeros(n_ctx, np.int8))):
        np.save(root / f"{name}.npy", a)
    pd.DataFrame(dict(layer=layer, position=range(T), norm_median=2 * d ** 0.5)).to_csv(root / "summary.csv", index=False)
    (root / "meta.json").write_text(json.dumps(dict(n_contexts=n_ctx, context_len=T, d_model=d, dtype="float16",
                                                    layers=[layer], shards=shards)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), args.contexts)
        times = {"check": [], "read": []}
        for _ in range(args.repeats + 1):  # the first round warms the page cache and is dropped
            c = ActivationCache.open(tmp)
            t = time.perf_counter()
            c.check_layer(15)
            times["check"].append(time.perf_counter() - t)
            c._checked.add(15)  # read without checking again
            t = time.perf_counter()
            c.activations(15)
            times["read"].append(time.perf_counter() - t)
        check, read = (float(np.median(v[1:])) for v in times.values())
        gb = args.contexts * 128 * 576 * 2 / 1e9
        print(f"{'layer':>10} {'GB':>6} {'check s':>8} {'read s':>8} {'check/read':>10}")
        print(f"{'synthetic':>10} {gb:6.2f} {check:8.2f} {read:8.2f} {check / read:10.2f}")
        print(f"RATIO cache_check_vs_read {check / read:.3f}")
        print(f"PEAK_RSS_MB cache_check {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
