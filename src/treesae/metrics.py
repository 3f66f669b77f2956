"""Evaluation metrics of a trained SAE.

reconstruction_metrics: on held-out activations [N, d_in] (already without the first position when
the cache was read with drop_first=True, the default), batched, no grad, SAE in eval mode.
    nmse  = sum_tokens ||x - x_hat||^2 / sum_tokens ||x||^2            (OpenAI; not mean-centred)
    fvu   = sum_tokens ||x - x_hat||^2 / sum_tokens ||x - mean(x)||^2  (mean over the held-out set)
    explained_variance = 1 - fvu
    l0    = mean number of non-zero latents per token (+ p10/p50/p90 of the per-token count)
    dead_fraction = fraction of latents that never fire on the N held-out tokens (dead_window_tokens = N)
    per level i (multi-level SAEs, levels = sae.levels): l0_level{i}, dead_fraction_level{i}, and for
    SAEs whose prefixes of levels are trained to reconstruct (``trains_cumulative``: tree, residual,
    Matryoshka), nmse_cumulative_level{i} = nMSE of x_hat_i = b_dec + sum_{m<=i} z_m @ W_dec[level m].

downstream_metrics: splice the SAE reconstruction into a HookedTransformer at hook_name.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .cache import sink_mask
from .tensors import dense, eval_mode, get_rows

QUANTILES = (0.1, 0.5, 0.9)


def cumulative_reconstructions(sae, z: torch.Tensor):
    """Reconstructions from levels 0..i (i = 0..L-1): ``sae.decode_cumulative(z)`` when the SAE has it,
    else b_dec + z[:, :stop_i] @ W_dec[:stop_i] (the single linear decoder every SAE here has)."""
    if hasattr(sae, "decode_cumulative"):
        return list(sae.decode_cumulative(z))
    return [z[:, :sl.stop] @ sae.W_dec[:sl.stop] + sae.b_dec for sl in sae.levels]


def trains_cumulative(sae) -> bool:
    """Whether every prefix of levels is trained to reconstruct: ``sae.cumulative`` if set, else
    ``cfg.level_loss == "cumulative"`` (tree, residual; stacked trains only the final level), and
    True for multi-level SAEs without that field (Matryoshka's nested prefixes)."""
    flag = getattr(sae, "cumulative", None)
    if flag is None:
        flag = getattr(getattr(sae, "cfg", None), "level_loss", "cumulative") == "cumulative"
    return bool(flag)


@torch.no_grad()
def reconstruction_metrics(sae, acts, batch_size: int = 4096, fired: bool = False) -> dict:
    """nMSE, FVU, explained variance, L0 (mean and per-token quantiles), dead fraction, per-level versions;
    with ``fired``, also the [d_sae] bool mask of latents that fire on ``acts``."""
    n, d = acts.shape
    levels = list(sae.levels)
    multi, cumulative = len(levels) > 1, len(levels) > 1 and trains_cumulative(sae)
    dev = next(sae.parameters()).device
    bounds = torch.tensor([sl.stop for sl in levels], device=dev)
    sse = sxx = 0.0
    sx = torch.zeros(d, dtype=torch.float64, device=dev)
    sse_cum = np.zeros(len(levels))
    fires = torch.zeros(levels[-1].stop, dtype=torch.long, device=dev)
    l0_tok, l0_lvl = [], torch.zeros(len(levels), dtype=torch.long, device=dev)
    with eval_mode(sae):
        for i in range(0, n, batch_size):
            x = get_rows(acts, torch.arange(i, min(i + batch_size, n))).to(dev)
            z = dense(sae.encode(x))
            sse += float((x - sae.decode(z)).double().pow(2).sum())
            sxx += float(x.double().pow(2).sum())
            sx += x.double().sum(0)
            rows, cols = z.nonzero(as_tuple=True)  # one pass; bool reductions over [B, d_sae] are ~5x slower
            l0_tok.append(torch.bincount(rows, minlength=x.shape[0]))
            fires += torch.bincount(cols, minlength=fires.shape[0])
            l0_lvl += torch.bincount(torch.bucketize(cols, bounds, right=True), minlength=len(levels))
            if cumulative:
                sse_cum += [float((x - r).double().pow(2).sum()) for r in cumulative_reconstructions(sae, z)]
    l0_tok = torch.cat(l0_tok).double()
    live = fires > 0
    centred = sxx - float(sx.pow(2).sum()) / n  # sum ||x - mean||^2 = sum ||x||^2 - N ||mean||^2
    fvu = sse / centred
    out = {"n_tokens": n, "nmse": sse / sxx, "fvu": fvu, "explained_variance": 1 - fvu,
           "mse": sse / n, "l0": float(l0_tok.mean()),
           **{f"l0_p{int(q * 100)}": float(torch.quantile(l0_tok, q)) for q in QUANTILES},
           "dead_fraction": float((~live).float().mean()), "dead_window_tokens": n, **({"fired": live} if fired else {})}
    if multi:
        for i, sl in enumerate(levels):
            out[f"l0_level{i}"] = float(l0_lvl[i]) / n
            out[f"dead_fraction_level{i}"] = float((~live[sl]).float().mean())
            if cumulative:
                out[f"nmse_cumulative_level{i}"] = sse_cum[i] / sxx
    return out


def _ce_kl(logits, clean_logp, tokens, pos):
    """Per-context summed next-token CE and KL(clean || logits) over positions ``pos`` ([n_ctx] each; logits
    at t predict token t+1)."""
    logp = F.log_softmax(logits[:, pos].float(), dim=-1)
    target = tokens[:, pos.start + 1:pos.stop + 1]
    ce = -logp.gather(-1, target.unsqueeze(-1)).sum((1, 2))
    kl = (clean_logp.exp() * (clean_logp - logp)).sum((1, 2)) if clean_logp is not None else None
    return ce, kl, logp


def _replace(act, first: int, sink_ratio: float | None, fn):
    """``act`` [B, T, d] with positions ``first:`` replaced by ``fn`` of them, except attention sinks (``sink_mask``)."""
    a = act[:, first:]
    new = fn(a)
    if sink_ratio is not None:
        new = torch.where(sink_mask(a, sink_ratio).unsqueeze(-1), a, new)
    act = act.clone()
    act[:, first:] = new
    return act


def splice_hook(sae, exclude_first: bool = True, sink_ratio: float | None = None):
    """A TransformerLens hook that replaces the activation by ``sae``'s reconstruction as the SAEs were trained:
    position 0 (``exclude_first``) and attention sinks (norm > ``sink_ratio`` x the median, ``cache.sink_mask``)
    keep their clean activation. ``sae``: ours or a sae-lens SAE (any leading shape)."""
    return lambda act, hook: _replace(act, 1 if exclude_first else 0, sink_ratio,
                                      lambda a: sae(a.reshape(-1, a.shape[-1]).float()).reshape(a.shape).to(a.dtype))


def _first_scored(tokens, exclude_first: bool) -> tuple[torch.Tensor, int, slice]:
    tokens = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens).long()
    first = 1 if exclude_first else 0
    pos = slice(first, tokens.shape[1] - 1)
    if pos.stop - pos.start < 1:
        raise ValueError(f"contexts of length {tokens.shape[1]} leave no scored position")
    return tokens, first, pos


