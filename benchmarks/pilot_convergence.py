"""Convergence pilot: how held-out FVU, decoder stability, distance from init and cross-seed sharing
evolve with optimiser steps, for choosing the default profile's dictionary size, batch, lr and steps.

    python -m treesae.workspace pilot build/pilot && (cd build/pilot && dvc repro harvest)   # Brown, layer 15
    python benchmarks/pilot_convergence.py --root build/pilot --d-sae 4608 --batch 1024 --lr 1e-3 --epochs 12
    python benchmarks/pilot_convergence.py --root build/pilot --grid 2304:1024:3e-4:8 4608:1024:3e-4:16 --device cuda

Two TopK SAEs (seeds 0 and 1, independent inits as in stage 02) train on the same batches; at every
tenth of the run: held-out FVU (mean-centred, first ``--heldout`` held-out tokens), decoder stability
(median cosine of decoder rows to the previous milestone), median cosine to the init and the share
above 0.7, and cross-seed sharing (Hungarian matching of decoder rows, share above cosine 0.7). The
learning rate decays over the last 20% of the whole run, so a milestone is a point on this run's path,
not a shorter run.

``--grid d_sae:batch:lr:epochs ...`` trains one seed pair per configuration, each its own full run, and
prints stage 02's convergence verdict for each (``treesae.convergence``: the same Monitor, thresholds,
drop_first, sink_ratio and random held-out draw as the train stage) with the cross-seed sharing at the end. ``--budget-s``
stops starting new configurations after that many seconds; ``--out`` appends each row to a CSV.
"""
import argparse
import resource
import time

import numpy as np
import torch

from treesae import paths
from treesae.analysis.matching import match_features, shared_ratio
from treesae.convergence import cosine_to_init
from treesae.cache import ActivationCache
from treesae.convergence import THRESHOLDS, Monitor, _fvu, converged
from treesae.metrics import reconstruction_metrics
from treesae.runs import Run
from treesae.saes import build_run
from treesae.train import TrainConfig, train_sweep


