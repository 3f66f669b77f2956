"""Feature matching on the workspace's trained SAEs: assignment solvers and pair threads, side by side.

    python benchmarks/bench_matching.py [--pairs 16 --seed 0 --jobs 2]

Needs stage 02's SAEs (``make paper`` or ``make smoke`` first). Draws a seeded sample of all unordered
pairs of SAEs and, for each pair's decoder and encoder cosine matrix, times
``assign``'s three methods: "scipy" (scipy.optimize.linear_sum_assignment, the reference), "sparse" (the
certified sparse solve, then "auto" when it does not certify) and "auto" (the default: lapjv when square,
else scipy), checking that every answer reaches scipy's optimum. Then it times ``compare_saes`` on
the sample with one thread and with --jobs threads and checks that the tables are identical. Prints
wall-clock seconds and ratios measured in the same run (the machine is shared: compare ratios, not
seconds across runs). Not collected by pytest.
"""
import argparse
import resource
import itertools
import time

import numpy as np
import torch

from treesae.model import pin_threads
from treesae.analysis import matching as M
from treesae.runs import read_metrics
from treesae.saes import load_saes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=16, help="pairs sampled from all unordered pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="threads for the compare_saes comparison")
    a = ap.parse_args()
    pin_threads(1)
    names = list(read_metrics().index)
    every = list(itertools.combinations(names, 2))
    pairs = [every[i] for i in sorted(np.random.default_rng(a.seed).choice(len(every), min(a.pairs, len(every)), replace=False))]
    saes = load_saes(list(dict.fromkeys(n for p in pairs for n in p)))
    print(f"{len(pairs)} of {len(every)} pairs of {len(names)} SAEs; seconds (wall), 1 thread")
    print(f"{'pair':64s} {'kind':7s} {'n x k':>11s} {'scipy':>6s} {'sparse':>7s} {'auto':>6s}")
    tot = dict(scipy=0.0, sparse=0.0, auto=0.0)
    for x, y in pairs:
        for kind in ("decoder", "encoder"):
            A, B = M.directions(saes[x], kind), M.directions(saes[y], kind)
            if A is None or B is None:
                continue
            C = M.cosine_matrix(*((A, B) if len(A) <= len(B) else (B, A)))
            t, out = {}, {}
            for method in ("scipy", "sparse", "auto"):
                t0 = time.perf_counter()
                out[method] = M.assign(C, method)
                t[method] = time.perf_counter() - t0
            (r, c), (r1, c1), (r2, c2) = out["scipy"], out["sparse"], out["auto"]
            opt = C[r, c].astype(np.float64).sum()
            for rr, cc in ((r1, c1), (r2, c2)):
                assert abs(C[rr, cc].astype(np.float64).sum() - opt) < 1e-6, (x, y, kind)
            for k_ in tot:
                tot[k_] += t[k_]
            print(f"{x[:31] + ' ' + y[:31]:64s} {kind:7s} {C.shape[0]:5d}x{C.shape[1]:<5d} {t['scipy']:6.2f} "
                  f"{t['sparse']:7.2f} {t['auto']:6.2f}", flush=True)
    print(f"total: scipy {tot['scipy']:.1f} s, sparse {tot['sparse']:.1f} s, auto {tot['auto']:.1f} s; auto is "
          f"{tot['scipy'] / tot['auto']:.2f}x faster than scipy, sparse {tot['scipy'] / tot['sparse']:.2f}x", flush=True)
    wall = {}
    for jobs in (1, a.jobs):
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        wall[jobs] = (M.compare_saes(saes, pairs, n_jobs=jobs), time.perf_counter() - t0)
    same = wall[1][0].equals(wall[a.jobs][0])
    print(f"compare_saes on {len(pairs)} pairs: n_jobs=1 {wall[1][1]:.1f} s, n_jobs={a.jobs} {wall[a.jobs][1]:.1f} s: "
          f"{wall[1][1] / wall[a.jobs][1]:.2f}x, tables identical: {same}")
    assert same
    print(f"RATIO matching_auto_vs_scipy {tot['scipy'] / tot['auto']:.2f}")
    print(f"RATIO matching_sparse_vs_scipy {tot['scipy'] / tot['sparse']:.2f}")
    print(f"RATIO matching_{a.jobs}threads_vs_1 {wall[1][1] / wall[a.jobs][1]:.2f}")
    print(f"PEAK_RSS_MB matching {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
