"""TreeSAE pilot on the ground-truth world: which design choices make the tree variant recover the hierarchy.

    python benchmarks/pilot_tree.py --arm fixed=tree: learned=tree:parent_rule=learned \\
        'split=tree:parent_rule=learned,ks=[6,4,2]' matryoshka=matryoshka: --seeds 0 1

Each ``--arm name=architecture:field=value,...`` trains one SAE per seed at stage 08's settings (params.yaml's
``synthetic`` section: world, width, k, token budget, optimiser) with the given architecture config fields on
top of the section's ``extra``, and scores it as stage 08 does; ``--flat`` also trains it on the flat control
world. Prints F1, MCC, explained variance, L0, dead fraction, absorption and hierarchy recovery per arm (mean
over seeds), then ``RATIO tree_<arm>_ev_of_topk`` lines when a ``topk`` arm is present.
"""
import argparse
import json
import resource
import time

import yaml

from treesae import paths
from treesae import synthetic as S

METRICS = ("f1", "mcc", "explained_variance", "l0", "dead_fraction", "absorption", "hierarchy_recovery", "tree_edges",
           "tree_precision", "tree_precision_chance")


def parse_arm(text: str) -> tuple[str, str, dict]:
    name, spec = text.split("=", 1)
    arch, _, fields = spec.partition(":")
    out = {}
    for item in filter(None, _split_top(fields)):
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return name, arch, out


def _split_top(s: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "[{" and 1 or (ch in "]}" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", nargs="+", required=True, help="name=architecture:field=value,...")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--flat", action="store_true", help="also train every arm on the flat control world")
    ap.add_argument("--n-tokens", type=int, default=None, help="override the section's token budget")
    a = ap.parse_args()
    sp = yaml.safe_load(paths.root().joinpath("params.yaml").read_text())["synthetic"]
    worlds = {"trees": S.make_world(S.WorldConfig(**sp["world"]))}
    if a.flat:
        worlds["flat"] = S.make_world(S.WorldConfig(**{**sp["world"], "hierarchical": False}))
    data = {k: (S.train_data(w, sp["train_tokens"]), S.sample(w, sp["eval_tokens"], 0, split="eval")) for k, w in worlds.items()}
    rows = []
    for text in a.arm:
        name, arch, fields = parse_arm(text)
        extra = {**sp["extra"], arch: {**sp["extra"].get(arch, {}), **fields}}
        for wname, w in worlds.items():
            for seed in a.seeds:
                t = time.perf_counter()
                sae = S.train_ours(arch, w, sp["d_sae"], sp["k"], a.n_tokens or sp["n_tokens"], seed, data=data[wname][0],
                                   batch_size=sp["batch_size"], lr=sp["lr"], lr_end=sp["lr_end"], extra=extra)
                r = S.evaluate(sae, w, sp["eval_tokens"], 0, eval_data=data[wname][1])
                rows.append(dict(arm=name, world=wname, seed=seed, seconds=time.perf_counter() - t, **r))
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()
                                  if k in ("arm", "world", "seed", "seconds") + METRICS}), flush=True)
                rows[-1] = {m: float("nan") for m in METRICS} | rows[-1]
    print(f"\n{'arm':22s} {'world':6s} " + " ".join(f"{m[:10]:>10s}" for m in METRICS))
    means = {}
    for (name, wname) in dict.fromkeys((r["arm"], r["world"]) for r in rows):
        sel = [r for r in rows if r["arm"] == name and r["world"] == wname]
        means[name, wname] = {m: sum(r[m] for r in sel) / len(sel) for m in METRICS}
        print(f"{name:22s} {wname:6s} " + " ".join(f"{means[name, wname][m]:10.3f}" for m in METRICS))
    if ("topk", "trees") in means:
        for (name, wname), m in means.items():
            if wname == "trees" and name != "topk":
                print(f"RATIO tree_{name}_ev_of_topk {m['explained_variance'] / means['topk', 'trees']['explained_variance']:.4f}")
    print(f"PEAK_RSS_MB pilot_tree {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
