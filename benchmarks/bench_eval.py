"""Stage-02 downstream evaluation: the naive way (clean, spliced and zero-ablated full forward passes
for every SAE) against ``treesae.metrics`` (clean and zero-ablated runs once per group, shared through
``downstream_reference``; spliced runs start at the hook's layer). Same process, alternating, best of
``--repeats``; prints the ratio and the largest difference in any CE / KL mean.

    .venv/bin/python benchmarks/bench_eval.py [--saes 8] [--layer 15] [--contexts 16] [--threads 2]
"""
import argparse
import resource
import time

import torch


def naive(model, sae, tokens, hook_name, batch_size=8):
    """Three full forwards per batch; position 0 kept clean and unscored (as treesae.metrics does)."""
    import torch.nn.functional as F
    from treesae.tensors import eval_mode

    def splice(act, hook):
        act = act.clone()
        act[:, 1:] = sae(act[:, 1:].reshape(-1, act.shape[-1])).reshape(act[:, 1:].shape)
        return act

    def zero(act, hook):
        act = act.clone()
        act[:, 1:] = 0
        return act

    s = dict(ce_clean=0.0, ce_sae=0.0, ce_zero=0.0, kl_sae=0.0, kl_zero=0.0)
    n = 0
    with torch.no_grad(), eval_mode(sae), eval_mode(model):
        for i in range(0, len(tokens), batch_size):
            tok = tokens[i:i + batch_size]
            target = tok[:, 2:]
            clean = F.log_softmax(model(tok)[:, 1:-1].float(), -1)
            s["ce_clean"] -= float(clean.gather(-1, target[..., None]).sum())
            for name, fn in (("sae", splice), ("zero", zero)):
                lp = F.log_softmax(model.run_with_hooks(tok, fwd_hooks=[(hook_name, fn)])[:, 1:-1].float(), -1)
                s[f"ce_{name}"] -= float(lp.gather(-1, target[..., None]).sum())
                s[f"kl_{name}"] += float(F.kl_div(lp, clean, log_target=True, reduction="sum"))
            n += target.numel()
    return {k: v / n for k, v in s.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saes", type=int, default=8)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import numpy as np
    from treesae import corpora, model
    from treesae.metrics import downstream_metrics, downstream_reference
    from treesae.saes import build
    model.pin_threads(a.threads)
    model.set_offline()
    lm = model.load_model()
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        cdir = corpora.prepare("brown", lm.tokenizer, 128, 0.1, a.contexts, 0, out_dir=Path(tmp) / "corpus")
        tokens = torch.from_numpy(np.load(cdir / "tokens.npy")).long()[: a.contexts]
    hook = f"blocks.{a.layer}.hook_resid_pre"
    saes = [build("topk", d_in=lm.cfg.d_model, d_sae=4608, k=32, seed=s) for s in range(a.saes)]
    best_naive = best_ours = float("inf")
    for _ in range(a.repeats):
        t = time.perf_counter()
        ref_vals = [naive(lm, s, tokens, hook) for s in saes]
        best_naive = min(best_naive, time.perf_counter() - t)
        t = time.perf_counter()
        ref = downstream_reference(lm, tokens, hook, 8, True)
        ours = [downstream_metrics(lm, s, tokens, hook, 8, True, reference=ref) for s in saes]
        best_ours = min(best_ours, time.perf_counter() - t)
    diff = max(abs(r[k] - o[k]) for r, o in zip(ref_vals, ours) for k in r)
    print(f"{a.saes} SAEs, {a.contexts} contexts, layer {a.layer}: naive {best_naive:.1f} s, treesae {best_ours:.1f} s, "
          f"ratio {best_naive / best_ours:.2f}x; largest |difference| in a CE/KL mean {diff:.1e} nats")
    print(f"RATIO eval_vs_naive {best_naive / best_ours:.2f}")
    print(f"PEAK_RSS_MB eval {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
