"""Stage saebench: SAEBench's core eval (``treesae.saebench``) on one SAE per architecture (``saebench.architectures``,
null: every one trained) at the base run's k (``runs.hierarchy_runs``), on the held-out contexts stage 02 scores CE and KL on (train.eval's downstream draw),
beside stage 02's own numbers for the same SAEs. Writes ``data/analysis/saebench/scores.csv`` (one row per SAE:
SAEBench's metrics, and ``ours.*``) and ``metrics.json`` (per architecture, and the largest gaps between the
two where they measure the same thing on the same tokens: CE with and without the SAE spliced in, KL with it).
"""
import time

import numpy as np
import pandas as pd
import torch

from .. import config, paths, saebench
from ..cache import ActivationCache, hook_name
from ..corpora import safe_name
from ..model import load_model, runtime
from ..runs import hierarchy_runs, read_metrics
from ..registry import names
from ..saes import load_sae
from .common import write_metrics, write_table

OURS = {"ce_sae": "ce_sae", "ce_clean": "ce_clean", "kl_div_with_sae": "kl_sae", "l0": "l0", "ce_loss_score": "ce_score",
        "kl_div_score": "kl_score"}  # SAEBench's name -> stage 02's column for the same quantity (the scores differ)
SAME = ("ce_sae", "ce_clean", "kl_div_with_sae")  # defined alike on the same tokens: checked within ``TOLERANCE``
TOLERANCE = 0.01  # relative; L0 is not compared: stage 02 measures it on train.eval.heldout_tokens, not these contexts


def main(model: dict, saebench_params: dict, train: dict) -> dict:
    mp, ev = runtime(model), train["eval"]
    if not ev["downstream_contexts"]:
        raise ValueError("params.yaml: train.eval.downstream_contexts is 0; SAEBench's core eval needs contexts")
    m = read_metrics()
    want = saebench_params.get("architectures") or list(dict.fromkeys(m.architecture))
    unknown = sorted(set(want) - set(m.architecture))
    if unknown:
        raise ValueError(f"params.yaml: saebench.architectures names {unknown}, which stage 02 did not train "
                         f"(trained: {sorted(set(m.architecture))})")
    runs = hierarchy_runs(m, want)
    lm, rows, stores, t0 = load_model(mp.name, mp.device), [], {}, time.perf_counter()
    tree_like = set(names(hierarchical=True))
    for i, (name, r) in enumerate(runs.iterrows(), 1):
        key = (r.corpus, int(r.layer))
        if key not in stores:
            cache = ActivationCache.open(paths.data("activations", safe_name(r.corpus)))
            ctx = cache.sample_contexts("heldout", ev["downstream_contexts"], ev["seed"])
            toks = torch.from_numpy(np.asarray(cache.tokens[ctx])).long()
            excluded = saebench.excluded_positions(lm, toks, hook_name(key[1]), train["sink_ratio"])
            stores[key] = saebench.TokenStore(toks, excluded, min(ev["downstream_batch_size"], len(toks)))
        got = saebench.evaluate(lm, load_sae(paths.data("saes", name)), stores[key], hook_name(key[1]),
                                hierarchical=r.architecture in tree_like)
        rows.append(dict(name=name, architecture=r.architecture, **got,
                         **{f"ours.{k}": float(r[c]) for k, c in OURS.items() if c in r}))
        print(f"[{i}/{len(runs)}] {name}: SAEBench CE with the SAE {got['ce_sae']:.4f} (ours {r.ce_sae:.4f}), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    scores = pd.DataFrame(rows)
    out = paths.data("analysis", "saebench")
    write_table(scores, out / "scores.csv")
    return write_metrics(out / "metrics.json", summarize(scores, ev["downstream_contexts"]))


def summarize(scores: pd.DataFrame, contexts: int) -> dict:
    """``<architecture>.<metric>`` (SAEBench's, and ``<architecture>.ours.<metric>``), ``<metric>.max_rel_diff``
    for the metrics defined alike, ``agree`` (every one within ``TOLERANCE``), the runs and the contexts."""
    out = {"runs": list(scores.name), "architectures": list(scores.architecture), "contexts": int(contexts),
           "tolerance": TOLERANCE}
    for _, r in scores.iterrows():
        out.update({f"{r.architecture}.{k}": r[k] for k in r.index if k not in ("name", "architecture")})
    for k in SAME:
        out[f"{k}.max_rel_diff"] = float(((scores[k] - scores[f"ours.{k}"]) / scores[f"ours.{k}"]).abs().max())
    out["agree"] = all(out[f"{k}.max_rel_diff"] <= TOLERANCE for k in SAME)
    return out


if __name__ == "__main__":
    got = main(config.section("model"), config.section("saebench"), config.section("train"))
    print(f"SAEBench agrees with stage 02 within {TOLERANCE} on {', '.join(SAME)}: {got['agree']}")
