"""A recipe factor on the language model: SAE config fields measured side by side on the cached activations.

    python benchmarks/recipe_lm.py --epochs 4 --seeds 0 1 --arm topk=topk: \\
        'topk_sl=topk:normalize_decoder=false,decoder_init_norm=0.1,geometric_median_init=false'

Each ``--arm name=architecture:field=value,...`` is one SAE per seed at params.yaml's base run (corpus, layer,
width, k) with the given config fields on top of ``train.architectures``, all trained by one ``train_sweep`` (the
same batches) with stage 02's optimiser settings for ``--epochs`` passes over the cached training tokens. Prints
held-out FVU, L0 and the dead fraction (no firing on the held-out tokens) per SAE and per arm (mean, seed sd),
then ``RATIO fvu_<arm>_of_<base>`` against ``--base`` (default: the first arm) and ``PEAK_RSS_MB``.
"""
import argparse
import resource
import statistics
import time

import torch
import yaml

from treesae import paths
from treesae.cache import ActivationCache
from treesae.convergence import finalize
from treesae.metrics import reconstruction_metrics
from treesae.runs import Run
from treesae.saes import build_run
from treesae.train import TrainConfig, train_sweep

METRICS = ("fvu", "l0", "dead_fraction")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", nargs="+", required=True, help="name=architecture:field=value,...")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base", default=None)
    a = ap.parse_args()
    root = paths.root()
    p = yaml.safe_load(root.joinpath("params.yaml").read_text())
    base, tr = p["train"]["base"], p["train"]
    cache = ActivationCache.open(root / "data" / "activations" / base["corpus"])
    kw = dict(drop_first=tr["drop_first"], sink_ratio=tr["sink_ratio"])
    data = cache.activations(base["layer"], "train", **kw)
    held = cache.activations(base["layer"], "heldout", max_tokens=tr["eval"]["heldout_tokens"], seed=0, **kw)
    saes, arms = {}, []
    for text in a.arm:
        name, spec = text.split("=", 1)
        arch, _, fields = spec.partition(":")
        fields = {k: yaml.safe_load(v) for k, v in (f.split("=", 1) for f in fields.split(",") if f)}
        extra = {**(tr.get("architectures") or {}), arch: {**((tr.get("architectures") or {}).get(arch) or {}), **fields}}
        arms.append(name)
        for s in a.seeds:
            run = Run(architecture=arch, corpus=base["corpus"], layer=base["layer"], d_sae=base["d_sae"], k=base["k"], seed=s)
            saes[name, s] = build_run(run, data.shape[1], extra)
    o = tr["optim"]
    cfg = TrainConfig(n_tokens=int(a.epochs * len(data)), batch_size=o["batch_size"], lr=o["lr"], lr_end=o["lr_end"],
                      log_every=10 ** 9, checkpoint_every=0, threads=a.threads, seed=o["seed"])
    t0 = time.time()
    train_sweep({f"{n}-s{s}": sae for (n, s), sae in saes.items()}, data, cfg, progress=False)
    minutes = (time.time() - t0) / 60
    sample = data[torch.linspace(0, len(data) - 1, min(len(data), 32768)).long()]
    rows = []
    for (name, s), sae in saes.items():
        sae.eval()
        finalize(sae, sample)
        m = reconstruction_metrics(sae, held)
        rows.append(dict(arm=name, seed=s, **{k: m[k] for k in METRICS}))
        print(rows[-1], flush=True)
    print(f"\n{cfg.n_steps} steps per SAE, {len(saes)} SAEs in {minutes:.1f} min ({len(data):,} training tokens, "
          f"{len(held):,} held-out)")
    print("| arm | " + " | ".join(f"{m} | sd" for m in METRICS) + " |\n|---|" + "---|---|" * len(METRICS))
    mean = {}
    for name in arms:
        sel = [r for r in rows if r["arm"] == name]
        mean[name] = {m: statistics.fmean(r[m] for r in sel) for m in METRICS}
        sd = {m: statistics.stdev(r[m] for r in sel) if len(sel) > 1 else float("nan") for m in METRICS}
        print(f"| {name} | " + " | ".join(f"{mean[name][m]:.4f} | {sd[m]:.4f}" for m in METRICS) + " |")
    b = a.base or arms[0]
    for name in arms:
        if name != b:
            print(f"RATIO fvu_{name}_of_{b} {mean[name]['fvu'] / mean[b]['fvu']:.4f}")
    print(f"PEAK_RSS_MB recipe_lm {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
