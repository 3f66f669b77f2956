"""SAE activations and reconstruction as a function of token position.

Inputs: ``acts`` [n_ctx, ctx_len, d] (float16 memmap / ``ActivationCache.layer(L)`` / array / tensor),
read in batches of contexts and cast to float32; an SAE with ``encode(x [B, d]) -> z`` and
``decode(z) -> x_hat`` (docs/DESIGN.md). Position 0 (the attention sink) is *included* in every
per-position table, as its own row, so figures can show it or leave it out; where a statistic pools
positions, ``include_first`` says whether position 0 is in (default False, as in every metric here).

Metric definitions:
    nmse (OpenAI, not mean-centred) at position t = sum_ctx ||x - x_hat||^2 / sum_ctx ||x||^2
    l0 = mean number of non-zero latents per token;  mean_act = mean value of the non-zero codes
    resid_norm = mean ||x||_2 over contexts
    eta^2 of a latent = between-position sum of squares / total sum of squares of its code (zeros
        included): the fraction of the variance of the code explained by the position means
    CE = next-token cross-entropy (nats); logits at t predict token t+1

``progress``: None, or a progress bar (``tqdm``) that each function advances by the contexts it has done.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..cache import hook_name
from ..tensors import dense, eval_mode

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _batches(acts, batch_contexts: int, max_contexts: int | None = None, progress=None):
    n = len(acts) if max_contexts is None else min(len(acts), max_contexts)
    for i in range(0, n, batch_contexts):
        x = acts[i:min(i + batch_contexts, n)]
        yield x.float() if torch.is_tensor(x) else torch.from_numpy(np.asarray(x, dtype=np.float32))
        if progress is not None:
            progress.update(len(x))


def _encode(sae, x):
    """x [B, T, d] -> (z [B*T, d_sae] dense, x_hat [B, T, d])."""
    z = sae.encode(x.reshape(-1, x.shape[-1]))
    z = dense(z)
    return z, sae.decode(z).reshape(x.shape)


@torch.no_grad()
def position_profile(sae, acts, batch_contexts: int = 16, max_contexts: int | None = None,
                     progress=None) -> pd.DataFrame:
    """Per position: n (contexts), mean_act, l0, nmse, resid_norm (definitions in the module docstring)."""
    s = None
    with eval_mode(sae):
        for x in _batches(acts, batch_contexts, max_contexts, progress):
            B, T, _ = x.shape
            z, xh = _encode(sae, x)
            z = z.reshape(B, T, -1)
            act = z != 0
            part = torch.stack([torch.full((T,), float(B)), z.sum((0, 2)).double(), act.sum((0, 2)).double(),
                                (x - xh).double().pow(2).sum((0, 2)), x.double().pow(2).sum((0, 2)),
                                x.double().norm(dim=-1).sum(0)])
            s = part if s is None else s + part
    n, zs, na, sse, sxx, nrm = s.numpy()
    return pd.DataFrame({"position": np.arange(len(n)), "n": n.astype(int), "mean_act": zs / np.maximum(na, 1),
                         "l0": na / n, "nmse": sse / sxx, "resid_norm": nrm / n})


@torch.no_grad()
def residual_norm_by_position(acts, batch_contexts: int = 64, max_contexts: int | None = None) -> pd.DataFrame:
    """Per position: norm_mean, norm_median, norm_p90 of ||x||_2 over contexts, and ratio = norm_mean /
    median over positions of norm_mean (position 0's sink shows as a large ratio)."""
    norms = torch.cat([x.norm(dim=-1) for x in _batches(acts, batch_contexts, max_contexts)]).double()
    out = pd.DataFrame({"position": np.arange(norms.shape[1]), "norm_mean": norms.mean(0).numpy(),
                        "norm_median": norms.median(0).values.numpy(),
                        "norm_p90": torch.quantile(norms, 0.9, dim=0).numpy()})
    out["ratio"] = out.norm_mean / out.norm_mean.median()
    return out


@torch.no_grad()
def _codes_by_position(sae, acts, include_first, batch_contexts, max_contexts, progress=None):
    """(feature, value, position) of every non-zero code."""
    f, v, p = [], [], []
    with eval_mode(sae):
        for x in _batches(acts, batch_contexts, max_contexts, progress):
            B, T, _ = x.shape
            z, _ = _encode(sae, x)
            z = z.reshape(B, T, -1)[:, (0 if include_first else 1):]
            idx = z.nonzero()
            f.append(idx[:, 2].numpy())
            p.append(idx[:, 1].numpy() + (0 if include_first else 1))
            v.append(z[idx[:, 0], idx[:, 1], idx[:, 2]].double().numpy())
    return np.concatenate(f), np.concatenate(v), np.concatenate(p), z.shape[-1]


def feature_deciles(sae, acts, include_first: bool, quantiles=QUANTILES, batch_contexts: int = 16,
                    max_contexts: int | None = None, progress=None) -> pd.DataFrame:
    """Per latent: n_active and quantiles (q10..q90, linear interpolation) of its *non-zero* code values,
    over all tokens with (include_first=True) or without position 0. Latents never active get NaN."""
    f, v, _, d = _codes_by_position(sae, acts, include_first, batch_contexts, max_contexts, progress)
    order = np.lexsort((v, f))
    f, v = f[order], v[order]
    counts = np.bincount(f, minlength=d)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = pd.DataFrame({"feature": np.arange(d), "n_active": counts, "include_first": include_first})
    for q in quantiles:
        pos = start + q * np.maximum(counts - 1, 0)
        lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
        ok = counts > 0
        val = np.full(d, np.nan)
        val[ok] = v[lo[ok]] + (v[hi[ok]] - v[lo[ok]]) * (pos[ok] - lo[ok])
        out[f"q{int(round(q * 100))}"] = val
    return out


@torch.no_grad()
def position_features(sae, acts, include_first: bool = False, min_active: int = 10, batch_contexts: int = 16,
                      max_contexts: int | None = None, progress=None) -> pd.DataFrame:
    """Latents ranked by how much position explains their code: eta^2 = sum_t n_t (m_t - m)^2 /
    sum (z - m)^2 over tokens (zeros included; m_t = mean code at position t, m = overall mean),
    positions from 0 (include_first) or 1. Columns: feature, eta2, n_active, freq, peak_position
    (argmax_t m_t), corr_position (Pearson r between code and position); latents active fewer than
    min_active times are dropped. Sorted by eta2, descending."""
    s1 = s2 = na = None
    nb = 0
    with eval_mode(sae):
        for x in _batches(acts, batch_contexts, max_contexts, progress):
            B, T, _ = x.shape
            z, _ = _encode(sae, x)
            z = z.reshape(B, T, -1)[:, (0 if include_first else 1):].double()
            a, b, c = z.sum(0), z.pow(2).sum((0, 1)), (z != 0).sum((0, 1)).double()
            s1, s2, na = (a, b, c) if s1 is None else (s1 + a, s2 + b, na + c)
            nb += B
    s1, s2, na = s1.numpy(), s2.numpy(), na.numpy()  # s1 [T', d_sae]
    T = s1.shape[0]
    N = nb * T
    m_t, m = s1 / nb, s1.sum(0) / N
    ss_tot = s2 - N * m ** 2
    ss_between = nb * ((m_t - m) ** 2).sum(0)
    pos = np.arange(T) + (0 if include_first else 1)
    # Pearson r(code, position): cov = (sum_t t * S1_t)/N - m * mean(t)
    cov = (pos[:, None] * s1).sum(0) / N - m * pos.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        eta2 = np.where(ss_tot > 0, ss_between / ss_tot, 0.0)
        r = cov / np.sqrt(np.maximum(ss_tot / N, 0) * pos.var())
    out = pd.DataFrame({"feature": np.arange(len(m)), "eta2": eta2, "n_active": na.astype(int), "freq": na / N,
                        "peak_position": pos[m_t.argmax(0)], "corr_position": np.nan_to_num(r)})
    return out[out.n_active >= min_active].sort_values("eta2", ascending=False, kind="stable").reset_index(drop=True)


def stack_layers(tables: dict) -> pd.DataFrame:
    """{layer: DataFrame} -> one DataFrame with a leading ``layer`` column."""
    return pd.concat([t.assign(layer=layer)[["layer", *t.columns]] for layer, t in tables.items()],
                     ignore_index=True)


# ---------------------------------------------------------------- interventions on position
def position_modes(model) -> tuple[str, ...]:
    """Interventions that fit the model's positional embedding type."""
    kind = model.cfg.positional_embedding_type
    if kind == "rotary":
        return ("permute", "freeze")
    if kind in ("standard", "shortformer"):
        return ("zero", "shuffle")
    raise NotImplementedError(f"no position intervention for positional_embedding_type={kind!r}")


@contextlib.contextmanager
def position_intervened(model, mode: str, n_pos: int, seed: int = 0):
    """Context manager; yields the forward hooks to pass to ``run_with_hooks`` / ``run_with_cache``.

    rotary: every attention layer's rotary sin/cos tables (first n_pos rows) are replaced, then
    restored. "permute": position t gets the angles of position perm[t] (one seeded random
    permutation of 0..n_pos-1), so query-key relative distances are scrambled while the causal mask
    stays; "freeze": every position gets position 0's angles (no rotation), so attention cannot see
    relative position. standard (learned absolute): hook_pos_embed output is "zero"ed or
    "shuffle"d along positions with the seeded permutation. mode None: no intervention.
    """
    if mode is None or mode == "clean":
        yield []
        return
    if mode not in position_modes(model):
        raise ValueError(f"mode {mode!r} does not fit a {model.cfg.positional_embedding_type} model; "
                         f"use one of {position_modes(model)}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n_pos))
    if mode in ("zero", "shuffle"):
        def hook(pe, hook):
            return torch.zeros_like(pe) if mode == "zero" else pe[:, perm[:pe.shape[1]].to(pe.device)]
        yield [("hook_pos_embed", hook)]
        return
    saved = []
    try:
        for block in model.blocks:
            attn = block.attn
            saved.append((attn, attn.rotary_sin, attn.rotary_cos))
            sin, cos = attn.rotary_sin, attn.rotary_cos
            if sin.shape[0] < n_pos:
                sin, cos = attn.calculate_sin_cos_rotary(attn.cfg.rotary_dim, n_pos, base=attn._rotary_base(),
                                                         dtype=attn.cfg.dtype)
                sin, cos = sin.to(attn.rotary_sin.device), cos.to(attn.rotary_cos.device)
            idx = perm if mode == "permute" else torch.zeros(n_pos, dtype=torch.long)
            attn.rotary_sin, attn.rotary_cos = sin[idx.to(sin.device)].clone(), cos[idx.to(cos.device)].clone()
        yield []
    finally:
        for attn, sin, cos in saved:
            attn.rotary_sin, attn.rotary_cos = sin, cos


def _ce_per_token(logits, tokens):
    """[B, T-1] next-token CE (position t predicts token t+1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


def _splice(sae, first: int):
    def hook(act, hook):
        a = act[:, first:]
        rec = sae.decode(dense(sae.encode(a.reshape(-1, a.shape[-1]).float()))).reshape(a.shape).to(act.dtype)
        act = act.clone()
        act[:, first:] = rec
        return act
    return hook


def _tokens(tokens):
    return (tokens if torch.is_tensor(tokens) else torch.from_numpy(np.asarray(tokens))).long()


@torch.no_grad()
def position_intervention(model, tokens, layers, saes_by_layer: dict, mode: str, seed: int = 0,
                          batch_size: int = 8, include_first: bool = False, hook: str = "hook_resid_pre",
                          progress=None) -> pd.DataFrame:
    """Per layer and condition ("clean" and ``mode``, see ``position_intervened``):
    resid_norm (mean ||x||), sae_nmse (pooled OpenAI nMSE), sae_l0, lm_loss (mean CE, no splice) and
    lm_loss_spliced (mean CE with that layer's SAE reconstruction spliced in, under the same
    condition); SAE columns are NaN for layers without an SAE. include_first=False: position 0 is left
    out of every average and keeps its activation when splicing (as ``treesae.metrics``)."""
    tokens = _tokens(tokens)
    T = tokens.shape[1]
    first = 0 if include_first else 1
    names = {L: hook_name(L, hook) for L in layers}
    rows = []
    with eval_mode(model, *saes_by_layer.values()):
        for cond in ("clean", mode):
            acc = {L: np.zeros(5) for L in layers}  # norm sum, sse, sxx, l0 sum, spliced CE sum
            ce, n_tok, n_pred = 0.0, 0, 0
            with position_intervened(model, None if cond == "clean" else mode, T, seed) as hooks:
                for i in range(0, len(tokens), batch_size):
                    tok = tokens[i:i + batch_size]
                    with model.hooks(fwd_hooks=hooks):
                        logits, cache = model.run_with_cache(tok, names_filter=lambda n: n in names.values())
                    ce += float(_ce_per_token(logits, tok)[:, first:].sum())
                    n_pred += tok.shape[0] * (T - 1 - first)
                    n_tok += tok.shape[0] * (T - first)
                    for L in layers:
                        x = cache[names[L]][:, first:].float()
                        acc[L][0] += float(x.norm(dim=-1).sum())
                        sae = saes_by_layer.get(L)
                        if sae is None:
                            continue
                        z = dense(sae.encode(x.reshape(-1, x.shape[-1])))
                        acc[L][1] += float((x.reshape(-1, x.shape[-1]) - sae.decode(z)).double().pow(2).sum())
                        acc[L][2] += float(x.double().pow(2).sum())
                        acc[L][3] += float((z != 0).sum())
                        lg = model.run_with_hooks(tok, fwd_hooks=hooks + [(names[L], _splice(sae, first))])
                        acc[L][4] += float(_ce_per_token(lg, tok)[:, first:].sum())
                    if progress is not None:
                        progress.update(len(tok))
            for L in layers:
                has = L in saes_by_layer
                rows.append(dict(layer=L, condition=cond, resid_norm=acc[L][0] / n_tok,
                                 sae_nmse=acc[L][1] / acc[L][2] if has else np.nan,
                                 sae_l0=acc[L][3] / n_tok if has else np.nan, lm_loss=ce / n_pred,
                                 lm_loss_spliced=acc[L][4] / n_pred if has else np.nan))
    return pd.DataFrame(rows)


@torch.no_grad()
def lm_vs_sae_loss(model, sae_by_layer: dict, tokens, hook_names: dict | None = None, batch_size: int = 8,
                   include_first: bool = False, position_mode: str | None = None, seed: int = 0, progress=None
                   ) -> pd.DataFrame:
    """Per token and layer: ctx, position, layer, ce_clean, ce_spliced (CE when that layer's SAE
    reconstruction replaces the activation at every position >= first, i.e. the whole context is
    spliced), ce_increase, sae_nmse (||x - x_hat||^2 / ||x||^2 of this token), resid_norm.
    Rows are positions first..T-2 (the CE at t is for predicting token t+1). position_mode: run every
    pass under a position intervention (``position_intervened``) — "the same with position removed".
    hook_names: {layer: hook name}; default blocks.<layer>.hook_resid_pre."""
    tokens = _tokens(tokens)
    T = tokens.shape[1]
    first = 0 if include_first else 1
    names = hook_names or {L: hook_name(L) for L in sae_by_layer}
    out = []
    with eval_mode(model, *sae_by_layer.values()), position_intervened(model, position_mode, T, seed) as hooks:
        for i in range(0, len(tokens), batch_size):
            tok = tokens[i:i + batch_size]
            B = tok.shape[0]
            with model.hooks(fwd_hooks=hooks):
                logits, cache = model.run_with_cache(tok, names_filter=lambda n: n in names.values())
            ce0 = _ce_per_token(logits, tok)[:, first:]  # [B, T-1-first]
            ctx, pos = np.meshgrid(np.arange(i, i + B), np.arange(first, T - 1), indexing="ij")
            for L, sae in sae_by_layer.items():
                x = cache[names[L]][:, first:T - 1].float()
                xf = x.reshape(-1, x.shape[-1])
                err = (xf - sae.decode(dense(sae.encode(xf)))).pow(2).sum(-1) / xf.pow(2).sum(-1).clamp_min(1e-12)
                lg = model.run_with_hooks(tok, fwd_hooks=hooks + [(names[L], _splice(sae, first))])
                ce1 = _ce_per_token(lg, tok)[:, first:]
                out.append(pd.DataFrame({"ctx": ctx.ravel(), "position": pos.ravel(), "layer": L,
                                         "ce_clean": ce0.reshape(-1).double().numpy(),
                                         "ce_spliced": ce1.reshape(-1).double().numpy(),
                                         "sae_nmse": err.double().numpy(),
                                         "resid_norm": xf.norm(dim=-1).double().numpy()}))
            if progress is not None:
                progress.update(B)
    df = pd.concat(out, ignore_index=True)
    df.insert(df.columns.get_loc("ce_spliced") + 1, "ce_increase", df.ce_spliced - df.ce_clean)
    return df.sort_values(["layer", "ctx", "position"], kind="stable").reset_index(drop=True)