def _layer_of(hook_name: str) -> int:
    parts = hook_name.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_pre" or not parts[1].isdigit():
        raise ValueError(f"downstream metrics splice at blocks.<L>.hook_resid_pre, got {hook_name!r}")
    return int(parts[1])


@torch.no_grad()
def downstream_reference(model, tokens, hook_name: str, batch_size: int = 8, exclude_first: bool = True,
                         sink_ratio: float | None = None) -> dict:
    """The SAE-independent half of ``downstream_metrics``, computed once per (tokens, hook) and reused for
    every SAE: per batch, the clean residual at the hook and clean log-probs; clean and zero-ablated CE/KL
    sums. Memory: n_ctx * ctx_len * d_vocab floats of log-probs."""
    tokens, first, pos = _first_scored(tokens, exclude_first)
    layer = _layer_of(hook_name)

    def zero(act, hook):
        return _replace(act, first, sink_ratio, torch.zeros_like)

    batches, sums, count, ce_ctx = [], dict(ce_clean=0.0, ce_zero=0.0, kl_zero=0.0), 0, []
    with eval_mode(model):
        for i in range(0, tokens.shape[0], batch_size):
            tok = tokens[i:i + batch_size]
            logits, cache = model.run_with_cache(tok, return_type="logits", names_filter=hook_name)
            ce, _, clean_logp = _ce_kl(logits, None, tok, pos)
            ce_ctx.append(ce)
            resid = cache[hook_name]
            z_ce, z_kl, _ = _ce_kl(model.run_with_hooks(resid, start_at_layer=layer, return_type="logits",
                                                        fwd_hooks=[(hook_name, zero)]), clean_logp, tok, pos)
            sums["ce_clean"] += float(ce.sum())
            sums["ce_zero"] += float(z_ce.sum())
            sums["kl_zero"] += float(z_kl.sum())
            batches.append((tok, resid, clean_logp))
            count += tok.shape[0] * (pos.stop - pos.start)
    return dict(hook_name=hook_name, layer=layer, batches=batches, sums=sums, count=count, ce_clean_ctx=torch.cat(ce_ctx),
                exclude_first=exclude_first, sink_ratio=sink_ratio, n_ctx=int(tokens.shape[0]), batch_size=batch_size)


