"""Reference fidelity on the ground-truth world: our BatchTopK / Matryoshka against sae-lens' own trainers,
one recipe difference at a time.

    python benchmarks/fidelity.py --seeds 0 1 --arm \\
        ours=ours:batchtopk: free=ours:batchtopk:normalize_decoder=false \\
        sl=saelens:batchtopk: sl_norescale=saelens:batchtopk:rescale_acts_by_decoder_norm=false

Each ``--arm name=source:architecture:field=value,...`` trains one SAE per seed at stage 08's settings (params.yaml's
``synthetic`` section: world, width, k, token budget, optimiser, the same batches for both sources) and scores it
as stage 08 does. ``source`` is ``ours`` (fields: our SAE config on top of the section's ``extra``; ``calibrate=false``
keeps BatchTopK's running threshold; ``train.<field>``: a ``TrainConfig`` field) or ``saelens`` (fields: sae-lens'
training config). SAEs train ``--workers`` at a time, one thread each. Prints F1, MCC, explained variance, L0 and
dead fraction per arm (mean and seed sd), then ``RATIO f1_<arm>_of_<base>`` for every arm against ``--base``.
"""
import argparse
import json
import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import yaml

from treesae import paths

METRICS = ("f1", "mcc", "explained_variance", "l0", "dead_fraction", "absorption", "hierarchy_recovery")


def parse_arm(text: str) -> tuple[str, str, str, dict]:
    name, spec = text.split("=", 1)
    source, arch, fields = (spec.split(":", 2) + [""])[:3]
    if source not in ("ours", "saelens"):
        raise SystemExit(f"--arm {text!r}: source must be ours or saelens, got {source!r}")
    return name, source, arch, {k: yaml.safe_load(v) for k, v in (f.split("=", 1) for f in fields.split(",") if f)}


def run_one(job: tuple) -> dict:
    import torch
    from treesae import synthetic as S
    torch.set_num_threads(1)
    name, source, arch, fields, seed = job
    sp = yaml.safe_load(paths.root().joinpath("params.yaml").read_text())["synthetic"]
    world = S.make_world(S.WorldConfig(**sp["world"]))
    data, eval_data = S.train_data(world, sp["train_tokens"]), S.sample(world, sp["eval_tokens"], 0, split="eval")
    common = dict(data=data, batch_size=sp["batch_size"], lr=sp["lr"], lr_end=sp["lr_end"])
    t = time.perf_counter()
    if source == "ours":
        fields = dict(fields)
        train = {k[6:]: fields.pop(k) for k in list(fields) if k.startswith("train.")}
        calibrate = fields.pop("calibrate", True)
        extra = {**sp["extra"], arch: {**sp["extra"].get(arch, {}), **fields}}
        sae = S.train_ours(arch, world, sp["d_sae"], sp["k"], sp["n_tokens"], seed, extra=extra, calibrate=calibrate,
                           **{**common, **train})
    else:
        sae = S.train_reference(arch, world, sp["d_sae"], sp["k"], sp["n_tokens"], seed, **common, **fields)
    r = S.evaluate(sae, world, sp["eval_tokens"], 0, eval_data=eval_data)
    return dict(arm=name, seed=seed, seconds=time.perf_counter() - t, **{m: r.get(m, float("nan")) for m in METRICS})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", nargs="+", required=True, help="name=source:architecture:field=value,...")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--base", default=None, help="arm the RATIO lines compare with (default: the first)")
    a = ap.parse_args()
    arms = [parse_arm(t) for t in a.arm]
    jobs = [(*arm, seed) for arm in arms for seed in a.seeds]
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = []
        for r in pool.map(run_one, jobs):
            rows.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    print(f"\n{'arm':24s} " + " ".join(f"{m[:12]:>12s} {'sd':>6s}" for m in METRICS))
    means = {}
    for name, *_ in arms:
        sel = [r for r in rows if r["arm"] == name]
        means[name] = {m: statistics.fmean(r[m] for r in sel) for m in METRICS}
        sds = {m: statistics.stdev(r[m] for r in sel) if len(sel) > 1 else float("nan") for m in METRICS}
        print(f"{name:24s} " + " ".join(f"{means[name][m]:12.4f} {sds[m]:6.3f}" for m in METRICS))
    base = a.base or arms[0][0]
    for name in means:
        if name != base:
            print(f"RATIO f1_{name}_of_{base} {means[name]['f1'] / means[base]['f1']:.4f}")
    print(f"PEAK_RSS_MB fidelity {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