def unit(W):
    return torch.nn.functional.normalize(W.detach().float(), dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(paths.root()), help="a workspace with Brown layer 15 harvested")
    ap.add_argument("--corpus", default="brown")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=12)
    ap.add_argument("--heldout", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grid", nargs="*", help="d_sae:batch:lr:epochs configurations (verdict table)")
    ap.add_argument("--budget-s", type=float, default=0, help="--grid: start no configuration after this")
    ap.add_argument("--out", default=None, help="--grid: CSV appended row by row")
    ap.add_argument("--sink-ratio", type=float, default=10.0, help="--grid: as train.sink_ratio (0: keep the sinks)")
    ap.add_argument("--dense", action="store_true", help="--grid: the dense reference kernels (sparse=False)")
    ap.add_argument("--train-fraction", type=float, default=1.0,
                    help="--grid: train on this leading share of the training contexts (how the gap scales with data)")
    a = ap.parse_args()
    if a.grid:
        return grid(a)
    cache = ActivationCache.open(f"{a.root}/data/activations/{a.corpus}")
    data = cache.activations(a.layer, "train")
    held = cache.activations(a.layer, "heldout", max_tokens=a.heldout)
    runs = [Run("topk", a.corpus, a.layer, a.d_sae, a.k, s) for s in (0, 1)]
    saes = {r.name: build_run(r, data.shape[1], {}) for r in runs}
    cfg = TrainConfig(n_tokens=int(a.epochs * len(data)), batch_size=a.batch, lr=a.lr, lr_end=a.lr / 10,
                      log_every=10 ** 9, checkpoint_every=0, threads=a.threads)
    marks = {max(1, round(cfg.n_steps * i / 10)) for i in range(1, 11)}
    prev, rows, t0 = {n: unit(s.W_dec) for n, s in saes.items()}, [], time.time()

    def milestone(step, tokens, ss):
        if step not in marks:
            return
        (na, sa), (nb, sb) = ss.items()
        row = dict(step=step, epochs=tokens / len(data), minutes=(time.time() - t0) / 60,
                   shared=shared_ratio(match_features(unit(sa.W_dec).numpy(), unit(sb.W_dec).numpy()).cos))
        for i, (n, s) in enumerate(ss.items()):
            init = cosine_to_init(s)
            row[f"fvu{i}"], row[f"stab{i}"] = _fvu(s, held), float((prev[n] * unit(s.W_dec)).sum(-1).median())
            row[f"init{i}"], row[f"init_above{i}"] = float(np.median(init)), float((init > 0.7).mean())
            prev[n] = unit(s.W_dec)
        rows.append(row)
        print(f"step {step:6d} ({row['epochs']:.1f} ep, {row['minutes']:.1f} min): FVU {row['fvu0']:.4f}/{row['fvu1']:.4f} "
              f"stability {row['stab0']:.3f} init cos {row['init0']:.2f} ({row['init_above0']:.0%} > 0.7) "
              f"shared {row['shared']:.1%}", flush=True)

    print(f"{len(data):,} train tokens, {cfg.n_steps} steps of {a.batch}, d_sae {a.d_sae}, k {a.k}, lr {a.lr} -> {a.lr / 10}")
    train_sweep(saes, data, cfg, progress=False, callback=milestone)
    print("\n| steps | epochs | held-out FVU (s0 / s1) | decoder stability vs previous | median cos to init | rows > 0.7 to init | cross-seed shared @0.7 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']:,} | {r['epochs']:.1f} | {r['fvu0']:.4f} / {r['fvu1']:.4f} | {r['stab0']:.3f} | {r['init0']:.2f} | "
              f"{r['init_above0']:.0%} | {r['shared']:.1%} |")
    tag = f"d{a.d_sae}_b{a.batch}_e{a.epochs:g}"
    print(f"RATIO pilot_cross_seed_shared_{tag} {rows[-1]['shared']:.4f}")
    print(f"RATIO pilot_fvu_gain_last_tenth_{tag} {(rows[-2]['fvu0'] - rows[-1]['fvu0']) / rows[-2]['fvu0']:.4f}")
    print(f"PEAK_RSS_MB pilot_{tag} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def grid(a):
    import pandas as pd
    cache = ActivationCache.open(f"{a.root}/data/activations/{a.corpus}")
    dev = torch.device(a.device)
    sinks = None if a.sink_ratio <= 0 else a.sink_ratio
    data = cache.activations(a.layer, "train", drop_first=True, sink_ratio=sinks)
    data = data[: int(a.train_fraction * len(data))].to(dev)
    held = cache.activations(a.layer, "heldout", drop_first=True, max_tokens=a.heldout, seed=0, sink_ratio=sinks).to(dev)
    sample = data[torch.linspace(0, len(data) - 1, len(held)).long().to(dev)].float()
    print(f"{len(data):,} train / {len(held):,} held-out tokens on {dev}; thresholds {THRESHOLDS}", flush=True)
    rows, t_all = [], time.time()
    for spec in a.grid:
        if a.budget_s and time.time() - t_all > a.budget_s:
            print(f"budget of {a.budget_s:.0f} s spent: skipping {spec} and later", flush=True)
            break
        d_sae, batch, lr, epochs = spec.split(":")
        d_sae, batch, lr, epochs = int(d_sae), int(batch), float(lr), float(epochs)
        runs = [Run("topk", a.corpus, a.layer, d_sae, a.k, s) for s in (0, 1)]
        saes = {r.name: build_run(r, data.shape[1], {"topk": {"sparse": False}} if a.dense else {}).to(dev) for r in runs}
        cfg = TrainConfig(n_tokens=int(epochs * len(data)), batch_size=batch, lr=lr, lr_end=lr / 10,
                          log_every=10 ** 9, checkpoint_every=0, threads=a.threads)
        mon, t0 = Monitor(cfg.n_steps, held, train_sample=sample, epoch_steps=-(-len(data) // batch)), time.time()
        train_sweep(saes, data, cfg, progress=False, callback=mon)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        minutes = (time.time() - t0) / 60
        diag = mon.diagnostics(saes, sample)
        for n, s in saes.items():
            diag[n]["l0_rel_error"] = abs(reconstruction_metrics(s, held)["l0"] - a.k) / a.k
        (na, sa), (nb, sb) = saes.items()
        row = dict(d_sae=d_sae, batch=batch, lr=lr, epochs=epochs, steps=cfg.n_steps, minutes=minutes,
                   shared=shared_ratio(match_features(unit(sa.W_dec).cpu().numpy(), unit(sb.W_dec).cpu().numpy()).cos))
        for i, n in enumerate((na, nb)):
            row.update({f"{k}{i}": v for k, v in diag[n].items()}, **{f"converged{i}": converged(diag[n])})
        rows.append(row)
        print(f"{spec}: {cfg.n_steps} steps {minutes:.1f} min | FVU {row['fvu_heldout_end0']:.4f}/{row['fvu_heldout_end1']:.4f} "
              f"gain {row['fvu_gain_last_quarter0']:+.3f} stab {row['dec_stability0']:.3f} gap {row['fvu_gap0']:+.3f} (first epoch {row.get('fvu_gap_first_epoch0', float('nan')):+.3f}) "
              f"init>0.7 {row['init_frac_above0']:.0%} L0err {row['l0_rel_error0']:.3f} "
              f"converged {row['converged0']}/{row['converged1']} shared {row['shared']:.1%}", flush=True)
        if a.out:
            pd.DataFrame(rows).to_csv(a.out, index=False)
    print("\n| d_sae | batch | lr | epochs | steps | held-out FVU (s0 / s1) | FVU gain, last quarter | decoder stability | "
          "train/held-out gap (after one epoch) | rows > 0.7 to init | L0 error | converged | cross-seed shared @0.7 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d_sae']:,} | {r['batch']} | {r['lr']:g} | {r['epochs']:g} | {r['steps']:,} | {r['fvu_heldout_end0']:.4f} / "
              f"{r['fvu_heldout_end1']:.4f} | {r['fvu_gain_last_quarter0']:.1%} | {r['dec_stability0']:.3f} | {r['fvu_gap0']:+.1%} ({r.get('fvu_gap_first_epoch0', float('nan')):+.1%}) | "
              f"{r['init_frac_above0']:.0%} | {r['l0_rel_error0']:.1%} | {r['converged0']}/{r['converged1']} | {r['shared']:.1%} |")
    for r in rows:
        print(f"RATIO pilot_shared_d{r['d_sae']}_b{r['batch']}_lr{r['lr']:g}_e{r['epochs']:g} {r['shared']:.4f}")
    print(f"PEAK_RSS_MB pilot_grid {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
