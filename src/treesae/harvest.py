"""Run the model once over tokenized contexts and cache residual-stream activations (stage 01 calls it).

Several layers come from one forward pass that stops at the deepest one (``stop_at_layer``): the
residual it returns is ``blocks.<deepest>.hook_resid_pre``. Cheap per-position statistics of every
layer (and the LM loss by position) come from a full forward pass over the first
``summary_contexts`` contexts.
"""
import hashlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .cache import ActivationCache, CacheError, hook_name
from .model import forward_layers
from .io import sha256_file, write_bytes_atomic, write_json


def _fingerprint(model, tokens: np.ndarray, layers, dtype, shard_contexts) -> str:
    h = hashlib.sha256(json.dumps([model.cfg.model_name, model.cfg.n_layers, model.cfg.d_model, sorted(layers),
                                   dtype, shard_contexts]).encode())
    h.update(np.ascontiguousarray(tokens).tobytes())
    return h.hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _damaged(cache_dir: Path, shards) -> set[int]:
    """Indices of shards with a layer file missing or not matching its recorded sha256."""
    return {s["index"] for s in shards for L, digest in s["sha256"].items()
            if not (f := cache_dir / "shards" / f"layer{L}_{s['index']:05d}.npy").exists() or sha256_file(f) != digest}


def partial_dir(out_dir: Path) -> Path:
    """Where an unfinished cache lives: outside the stage's output directory, which DVC clears."""
    return out_dir.parent.with_name(".partial") / f"{out_dir.parent.name}-{out_dir.name}"


