"""Benchmark of the feature browser at the paper's sizes (not collected by pytest).

    OMP_NUM_THREADS=1 .venv/bin/python tests/browser/bench_browser.py [--saes 2] [--d-sae 4608] [--real-model]

One 4,608-latent TopK SAE (random weights) on 410 held-out contexts x 128 tokens (52k tokens, like the
default profile's held-out split) of d_model 576: times ``feature_stats``, ``logit_effect`` (vocabulary
49,152, the SmolLM2 size), ``matches`` and ``write_site``, and reports the site's bytes per feature.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from treesae import browser
from treesae.saes import build


class _Unembed(torch.nn.Module):
    """Stands in for the model when --real-model is not given: W_U and ln_final.w of SmolLM2's sizes."""

    def __init__(self, d, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W_U = torch.randn(d, vocab, generator=g) / d ** 0.5
        self.ln_final = torch.nn.Module()
        self.ln_final.w = torch.ones(d)
        self.tokenizer = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--saes", type=int, default=2)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--contexts", type=int, default=410)
    ap.add_argument("--real-model", action="store_true", help="use treesae.model.load_model() (fp32 copy cached)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    d, T, vocab = 576, 128, 49_152
    g = torch.Generator().manual_seed(0)
    acts = (torch.randn(args.contexts, T, d, generator=g) * 4).half()
    tokens = torch.randint(0, vocab, (args.contexts, T), generator=g).numpy()
    if args.real_model:
        from treesae.model import load_model
        model = load_model()
    else:
        model = _Unembed(d, vocab)
    saes = {f"topk_{i}": build("topk", d_in=d, d_sae=args.d_sae, k=32, seed=i) for i in range(args.saes)}
    src = browser.Source(acts, tokens)
    out = {"n_tokens": args.contexts * T, "d_sae": args.d_sae}
    t = time.perf_counter()
    browser.feature_stats(saes["topk_0"], src)
    out["feature_stats_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    browser.logit_effect(model, saes["topk_0"].W_dec)
    out["logit_effect_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    browser.matches(saes)
    out["matches_s_per_pair"] = round((time.perf_counter() - t) / max(1, args.saes * (args.saes - 1) // 2), 2)
    meta = pd.DataFrame({"layer": 3, "corpus": "random", "architecture": "topk"}, index=list(saes))
    t = time.perf_counter()
    data = browser.extract(saes, meta, lambda n, r: src, model, tokenizer=lambda i: f"t{i}")
    out["extract_s_per_sae"] = round((time.perf_counter() - t) / args.saes, 2)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        site = browser.write_site(data, Path(tmp) / "site")
        out["write_site_s_per_sae"] = round((time.perf_counter() - t) / args.saes, 2)
        shards = sum(p.stat().st_size for p in (site / "data" / "saes").rglob("f*.js"))
        lists = sum(p.stat().st_size for p in (site / "data" / "saes").rglob("list.js"))
        out["shard_bytes_per_feature"] = round(shards / (args.saes * args.d_sae))
        out["list_bytes_per_feature"] = round(lists / (args.saes * args.d_sae))
        out["site_mb"] = round(sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) / 2**20, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
