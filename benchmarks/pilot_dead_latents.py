"""Dead-latent pilot: which TopK configuration kills latents, so that AuxK and tied init have something to fix.

    python -m treesae.workspace pilot build/pilot && (cd build/pilot && dvc repro harvest)   # Brown, layer 15
    python benchmarks/pilot_dead_latents.py --root build/pilot --grid 2304:8:3e-3:2 4608:4:5e-3:2

``--grid d_sae:k:lr:epochs ...``: for each configuration, the four arms of OpenAI's recipe (AuxK on/off x
tied init on/off, one seed, the same batches), trained with stage 02's trainer; prints the dead fraction
during training (no firing for the trainer's window) and on the held-out tokens (never fires there),
held-out FVU and stage 02's convergence verdict (``treesae.convergence``). A configuration is a positive control when the arm without either item loses latents.
"""
import argparse
import resource
import time

import torch

from treesae import paths
from treesae.cache import ActivationCache
from treesae.convergence import Monitor, converged
from treesae.metrics import reconstruction_metrics
from treesae.saes import build
from treesae.train import TrainConfig, train_sweep

ARMS = {"full": {}, "no_aux_k": {"aux_k": False}, "no_tied_init": {"tied_init": False},
        "neither": {"aux_k": False, "tied_init": False}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(paths.root()))
    ap.add_argument("--corpus", default="brown")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--grid", nargs="+", required=True, help="d_sae:k:lr:epochs")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--heldout", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cache = ActivationCache.open(f"{a.root}/data/activations/{a.corpus}")
    data = cache.activations(a.layer, "train", drop_first=True, sink_ratio=10.0)
    held = cache.activations(a.layer, "heldout", drop_first=True, max_tokens=a.heldout, seed=0, sink_ratio=10.0)
    print(f"{len(data):,} train / {len(held):,} held-out tokens")
    rows = []
    for spec in a.grid:
        d_sae, k, lr, epochs = spec.split(":")
        d_sae, k, lr, epochs = int(d_sae), int(k), float(lr), float(epochs)
        saes = {arm: build("topk", d_in=data.shape[1], d_sae=d_sae, k=k, seed=1000 * a.seed + i, **opts)
                for i, (arm, opts) in enumerate(ARMS.items())}
        cfg = TrainConfig(n_tokens=int(epochs * len(data)), batch_size=a.batch, lr=lr, lr_end=lr / 10,
                          log_every=max(1, int(epochs * len(data)) // a.batch // 20), checkpoint_every=0,
                          threads=a.threads)
        sample = data[torch.linspace(0, len(data) - 1, min(len(data), 16384)).long()]
        mon, t0 = Monitor(cfg.n_steps, held, train_sample=sample, epoch_steps=-(-len(data) // a.batch)), time.time()
        curves = train_sweep(saes, data, cfg, progress=False, callback=mon)
        minutes = (time.time() - t0) / 60
        diag = mon.diagnostics(saes, sample)
        for arm, sae in saes.items():
            m = reconstruction_metrics(sae, held)
            d = dict(diag[arm], l0_rel_error=abs(m["l0"] - k) / k)
            rows.append(dict(spec=spec, arm=arm, steps=cfg.n_steps, minutes=minutes, fvu=m["fvu"], converged=converged(d),
                             gain=d.get("fvu_gain_last_quarter", float("nan")), growth=d.get("fvu_gap_growth", float("nan")),
                             dead_train=float(curves[arm].dead_fraction.iloc[-1]), dead_heldout=m["dead_fraction"]))
            print(f"{spec} {arm:13s} {cfg.n_steps} steps ({minutes:.1f} min for 4): FVU {m['fvu']:.4f} "
                  f"dead (train window) {rows[-1]['dead_train']:.1%} dead (held-out) {m['dead_fraction']:.1%} "
                  f"gain {rows[-1]['gain']:.1%} gap growth {rows[-1]['growth']:+.1%} converged {rows[-1]['converged']}", flush=True)
    print("\n| d_sae:k:lr:epochs | arm | steps | held-out FVU | dead, training window | never fires on held-out | "
          "last-quarter gain | gap growth | converged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['spec']} | {r['arm']} | {r['steps']:,} | {r['fvu']:.4f} | {r['dead_train']:.1%} | {r['dead_heldout']:.1%} | "
              f"{r['gain']:.1%} | {r['growth']:+.1%} | {r['converged']} |")
    for r in rows:
        if r["arm"] == "neither":
            full = next(x for x in rows if x["spec"] == r["spec"] and x["arm"] == "full")
            print(f"RATIO dead_neither_minus_full_{r['spec'].replace(':', '_')} {r['dead_heldout'] - full['dead_heldout']:.4f}")
    print(f"PEAK_RSS_MB pilot_dead_latents {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
