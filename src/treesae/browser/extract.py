"""Everything the feature browser shows, computed from SAEs, held-out activations and the model.

``extract`` encodes each SAE's held-out activations once, in batches of whole contexts, and keeps
per latent (feature):

* firing frequency: fraction of held-out tokens with a code > 0; mean activation over those tokens
  (the conditional mean); the maximum;
* the ``n_top_contexts`` contexts whose per-context maximum is largest (a running ``torch.topk`` merge
  over batches, one entry per context), with the feature's activations on a window of tokens around
  that maximum;
* a histogram of the non-zero activations on fixed log-spaced bins (``HIST_EDGES``);
* the mean activation at every token position (zeros included; position 0 always included), from
  which the list shows the fraction of activation mass at position 0 and the peak position;
* the direct logit effect of the decoder row (``logit_effect``) and, via ``matches``, the most
  similar decoder rows in every other SAE of the same ``d_in``;
* for a tree SAE (``parent_of``), per latent with a parent: P(parent fires | latent fires) on the codes with the
  gate lifted (``encode_ungated``; with the gate it is 1 by construction) and the cosine of the two decoder rows
  (``parent_stats``).

Position 0 (the attention sink) is excluded from the frequency, mean, maximum, histogram and the
ranking of top contexts when ``drop_first`` (the default, as for the reconstruction metrics); the
position profile always shows it, separately.

The result is a plain dict of numpy arrays and JSON-able values; ``treesae.browser.site.write_site``
turns it into the static site.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tqdm import tqdm

from ..saes.base import weights_digest
from ..tensors import dense, eval_mode

FORMAT_VERSION = 1
HIST_LO, HIST_HI, HIST_PER_DECADE = -4, 4, 8
#: log-spaced histogram edges shared by every feature: 10**-4 .. 10**4, 8 bins per decade; values outside
#: are counted in the first / last bin.
HIST_EDGES = np.logspace(HIST_LO, HIST_HI, (HIST_HI - HIST_LO) * HIST_PER_DECADE + 1)
N_BINS = len(HIST_EDGES) - 1

LOGIT_CHOICE = (
    "Direct logit effect per unit activation: W_dec[f] (centred first for LayerNorm models), multiplied "
    "element-wise by the final norm's scale (ln_final.w; 1 where the model has none or it is folded into "
    "W_U), then @ W_U. The final norm's division by the residual's RMS is a positive per-token scalar and "
    "is left out: it rescales every token's effect alike and does not change which tokens are promoted or "
    "suppressed. Biases (b_U, ln_final.b) are independent of the feature and are left out.")


# ----------------------------------------------------------------------------------- sources
class Source:
    """Held-out contexts of one (corpus, layer): activations [n_ctx, T, d] (any array-like indexable by a
    slice of contexts), tokens [n_ctx, T] int, and the contexts' ids (e.g. their index in the cache)."""

    def __init__(self, acts, tokens, ctx_ids=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [n_contexts, context_len], got shape {tokens.shape}")
        shape = tuple(acts.shape)
        if len(shape) == 2 and shape[0] == tokens.size:  # flat tokens: reshape to contexts
            acts = acts.reshape(tokens.shape + (shape[1],))
            shape = tuple(acts.shape)
        if len(shape) != 3 or shape[:2] != tokens.shape:
            raise ValueError(f"activations of shape {shape} do not match tokens {tokens.shape} "
                             "(expected [n_contexts, context_len, d_in])")
        self.acts, self.tokens = acts, tokens.astype(np.int64)
        self.ctx_ids = np.arange(len(tokens)) if ctx_ids is None else np.asarray(ctx_ids, dtype=np.int64)
        self.n_ctx, self.T, self.d = shape

    def chunk(self, i: int, j: int) -> torch.Tensor:
        x = self.acts[i:j]
        x = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        return x.float()


def _resolve_source(name, row, caches, max_contexts):
    """A ``Source`` for SAE ``name`` and a key under which SAEs share it."""
    if callable(caches) and not isinstance(caches, Mapping):
        def load():
            out = caches(name, row)
            return _limit(out if isinstance(out, Source) else Source(*out), max_contexts)
        return ("callable", name), load
    corpus, layer = _corpus(row), row.get("layer")
    if layer is None or (isinstance(layer, float) and math.isnan(layer)):
        raise ValueError(f"SAE {name!r}: meta has no 'layer' column value; it is needed to find its activations")
    layer = int(layer)
    entry = None
    for key in ((corpus, layer), corpus):
        if key in caches:
            entry = caches[key]
            break
    if entry is None:
        raise KeyError(f"SAE {name!r}: no activation cache for corpus {corpus!r}, layer {layer} "
                       f"(caches has keys {sorted(map(str, caches))})")
    if isinstance(entry, tuple):
        entry, layer = entry[0], int(entry[1])
    if isinstance(entry, Source):
        return (id(entry), layer), _limit(entry, max_contexts)
    cache = entry  # an ActivationCache
    rows = cache.contexts("heldout")
    if len(rows) == 0:
        raise ValueError(f"SAE {name!r}: cache {getattr(cache, 'path', cache)} has no held-out contexts")
    rows = rows[:max_contexts] if max_contexts is not None else rows
    key = (str(getattr(cache, "path", id(cache))), layer, len(rows))
    return key, (lambda: Source(_Rows(cache.layer(layer), rows), np.asarray(cache.tokens[rows]), rows))


def _corpus(row: Mapping):
    """The SAE's corpus: meta column ``corpus`` (None when missing or NaN)."""
    c = row.get("corpus")
    return None if isinstance(c, float) and math.isnan(c) else c


class _Rows:
    """Contexts ``rows`` of a (memory-mapped, sharded) layer, read a slice at a time (nothing loaded upfront)."""

    def __init__(self, arr, rows):
        self.arr, self.rows = arr, np.asarray(rows)
        self.shape = (len(self.rows),) + tuple(arr.shape[1:])

    def __getitem__(self, sl):
        out = np.asarray(self.arr[self.rows[sl]])
        if not np.isfinite(out).all():
            raise ValueError("held-out activations contain NaN/inf; the cache is corrupt (rerun the harvest)")
        return out


def _limit(src: Source, max_contexts):
    if max_contexts is None or src.n_ctx <= max_contexts:
        return src
    return Source(src.acts[:max_contexts], src.tokens[:max_contexts], src.ctx_ids[:max_contexts])


# ------------------------------------------------------------------------------- statistics
@torch.no_grad()
def feature_stats(sae, src: Source, n_top: int = 12, batch_size: int = 4096, window: tuple[int, int] = (24, 8),
                  drop_first: bool = True, max_elements: int = 1 << 25) -> dict[str, np.ndarray]:
    """Per-feature statistics of ``sae`` over the contexts of ``src`` (see the module docstring).

    batch_size: tokens per batch (whole contexts; at least one), further capped so a batch's dense codes
    stay under ``max_elements`` floats. window: tokens shown before / after the top activation.
    """
    W = sae.W_dec
    F, dev = W.shape[0], W.device
    T, start = src.T, (1 if drop_first and src.T > 1 else 0)
    Wn = min(T, window[0] + window[1] + 1)
    C = max(1, min(batch_size // T, max_elements // (T * F)))
    n_top_eff = max(1, n_top)
    count = torch.zeros(F, dtype=torch.float64, device=dev)
    total = torch.zeros(F, dtype=torch.float64, device=dev)
    pos_sum = torch.zeros(T, F, dtype=torch.float64, device=dev)
    hist = torch.zeros(F * N_BINS, dtype=torch.int64, device=dev)
    vmax = torch.zeros(F, device=dev)
    run_val = torch.full((F, n_top_eff), -math.inf, device=dev)       # running top-k, one row per feature
    run_ctx = torch.full((F, n_top_eff), -1, dtype=torch.long, device=dev)
    run_pos = torch.zeros((F, n_top_eff), dtype=torch.long, device=dev)
    run_win = torch.zeros((F, n_top_eff, Wn), device=dev)
    feats = torch.arange(F, device=dev)
    offs = torch.arange(Wn, device=dev)
    log_lo, per_dec = float(HIST_LO), float(HIST_PER_DECADE)
    with eval_mode(sae):
        for c0 in range(0, src.n_ctx, C):
            x = src.chunk(c0, min(c0 + C, src.n_ctx)).to(dev, W.dtype)
            c = x.shape[0]
            z = dense(sae.encode(x.reshape(c * T, -1))).float()               # [c*T, F]
            # one pass over the dense codes; everything else works on the (token, feature, value) triplets
            tok, f = (z > 0).nonzero(as_tuple=True)
            v = z[tok, f]
            p = tok % T
            pos_sum.view(-1).index_add_(0, p * F + f, v.double())
            keep = p >= start
            tok, f, v, p = tok[keep], f[keep], v[keep], p[keep]
            count += torch.bincount(f, minlength=F).double()
            total.index_add_(0, f, v.double())
            b = ((v.log10() - log_lo) * per_dec).floor().clamp(0, N_BINS - 1).long()
            hist += torch.bincount(f * N_BINS + b, minlength=F * N_BINS)
            # per (feature, context) maximum and its first position, then merge into the running top-k
            cell = f * c + tok // T                                            # [F, c] flattened
            cmax = torch.zeros(F * c, device=dev).scatter_reduce_(0, cell, v, "amax")
            vmax = torch.maximum(vmax, cmax.view(F, c).amax(1))
            at_max = v == cmax[cell]
            cpos = torch.full((F * c,), T - 1, dtype=torch.long, device=dev).scatter_reduce_(
                0, cell[at_max], p[at_max], "amin").view(F, c)
            top_v, idx = torch.cat([run_val, cmax.view(F, c)], dim=1).topk(n_top_eff, dim=1)   # [F, n]
            new = idx >= n_top_eff
            ci = (idx - n_top_eff).clamp(0, c - 1)
            pos_new = cpos.gather(1, ci)
            w0 = (pos_new - window[0]).clamp(0, T - Wn)
            win_new = z.view(c, T, F)[ci[..., None], w0[..., None] + offs, feats[:, None, None]]   # [F, n, Wn]
            oi = idx.clamp(max=n_top_eff - 1)
            run_win = torch.where(new[..., None], win_new, run_win.gather(1, oi[..., None].expand(-1, -1, Wn)))
            run_ctx = torch.where(new, ci + c0, run_ctx.gather(1, oi))
            run_pos = torch.where(new, pos_new, run_pos.gather(1, oi))
            run_val = top_v
    n_tok = src.n_ctx * (T - start)
    count_np = count.cpu().numpy()
    mean_act = np.divide(total.cpu().numpy(), count_np, out=np.zeros(F), where=count_np > 0)
    pos_mean = (pos_sum / max(src.n_ctx, 1)).T.contiguous().cpu().numpy()  # [F, T]
    mass = pos_mean.sum(1)
    pos0_frac = np.divide(pos_mean[:, 0], mass, out=np.zeros(F), where=mass > 0)
    prof = pos_mean[:, start:]
    peak_pos = prof.argmax(1) + start
    prof_mean = prof.mean(1)
    peakiness = np.divide(prof.max(1), prof_mean, out=np.zeros(F), where=prof_mean > 0)
    top_val = run_val.cpu().numpy()                                     # [F, n]
    top_ctx = run_ctx.cpu().numpy()
    top_pos = run_pos.cpu().numpy()
    top_win = run_win.cpu().numpy()                                     # [F, n, Wn]
    top_start = np.clip(top_pos - window[0], 0, T - Wn)
    valid = top_val > 0
    top_ctx[~valid] = -1
    top_val[~valid] = 0
    top_win[~valid] = 0
    if n_top <= 0:
        valid[:] = False
    top_start[~valid] = 0
    top_pos[~valid] = 0
    max_act = vmax.cpu().numpy().astype(np.float64)
    return dict(freq=count_np / max(n_tok, 1), mean_act=mean_act, max_act=max_act, n_fired=count_np.astype(np.int64),
                pos_mean=pos_mean, pos0_frac=pos0_frac, peak_pos=peak_pos.astype(np.int64), peakiness=peakiness,
                hist=hist.view(F, N_BINS).cpu().numpy(), top_val=top_val[:, :n_top], top_ctx=top_ctx[:, :n_top],
                top_pos=top_pos[:, :n_top], top_start=top_start[:, :n_top], top_win=top_win[:, :n_top],
                n_tokens=n_tok, n_contexts=src.n_ctx, context_len=T, first_counted=start)


@torch.no_grad()
def logit_effect(model, W_dec: torch.Tensor, top: int = 10, block: int = 1024) -> dict[str, np.ndarray] | None:
    """Top promoted / suppressed tokens of each decoder row (see ``LOGIT_CHOICE``): ids and values [F, top].

    None when the model has no unembedding or its width differs from the decoder's."""
    W_U = getattr(model, "W_U", None)
    if W_U is None or W_U.shape[0] != W_dec.shape[1] or top <= 0:
        return None
    W_U = W_U.detach().float()
    D = W_dec.detach().float().to(W_U.device)
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "normalization_type", None) in ("LN", "LNPre"):
        D = D - D.mean(1, keepdim=True)
    scale = getattr(getattr(model, "ln_final", None), "w", None)
    if scale is not None:
        D = D * scale.detach().float().to(D.device)
    top = min(top, W_U.shape[1])
    out = {k: [] for k in ("pos_ids", "pos_vals", "neg_ids", "neg_vals")}
    for i in range(0, len(D), block):
        L = D[i:i + block] @ W_U
        p, n = L.topk(top, dim=1), L.topk(top, dim=1, largest=False)
        out["pos_ids"].append(p.indices), out["pos_vals"].append(p.values)
        out["neg_ids"].append(n.indices), out["neg_vals"].append(n.values)
    return {k: torch.cat(v).cpu().numpy() for k, v in out.items()}


@torch.no_grad()
def parent_stats(sae, src: Source, batch_size: int = 4096, drop_first: bool = True) -> dict[str, np.ndarray]:
    """Per latent f with a parent p = ``sae.parent_of[f]``: ``parent_given`` = P(p fires | f fires) over the
    held-out tokens of ``src`` on the codes with the gate lifted (``sae.encode_ungated`` when the SAE has it), and
    ``parent_cos`` = cos(W_dec[f], W_dec[p]); NaN for latents without a parent or that never fire."""
    parent = sae.parent_of.detach().cpu().long()
    F, T = len(parent), src.T
    start = 1 if drop_first and T > 1 else 0
    has = parent >= 0
    child, par = has.nonzero().squeeze(1), parent[has]
    fired = torch.zeros(F, dtype=torch.float64)
    both = torch.zeros(len(child), dtype=torch.float64)
    encode = getattr(sae, "encode_ungated", sae.encode)
    C = max(1, batch_size // T)
    with eval_mode(sae):
        for c0 in range(0, src.n_ctx, C):
            x = src.chunk(c0, min(c0 + C, src.n_ctx))[:, start:].to(sae.W_dec.device, sae.W_dec.dtype)
            on = dense(encode(x.reshape(-1, src.d))).detach().cpu() > 0
            fired += on.sum(0)
            both += (on[:, child] & on[:, par]).sum(0)
    given = np.full(F, np.nan)
    given[child.numpy()] = np.divide(both.numpy(), fired[child].numpy(), out=np.full(len(child), np.nan),
                                     where=fired[child].numpy() > 0)
    W = torch.nn.functional.normalize(sae.W_dec.detach().float().cpu(), dim=1)
    cos = np.full(F, np.nan)
    cos[child.numpy()] = (W[child] * W[par]).sum(1).numpy()
    return dict(parent_given=given, parent_cos=cos)


# ---------------------------------------------------------------------------------- matches
@torch.no_grad()
def matches(saes: Mapping[str, Any], top: int = 3, block: int = 1024,
            group: Mapping[str, Any] | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Best decoder-cosine matches of every feature in every other SAE with the same ``d_in``.

    Returns ``{a: {b: {"idx": int [F_a, top], "cos": float [F_a, top]}}}`` (best first). Each unordered
    pair's cosine matrix is computed once, in row blocks, and both directions are read from it (a running
    top-k over blocks for b -> a). group: optional name -> key; only SAEs with equal keys are compared.
    """
    names = list(saes)
    U = {}
    for n in names:
        W = saes[n].W_dec.detach().float().cpu()
        U[n] = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out: dict[str, dict] = {n: {} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if U[a].shape[1] != U[b].shape[1] or (group is not None and group.get(a) != group.get(b)):
                continue
            A, B = U[a], U[b]
            ka, kb = min(top, len(B)), min(top, len(A))
            a_idx, a_cos = [], []
            b_cos = torch.full((len(B), kb), -math.inf)
            b_idx = torch.zeros((len(B), kb), dtype=torch.long)
            for r in range(0, len(A), block):
                S = A[r:r + block] @ B.T                                   # [block, n_b]
                t = S.topk(ka, dim=1)
                a_idx.append(t.indices), a_cos.append(t.values)
                u = S.T.contiguous().topk(min(kb, len(S)), dim=1)          # b -> a within this block
                v, j = torch.cat([b_cos, u.values], 1).topk(kb, dim=1)
                b_idx = torch.cat([b_idx, u.indices + r], 1).gather(1, j)
                b_cos = v
            out[a][b] = {"idx": torch.cat(a_idx).numpy(), "cos": torch.cat(a_cos).numpy()}
            out[b][a] = {"idx": b_idx.numpy(), "cos": b_cos.numpy()}
    return out


# ----------------------------------------------------------------------------------- extract
def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _token_strings(tokenizer, ids) -> dict[int, str]:
    ids = sorted(int(i) for i in ids if i >= 0)
    if tokenizer is None:
        return {i: f"<{i}>" for i in ids}
    if callable(tokenizer) and not hasattr(tokenizer, "decode"):
        return {i: str(tokenizer(i)) for i in ids}
    return {i: tokenizer.decode([i]) for i in ids}


def _stats_key(sae, tkey, source_key, salt, model, *settings) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes() + weights_digest(sae))
    h.update(repr((tkey, source_key, salt, getattr(getattr(model, "cfg", None), "model_name", None), settings)).encode())
    return h.hexdigest()


def extract(saes: Mapping[str, Any], meta: pd.DataFrame, caches, model=None, *, n_top_contexts: int = 12,
            max_contexts: int | None = None, batch_size: int = 4096, window: tuple[int, int] = (24, 8),
            drop_first: bool = True, logit_top: int = 10, match_top: int = 3, match_group: str | None = None,
            matched: dict | None = None, tokenizer=None, progress: bool = False, store=None,
            salt: str = "") -> dict[str, Any]:
    """Data for the browser of every SAE in ``saes`` (name -> SAE with ``encode``, ``W_dec``, optional
    ``parent_of`` / ``levels``).

    meta: one row per SAE (index = name; columns incl. layer, corpus, architecture and
    metrics; every column is shown on the index page). caches: ``{(corpus, layer): ActivationCache | (cache, layer) |
    Source}`` (also ``{corpus: cache}``, the layer then from meta), held-out contexts are used; or a
    callable ``(name, meta_row) -> (acts [n_ctx, T, d_in], tokens [n_ctx, T])`` giving held-out data.
    model: HookedTransformer (``tokenizer``, ``W_U``, ``ln_final``) for token strings and logit effects;
    tokenizer overrides ``model.tokenizer`` (anything with ``decode([id])``, or a callable id -> str).
    max_contexts: held-out contexts used per SAE (None: all). batch_size: tokens per encode batch.
    match_top: decoder-cosine matches kept per other SAE (0: none); ``match_group`` a meta column that
    restricts matching to SAEs sharing its value; ``matched`` a precomputed ``matches(...)`` result.
    store: None or an ``io.ArrayStore`` keeping each SAE's statistics and logit effects as soon as they are
    computed (keyed by its weights, the held-out tokens, the settings, this module's code and ``salt``, which
    should identify the activations, e.g. the caches' fingerprints), so an interrupted run resumes.
    """
    names = list(saes)
    missing = [n for n in names if n not in meta.index]
    if missing:
        raise KeyError(f"SAEs {missing} have no row in meta (index = SAE names: {list(meta.index)[:8]}...)")
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    resolved = {n: _resolve_source(n, meta.loc[n].to_dict(), caches, max_contexts) for n in names}
    groups: dict[Any, list[str]] = {}  # SAEs sharing a source together, groups in order of first appearance
    for n in names:
        groups.setdefault(resolved[n][0], []).append(n)
    order = [n for g in groups.values() for n in g]
    cur_key, cur_src = None, None
    out_saes: dict[str, Any] = {}
    used_tokens: set[int] = set()
    sources: list[dict[str, Any]] = []
    source_of: dict[Any, int] = {}
    it = order
    if progress:
        it = tqdm(order, desc="browser", mininterval=10)
    for n in it:
        key, src = resolved[n]
        if key != cur_key:
            cur_key, cur_src = key, (src() if callable(src) and not isinstance(src, Source) else src)
        # SAEs whose held-out contexts have the same tokens (e.g. two layers of one corpus) share them
        tkey = (cur_src.tokens.shape, hashlib.sha1(cur_src.tokens.tobytes()).hexdigest(),
                hashlib.sha1(cur_src.ctx_ids.tobytes()).hexdigest())
        if tkey not in source_of:
            source_of[tkey] = len(sources)
            sources.append({"tokens": cur_src.tokens, "ctx_ids": cur_src.ctx_ids,
                            "corpus": _jsonable(_corpus(meta.loc[n]))})
            used_tokens.update(np.unique(cur_src.tokens).tolist())
        sae = saes[n]
        skey = _stats_key(sae, tkey, key, salt, model, n_top_contexts, batch_size, window, drop_first, logit_top) \
            if store is not None else None
        kept = store.get(skey) if store is not None else None
        if kept is None:
            stats = feature_stats(sae, cur_src, n_top=n_top_contexts, batch_size=batch_size, window=window,
                                  drop_first=drop_first)
            if getattr(sae, "parent_of", None) is not None:
                stats |= parent_stats(sae, cur_src, batch_size=batch_size, drop_first=drop_first)
            logits = logit_effect(model, sae.W_dec, top=logit_top) if model is not None else None
            if store is not None:
                store[skey] = {**{f"s.{k}": v for k, v in stats.items()}, **{f"l.{k}": v for k, v in (logits or {}).items()}}
        else:
            stats = {k[2:]: v for k, v in kept.items() if k.startswith("s.")}
            logits = {k[2:]: v for k, v in kept.items() if k.startswith("l.")} or None
        if logits is not None:
            used_tokens.update(np.unique(logits["pos_ids"]).tolist())
            used_tokens.update(np.unique(logits["neg_ids"]).tolist())
        parent = getattr(sae, "parent_of", None)
        levels = [[int(s.start), int(s.stop)] for s in getattr(sae, "levels", [slice(0, sae.W_dec.shape[0])])]
        row = {str(k): _jsonable(v) for k, v in meta.loc[n].items()}
        info = {"meta": row, "d_in": int(sae.W_dec.shape[1]), "d_sae": int(sae.W_dec.shape[0]),
                "architecture": row.get("architecture") or getattr(sae, "architecture", type(sae).__name__),
                "levels": levels, "tree": parent is not None, "source": source_of[tkey]}
        out_saes[n] = {"info": info, "stats": stats, "logits": logits,
                       "parent_of": None if parent is None else parent.detach().cpu().numpy().astype(np.int64)}
    if matched is None and match_top > 0:
        group = None if match_group is None else {n: _jsonable(meta.at[n, match_group]) for n in names}
        matched = matches(saes, top=match_top, group=group)
    used_tokens.discard(-1)
    return {"format": FORMAT_VERSION, "saes": {n: out_saes[n] for n in names}, "matches": matched or {},
            "sources": sources,
            "vocab": _token_strings(tok, used_tokens), "meta_columns": [str(c) for c in meta.columns],
            "settings": {"n_top_contexts": n_top_contexts, "max_contexts": max_contexts, "window": list(window),
                         "drop_first": drop_first, "logit_top": logit_top, "match_top": match_top,
                         "match_group": match_group, "hist_edges": HIST_EDGES.tolist(), "logit_choice": LOGIT_CHOICE}}
