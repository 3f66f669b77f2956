"""TreeSAE pilot on the language model: does the tree's hierarchy show on real activations, in scores a gate
cannot pass by construction?

    python benchmarks/pilot_tree_lm.py --epochs 4 --seeds 0 1      # the default harvest: Brown, layer 15

Trains TopK, Matryoshka and the tree (``--arch``; TreeConfig's defaults: learned parents, batch budget) at
params.yaml's base size and k with stage 02's optimiser settings for ``--epochs`` passes over the cached training
tokens (one ``train_sweep``, the same batches for all), then prints per SAE: held-out FVU and L0; the
co-activation hierarchy score with parents inferred from co-firing (``treesae.analysis.hierarchy``; for the tree
also with its own parents, which a gate makes near 1 by construction); and the decoder-geometry score, the mean
cosine between each child's decoder row and its parent's minus the same with parents shuffled within the level,
which a gate does not touch. Ends with RATIO and PEAK_RSS_MB lines.
"""
import argparse
import json
import resource
import time

import numpy as np
import torch
import yaml

from treesae import paths
from treesae.analysis import hierarchy as H
from treesae.cache import ActivationCache
from treesae.convergence import finalize
from treesae.metrics import reconstruction_metrics
from treesae.runs import Run
from treesae.saes import build_run
from treesae.train import TrainConfig, train_sweep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(paths.root()))
    ap.add_argument("--arch", nargs="+", default=["topk", "matryoshka", "tree"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tree", default="{}", help='tree config fields on top of params.yaml, JSON: {"adopt_coverage": 0.6}')
    a = ap.parse_args()
    p = yaml.safe_load(open(f"{a.root}/params.yaml"))
    base, tr, hp = p["train"]["base"], p["train"], p["hierarchy"]
    cache = ActivationCache.open(f"{a.root}/data/activations/{base['corpus']}")
    data = cache.activations(base["layer"], "train", drop_first=True, sink_ratio=tr.get("sink_ratio", 10.0))
    held = cache.activations(base["layer"], "heldout", drop_first=True, max_tokens=hp["max_tokens"], seed=0,
                             sink_ratio=tr.get("sink_ratio", 10.0))
    runs = [Run(architecture=arch, corpus=base["corpus"], layer=base["layer"], d_sae=base["d_sae"], k=base["k"], seed=s)
            for s in a.seeds for arch in a.arch]
    extra = dict(tr.get("architectures") or {})
    extra["tree"] = {**(extra.get("tree") or {}), **json.loads(a.tree)}
    saes = {r.name: build_run(r, data.shape[1], extra) for r in runs}
    o = tr["optim"]
    cfg = TrainConfig(n_tokens=int(a.epochs * len(data)), batch_size=o["batch_size"], lr=o["lr"], lr_end=o["lr_end"],
                      log_every=10 ** 9, checkpoint_every=0, threads=a.threads)
    t0 = time.time()
    train_sweep(saes, data, cfg, progress=False)
    minutes = (time.time() - t0) / 60
    sample = data[torch.linspace(0, len(data) - 1, min(len(data), 32768)).long()]
    rows = []
    for r in runs:
        sae = saes[r.name].eval()
        finalize(sae, sample)
        m = reconstruction_metrics(sae, held)
        Z = H.codes(sae, held, hp["batch_size"])
        row = dict(arch=r.architecture, seed=r.seed, fvu=m["fvu"], l0=m["l0"],
                   inferred=H.hierarchy_score(Z, sae.levels, None, hp["seed"], hp["min_count"])["score"])
        pairs = H.infer_parents(Z, sae.levels, hp["min_count"])
        geo = H.cross_level_decoder_cosine(sae.W_dec, sae.levels, pairs, hp["seed"]) if len(pairs) else None
        row["geometry_inferred"] = float((geo.cos - geo.cos_shuffled).mean()) if geo is not None else float("nan")
        if sae.parent_of is not None and (sae.parent_of >= 0).any():
            row["given"] = H.hierarchy_score(Z, sae.levels, sae.parent_of, hp["seed"], hp["min_count"])["score"]
            g = H.cross_level_decoder_cosine(sae.W_dec, sae.levels, sae.parent_of, hp["seed"])
            row["geometry_given"] = float((g.cos - g.cos_shuffled).mean())
            row["edges"] = float((sae.parent_of >= 0).float().mean())
        rows.append(row)
        print(row, flush=True)
    print(f"\n{cfg.n_steps} steps per SAE, {len(runs)} SAEs in {minutes:.1f} min ({len(data):,} training tokens, "
          f"{len(held):,} held-out)")
    cols = ("fvu", "l0", "inferred", "given", "geometry_inferred", "geometry_given", "edges")
    print("| architecture | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    mean = {}
    for arch in a.arch:
        sel = [r for r in rows if r["arch"] == arch]
        mean[arch] = {c: np.mean([r.get(c, np.nan) for r in sel]) for c in cols}
        print(f"| {arch} | " + " | ".join(f"{mean[arch][c]:.4f}" for c in cols) + " |")
    if "tree" in mean and "topk" in mean:
        print(f"RATIO tree_lm_fvu_of_topk {mean['tree']['fvu'] / mean['topk']['fvu']:.4f}")
    print(f"PEAK_RSS_MB pilot_tree_lm {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