def harvest(model, corpus_dir, out_dir, layers, dtype="float16", batch_size=32, shard_contexts=512,
            summary_contexts=64, progress=True, train=True) -> ActivationCache:
    """Write the activation cache of ``corpus_dir``'s contexts to ``out_dir``; resume a partial one.
    ``train=False``: the held-out contexts only (stage 02 then streams the train split, ``treesae.stream``)."""
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    layers = sorted(set(int(L) for L in layers))
    if dtype not in ("float16", "float32"):
        raise ValueError(f"harvest dtype must be 'float16' or 'float32', not {dtype!r}")
    corpus = {name: np.load(corpus_dir / f"{name}.npy") for name in ("tokens", "doc_ids", "split")}
    n_train_tokens = int((corpus["split"] == 0).sum() * corpus["tokens"].shape[1])
    if not train:
        corpus = {name: a[corpus["split"] == 1] for name, a in corpus.items()}
    tokens = corpus["tokens"]
    fp = _fingerprint(model, tokens, layers, dtype, shard_contexts)
    part = partial_dir(out_dir)
    prog_file = part / "progress.json"
    meta_file = out_dir / "meta.json"
    if meta_file.exists() and json.loads(meta_file.read_text()).get("fingerprint") == fp:
        shards = json.loads(meta_file.read_text())["shards"]
        if not _damaged(out_dir, shards):
            return ActivationCache.open(out_dir)
        shutil.rmtree(part, ignore_errors=True)  # a finished cache with damaged shards: resume it as a partial one
        part.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out_dir, part)
        os.remove(part / "meta.json")
        write_json(prog_file, {"fingerprint": fp, "shards": shards})
    prog = json.loads(prog_file.read_text()) if prog_file.exists() else {}
    if prog.get("fingerprint") != fp:
        shutil.rmtree(part, ignore_errors=True)
        prog = {"fingerprint": fp, "shards": []}
    (part / "shards").mkdir(parents=True, exist_ok=True)
    bad = _damaged(part, prog["shards"])  # a shard recorded as done must still be intact
    if bad:
        print(f"harvest {corpus_dir.name}: shard(s) {sorted(bad)} differ from their recorded sha256; recomputing only those")
        prog["shards"] = [s for s in prog["shards"] if s["index"] not in bad]
    done = {s["index"] for s in prog["shards"]}

    n_ctx, T = tokens.shape
    starts = list(range(0, n_ctx, shard_contexts))
    todo = sum(min(shard_contexts, n_ctx - s) for i, s in enumerate(starts) if i not in done) * T
    bar = tqdm(total=n_ctx * T, initial=n_ctx * T - todo, unit="tok", unit_scale=True, disable=not progress,
               mininterval=10, desc=f"harvest {corpus_dir.name}")
    t0 = time.perf_counter()
    for i, s in enumerate(starts):
        if i in done:
            continue
        chunk = torch.from_numpy(tokens[s:s + shard_contexts]).long()
        acts = {L: [] for L in layers}
        for b in range(0, len(chunk), batch_size):
            for L, a in forward_layers(model, chunk[b:b + batch_size], layers).items():
                acts[L].append(a.to(getattr(torch, dtype)))
            bar.update(len(chunk[b:b + batch_size]) * T)
        entry = {"index": i, "n_contexts": len(chunk), "sha256": {}}
        for L in layers:
            arr = torch.cat(acts[L]).numpy()
            if not np.isfinite(arr).all():
                raise CacheError(f"Layer {L}, contexts {s}..{s + len(chunk) - 1}: the model produced NaN/inf activations"
                                 f"{' (float16 overflow: set harvest.dtype: float32)' if dtype == 'float16' else ''}. Nothing was written for this shard.")
            data = _npy_bytes(arr)
            write_bytes_atomic(part / "shards" / f"layer{L}_{i:05d}.npy", data)
            entry["sha256"][str(L)] = hashlib.sha256(data).hexdigest()
        prog["shards"].append(entry)
        write_json(prog_file, prog)
    bar.close()
    elapsed = time.perf_counter() - t0

    for name, a in corpus.items():
        np.save(part / f"{name}.npy", a)
    if summary_contexts:
        position_summary(model, tokens[:summary_contexts], batch_size).to_csv(part / "summary.csv", index=False, float_format="%.6g")
    meta = dict(model=model.cfg.model_name, n_layers=model.cfg.n_layers, d_model=model.cfg.d_model, layers=layers,
                hook="hook_resid_pre", context_len=T, n_contexts=n_ctx, n_tokens=n_ctx * T, dtype=dtype,
                positions="each context starts at position 0; no BOS is prepended",
                shard_contexts=shard_contexts, shards=sorted(prog["shards"], key=lambda s: s["index"]),
                fingerprint=fp, corpus=json.loads((corpus_dir / "docs.json").read_text())["corpus"],
                n_train_tokens=n_train_tokens, summary_contexts=min(summary_contexts, n_ctx),
                **({} if train else {"train_cached": False}))  # absent: every context cached
    write_json(part / "meta.json", meta)
    os.remove(prog_file)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, out_dir)
    if progress and todo:
        print(f"harvested {todo:,} tokens x {len(layers)} layers in {elapsed:.0f} s ({todo / elapsed:,.0f} tok/s) -> {out_dir}")
    return ActivationCache.open(out_dir)


@torch.no_grad()
def position_summary(model, tokens: np.ndarray, batch_size=32) -> pd.DataFrame:
    """Per layer (resid_pre of every block, then the final residual as layer n_layers) and position:
    residual norm mean / median, mean max |x|; plus the LM next-token loss by position (layer -1)."""
    L = model.cfg.n_layers
    names = [hook_name(l) for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    norms, absmax, losses = [], [], []
    for b in range(0, len(tokens), batch_size):
        toks = torch.from_numpy(tokens[b:b + batch_size]).long()
        logits, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
        stack = torch.stack([cache[n] for n in names])  # [L+1, B, T, d]
        norms.append(stack.norm(dim=-1))
        absmax.append(stack.abs().amax(dim=-1))
        losses.append(-torch.log_softmax(logits[:, :-1], -1).gather(-1, toks[:, 1:, None])[..., 0])
    norms, absmax, losses = torch.cat(norms, 1), torch.cat(absmax, 1), torch.cat(losses, 0)
    T = norms.shape[-1]
    rows = [dict(layer=l, position=p, norm_mean=norms[l, :, p].mean().item(), norm_median=norms[l, :, p].median().item(),
                 absmax_mean=absmax[l, :, p].mean().item()) for l in range(L + 1) for p in range(T)]
    rows += [dict(layer=-1, position=p, lm_loss=losses[:, p].mean().item()) for p in range(T - 1)]
    return pd.DataFrame(rows)