@torch.no_grad()
def downstream_metrics(model, sae, tokens, hook_name: str, batch_size: int = 8, exclude_first: bool = True,
                       reference: dict | None = None) -> dict:
    """CE/KL with the SAE reconstruction spliced in at ``hook_name`` vs clean and zero-ablated runs.

    tokens: int [n_ctx, ctx_len]. Logits at position t predict token t+1, so positions 0..T-2 are scored.
    exclude_first=True: position 0 (the attention sink) keeps its clean activation in the spliced and the
    zero-ablated runs, and the prediction made at position 0 is left out of every average; scored positions
    are 1..T-2 (n_ctx * (T - 2) predictions). exclude_first=False: all positions are spliced/ablated and
    0..T-2 are scored. All numbers are means over the scored predictions (nats):
    ce_clean, ce_sae, ce_zero; ce_increase = ce_sae - ce_clean; ce_score = (ce_zero - ce_sae)/(ce_zero - ce_clean);
    kl_sae / kl_zero = mean KL(clean || spliced / ablated); kl_score = (kl_zero - kl_sae)/kl_zero;
    ce_increase_se, kl_sae_se: standard errors over contexts (each context's mean, n_contexts of them).
    Attention sinks (``reference`` made with ``sink_ratio``) keep their clean activation like position 0.
    The spliced and ablated runs start at the hook's layer from the clean residual (``start_at_layer``).
    ``reference``: ``downstream_reference`` of the same tokens and hook (computed here when None).
    """
    tokens, first, pos = _first_scored(tokens, exclude_first)
    ref = reference or downstream_reference(model, tokens, hook_name, batch_size, exclude_first)
    if (ref["hook_name"], ref["exclude_first"], ref["n_ctx"], ref["batch_size"]) != \
            (hook_name, exclude_first, int(tokens.shape[0]), batch_size) or \
            not torch.equal(torch.cat([b[0] for b in ref["batches"]]), tokens):
        raise ValueError("downstream_metrics: reference was computed for other tokens, hook or settings; "
                         "recompute it with downstream_reference(model, tokens, hook_name, ...)")

    splice = splice_hook(sae, exclude_first, ref["sink_ratio"])
    sums, ce_ctx, kl_ctx = dict(ref["sums"], ce_sae=0.0, kl_sae=0.0), [], []
    with eval_mode(sae), eval_mode(model):
        for tok, resid, clean_logp in ref["batches"]:
            logits = model.run_with_hooks(resid, start_at_layer=ref["layer"], return_type="logits",
                                          fwd_hooks=[(hook_name, splice)])
            ce, kl, _ = _ce_kl(logits, clean_logp, tok, pos)
            sums["ce_sae"] += float(ce.sum())
            sums["kl_sae"] += float(kl.sum())
            ce_ctx.append(ce)
            kl_ctx.append(kl)
    m = {k: sums[k] / ref["count"] for k in ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero")}
    m["ce_increase"] = m["ce_sae"] - m["ce_clean"]
    m["ce_score"] = (m["ce_zero"] - m["ce_sae"]) / (m["ce_zero"] - m["ce_clean"])
    m["kl_score"] = (m["kl_zero"] - m["kl_sae"]) / m["kl_zero"]
    per = ref["count"] / ref["n_ctx"]  # scored predictions per context
    inc, kl_c = (torch.cat(ce_ctx) - ref["ce_clean_ctx"]) / per, torch.cat(kl_ctx) / per
    m["ce_increase_se"], m["kl_sae_se"] = (float(v.double().std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
                                           for v in (inc, kl_c))
    m.update(n_predictions=ref["count"], n_contexts=ref["n_ctx"], exclude_first=exclude_first,
             sink_ratio=ref["sink_ratio"], hook_name=hook_name)
    return m
