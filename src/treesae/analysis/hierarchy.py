"""Hierarchy statistics of multi-level SAEs, computable for flat SAEs too.

Codes Z [N tokens, d_sae] may be a dense numpy array / torch tensor, a torch sparse tensor or a scipy
sparse matrix; they are held as scipy CSC internally (``codes`` encodes in batches straight to it).
A latent is *active* on a token when its code is non-zero. ``levels``: list of slices (``sae.levels``);
``parent_of``: int array [d_sae], the parent latent (-1 at the root level), ``sae.parent_of``.

Definitions used throughout (N tokens, n_c = #tokens where c is active, n_pc = #tokens both active):
    P(p) = n_p / N,   P(p | c) = n_pc / n_c,   P(c | p) = n_pc / n_p
    coverage lift  s(c, p) = (P(p | c) - P(p)) / (1 - P(p))
s is 1 when the child fires only where its parent fires, 0 when they are independent, negative when
they avoid each other; the normalisation keeps an always-on latent from counting as everyone's
parent. Shuffled baselines: (given parents) the parent assignment permuted among the children of a
level, seeded; (inferred parents, correlations) every latent's activity circularly shifted over the N
tokens by an independent random offset, which keeps each latent's frequency and burstiness but
breaks co-occurrence.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..tensors import dense


def as_sparse(Z) -> sp.csc_matrix:
    """Codes as a float32 scipy CSC matrix [N, d_sae] (explicit zeros dropped)."""
    if sp.issparse(Z):
        M = sp.csc_matrix(Z, dtype=np.float32)
    elif torch.is_tensor(Z):
        if Z.layout != torch.strided:
            Z = Z.coalesce().cpu()
            i, v = Z.indices().numpy(), Z.values().float().numpy()
            M = sp.csc_matrix((v, (i[0], i[1])), shape=tuple(Z.shape), dtype=np.float32)
        else:
            M = sp.csc_matrix(Z.detach().float().cpu().numpy())
    else:
        M = sp.csc_matrix(np.asarray(Z, dtype=np.float32))
    M.eliminate_zeros()
    return M


@torch.no_grad()
def codes(sae, X, batch_size: int = 4096, progress=None, ungated: bool = False) -> sp.csc_matrix:
    """sae.encode over X [N, d_in] in batches (float32), straight to a sparse [N, d_sae] matrix.
    progress: None, or a progress bar (``tqdm``) advanced by the tokens encoded. ``ungated``: the tree's
    ``encode_ungated`` (no parent's cap), the same codes for SAEs without a gate."""
    encode = sae.encode_ungated if ungated and hasattr(sae, "encode_ungated") else sae.encode
    parts = []
    for i in range(0, len(X), batch_size):
        x = torch.as_tensor(np.asarray(X[i:i + batch_size], dtype=np.float32)) if not torch.is_tensor(X) \
            else X[i:i + batch_size].float()
        z = encode(x)
        parts.append(as_sparse(dense(z)).tocsr())
        if progress is not None:
            progress.update(len(x))
    return sp.vstack(parts).tocsc()


def _levels_of(levels, d_sae: int) -> np.ndarray:
    lvl = np.full(d_sae, -1)
    for i, s in enumerate(levels):
        lvl[s] = i
    return lvl


def _np_parent(parent_of) -> np.ndarray:
    return (parent_of.cpu().numpy() if torch.is_tensor(parent_of) else np.asarray(parent_of)).astype(np.int64)


def _active(Z) -> sp.csc_matrix:
    A = as_sparse(Z)
    A.data[:] = 1.0
    return A


def _shift(A: sp.csc_matrix, seed: int) -> sp.csc_matrix:
    """Every column circularly shifted over the rows by its own random offset."""
    N, d = A.shape
    off = np.random.default_rng(seed).integers(0, N, d)
    col = np.repeat(np.arange(d), np.diff(A.indptr))
    return sp.csc_matrix((A.data, ((A.indices + off[col]) % N, col)), shape=A.shape)


def _shuffle_parents(p: np.ndarray, lvl: np.ndarray, seed: int) -> np.ndarray:
    """Parent assignment permuted within each level (degrees kept), re-drawn so that no child keeps its
    own parent where a swap can avoid it."""
    rng = np.random.default_rng(seed)
    ps = p.copy()
    for l in np.unique(lvl):
        idx = np.nonzero(lvl == l)[0]
        q = rng.permutation(p[idx])
        for i in np.nonzero(q == p[idx])[0]:
            ok = np.nonzero((q != p[idx][i]) & (p[idx] != q[i]))[0]
            if len(ok):
                j = rng.choice(ok)
                q[i], q[j] = q[j], q[i]
        ps[idx] = q
    return ps


def _counts(A: sp.csc_matrix) -> np.ndarray:
    return np.diff(A.indptr).astype(np.int64)


def _pair_counts(A: sp.csc_matrix, c: np.ndarray, p: np.ndarray) -> np.ndarray:
    """n_pc for the latent pairs (c[i], p[i])."""
    if len(c) == 0:
        return np.zeros(0)
    return np.asarray(A[:, c].multiply(A[:, p]).sum(0)).ravel().astype(np.int64)


def _lift(n_pc, n_c, n_p, N):
    pp = n_p / N
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (n_pc / np.maximum(n_c, 1) - pp) / (1 - pp)
    return np.where(pp < 1, s, 0.0)


def coactivation(Z, parent_of, levels=None, seed: int = 0) -> pd.DataFrame:
    """Per parent-child pair (every latent with parent_of >= 0): n_child, n_parent, n_both,
    p_child_given_parent = P(c|p), p_parent_given_child = P(p|c), p_parent = P(p), rate = n_pc / N,
    lift = s(c, p); and the same for a shuffled parent (assignment permuted within the child's level,
    seeded, no child keeping its own parent where avoidable): shuffled_parent,
    p_parent_given_child_shuffled, rate_shuffled, lift_shuffled."""
    A = _active(Z)
    N, d = A.shape
    par = _np_parent(parent_of)
    lvl = _levels_of(levels, d) if levels is not None else np.zeros(d, int)
    child = np.nonzero(par >= 0)[0]
    p = par[child]
    ps = _shuffle_parents(p, lvl[child], seed)
    n = _counts(A)
    both, both_s = _pair_counts(A, child, p), _pair_counts(A, child, ps)
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame({
            "child": child, "parent": p, "level": lvl[child], "n_child": n[child], "n_parent": n[p], "n_both": both,
            "p_child_given_parent": both / n[p], "p_parent_given_child": both / n[child], "p_parent": n[p] / N,
            "rate": both / N, "lift": _lift(both, n[child], n[p], N),
            "shuffled_parent": ps, "p_parent_given_child_shuffled": both_s / n[child], "rate_shuffled": both_s / N,
            "lift_shuffled": _lift(both_s, n[child], n[ps], N)})


def infer_parents(Z, levels, min_count: int = 5) -> pd.DataFrame:
    """Parent of each latent for SAEs without one: the candidate p maximising the coverage lift s(c, p).

    Candidates: multi-level SAEs (hierarchical, Matryoshka prefix groups): the latents of all earlier
    (coarser) levels; flat SAEs (one level): every other latent at least as frequent as c. Children
    and candidates must fire >= min_count times. Returns DataFrame(child, parent, level, lift).
    """
    return _infer(_active(Z), levels, min_count)


def _infer(A: sp.csc_matrix, levels, min_count: int) -> pd.DataFrame:
    N, d = A.shape
    n = _counts(A)
    lvl = _levels_of(levels, d)
    ok = n >= min_count
    rows = []
    groups = [(np.nonzero(ok & (lvl == l))[0], np.nonzero(ok & (lvl < l))[0]) for l in range(1, len(levels))] \
        if len(levels) > 1 else [(np.nonzero(ok)[0], np.nonzero(ok)[0])]
    for ch, cand in groups:
        if len(ch) == 0 or len(cand) == 0:
            continue
        for b in range(0, len(ch), 1024):
            c = ch[b:b + 1024]
            co = (A[:, c].T @ A[:, cand]).toarray().astype(np.float64)  # n_pc [children, candidates]
            s = _lift(co, n[c][:, None], n[cand][None, :], N)
            if len(levels) == 1:  # flat: parent must be another latent at least as frequent
                s[(n[cand][None, :] < n[c][:, None]) | (cand[None, :] == c[:, None])] = -np.inf
            j = s.argmax(1)
            best = s[np.arange(len(c)), j]
            keep = np.isfinite(best)
            rows.append(pd.DataFrame({"child": c[keep], "parent": cand[j[keep]], "level": lvl[c[keep]],
                                      "lift": best[keep]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["child", "parent", "level", "lift"])


def hierarchy_score(Z, levels, parent_of=None, seed: int = 0, min_count: int = 5) -> dict:
    """Parent-child consistency above chance, for any SAE.

        score = mean_c s(c, parent(c)) - baseline,   s = coverage lift (module docstring)

    over children c that fire >= min_count times. Given parents (``parent_of``, tree SAE): raw mean s
    over the true pairs; baseline = the same with parents permuted within each level (seeded).
    Inferred parents (parent_of None; flat, Matryoshka, stacked, residual): parent(c) = argmax_p s(c, p)
    over the coarser candidates (``infer_parents``); the baseline repeats the inference on circularly
    shifted activity, which removes co-occurrence but keeps the max-selection bias. 1 = children fire
    only with their parents, 0 = no more than chance. (Note: a hard-gated tree has P(p|c) = 1 by
    construction, so its given-parent score is ~1; the inferred mode is the like-for-like comparison.
    Cao et al.'s score is defined differently, on their own pairs: compare orders of magnitude only.)
    Returns dict(score, raw, baseline, n_children, mode).
    """
    A = _active(Z)
    if parent_of is not None:
        t = coactivation(A, parent_of, levels, seed)
        t = t[t.n_child >= min_count]
        raw, base, mode = float(t.lift.mean()), float(t.lift_shuffled.mean()), "given"
        k = len(t)
    else:
        real, null = _infer(A, levels, min_count), _infer(_shift(A, seed), levels, min_count)
        raw, base, mode, k = float(real.lift.mean()), float(null.lift.mean()), "inferred", len(real)
    return dict(score=raw - base, raw=raw, baseline=base, n_children=int(k), mode=mode)


def cross_level_decoder_cosine(W_dec, levels, parent_of, seed: int = 0) -> pd.DataFrame:
    """Cosine between each child's decoder row and its parent's, and with a shuffled parent (the
    assignment permuted within the child's level, seeded): DataFrame(child, parent, level, cos,
    shuffled_parent, cos_shuffled). Pass ``infer_parents(...)`` pairs for SAEs without a tree."""
    W = W_dec.detach().float().cpu().numpy() if torch.is_tensor(W_dec) else np.asarray(W_dec, np.float32)
    W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    if isinstance(parent_of, pd.DataFrame):
        child, p = parent_of.child.to_numpy(int), parent_of.parent.to_numpy(int)
    else:
        par = _np_parent(parent_of)
        child = np.nonzero(par >= 0)[0]
        p = par[child]
    lvl = _levels_of(levels, len(W))[child]
    ps = _shuffle_parents(p, lvl, seed)
    return pd.DataFrame({"child": child, "parent": p, "level": lvl, "cos": (W[child] * W[p]).sum(1).astype(float),
                         "shuffled_parent": ps, "cos_shuffled": (W[child] * W[ps]).sum(1).astype(float)})


def _pearson(A: sp.csc_matrix, B: sp.csc_matrix) -> np.ndarray:
    """Pearson r [a, b] between the columns of A and B over the rows (zeros included)."""
    N = A.shape[0]
    sa, sb = np.asarray(A.sum(0)).ravel(), np.asarray(B.sum(0)).ravel()
    qa, qb = np.asarray(A.multiply(A).sum(0)).ravel(), np.asarray(B.multiply(B).sum(0)).ravel()
    cross = (A.T @ B).toarray().astype(np.float64)
    va, vb = N * qa - sa ** 2, N * qb - sb ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (N * cross - np.outer(sa, sb)) / np.sqrt(np.outer(va, vb))
    return np.nan_to_num(r)


def level_correlation(Z, levels, seed: int = 0, min_count: int = 5) -> pd.DataFrame:
    """Correlation between consecutive levels' latents (Pearson r of code values over tokens, zeros
    included). Per level l >= 1: best_abs_r = mean over level-l latents (firing >= min_count) of the
    largest |r| with any level-(l-1) latent, mean_abs_r = mean |r| over all such pairs, and both again
    with level l's activity circularly shifted (``*_shuffled``). Empty for single-level SAEs."""
    M = as_sparse(Z)
    n = np.diff(M.indptr)
    Ms = _shift(M, seed)
    rows = []
    for l in range(1, len(levels)):
        a = np.arange(levels[l - 1].start, levels[l - 1].stop)
        b = np.arange(levels[l].start, levels[l].stop)
        a, b = a[n[a] >= min_count], b[n[b] >= min_count]
        if len(a) == 0 or len(b) == 0:
            continue
        r, rs = np.abs(_pearson(M[:, b], M[:, a])), np.abs(_pearson(Ms[:, b], M[:, a]))
        rows.append(dict(level=l, n_latents=len(b), best_abs_r=float(r.max(1).mean()), mean_abs_r=float(r.mean()),
                         best_abs_r_shuffled=float(rs.max(1).mean()), mean_abs_r_shuffled=float(rs.mean())))
    return pd.DataFrame(rows, columns=["level", "n_latents", "best_abs_r", "mean_abs_r", "best_abs_r_shuffled",
                                       "mean_abs_r_shuffled"])


def dead_per_level(Z, levels) -> pd.DataFrame:
    """Per level: width, dead = latents never active on the N tokens of Z (dead window = N, stated in
    n_tokens), dead_fraction, l0 = mean active latents of the level per token."""
    A = _active(Z)
    N = A.shape[0]
    n = _counts(A)
    return pd.DataFrame([dict(level=i, width=s.stop - s.start, dead=int((n[s] == 0).sum()),
                              dead_fraction=float((n[s] == 0).mean()), l0=float(n[s].sum() / N), n_tokens=N)
                         for i, s in enumerate(levels)])


def probe_pairs(Z, X, W_dec, parent_of=None, max_children: int = 5, min_count: int = 50, top: int = 5,
                implication: float = 0.5, dense_ratio: float = 0.5, seed: int = 0, ridge: float = 1e-3) -> pd.DataFrame:
    """Cao et al.'s hierarchy test (Tree SAE, 2026, Eq. 5) of parent/child latent pairs, on activations X [N, d_in]
    and codes Z of the same tokens.

    Parents: the ``dense_ratio`` most frequent latents. Children of p: with ``parent_of`` None, its ``max_children``
    best by masked cosine similarity of binary activity, MCS(p, c) = sqrt(P(p | c)) (any other latent firing >=
    ``min_count`` times); with ``parent_of``, p's own children (most frequent first). Each child's concept
    direction is a linear probe for "c fires" on X: Fisher's discriminant, Sigma^-1 (mu_c - mu), in closed form
    (their logistic regression is iterative; ``ridge`` x mean variance is added to Sigma). A pair is *hierarchical*
    (hit) when c's firing implies p's, P(p | c) >= ``implication``, and p's and c's decoder rows are both among the
    ``top`` rows most cosine-similar to c's direction. (Without the implication a child that absorbed its parent's
    direction passes on geometry alone.) Control: the same test with p replaced by another dense latent drawn at
    random (seeded), ``hit_shuffled``. Returns DataFrame(parent, child, n_child, p_parent_given_child,
    parent_rank, child_rank, hit, shuffled_parent, p_shuffled_given_child, shuffled_rank, hit_shuffled); ranks
    count from 1."""
    A = _active(Z)
    d = A.shape[1]
    n = _counts(A)
    dense = np.argsort(-n, kind="stable")[:max(1, int(d * dense_ratio))]
    dense = dense[n[dense] > 0]
    ok = n >= min_count
    pairs = []
    if parent_of is None:
        for b in range(0, len(dense), 512):
            p = dense[b:b + 512]
            co = (A[:, p].T @ A).toarray().astype(np.float64)   # n_pc [parents, all latents]
            cover = co / np.maximum(n, 1)[None, :]              # P(p | c) = MCS^2
            cover[:, ~ok] = -1
            cover[np.arange(len(p)), p] = -1
            best = np.argsort(-cover, axis=1, kind="stable")[:, :max_children]
            for i, pi in enumerate(p):
                pairs += [(pi, c) for c in best[i] if cover[i, c] > 0]
    else:
        par = _np_parent(parent_of)
        for pi in dense:
            kids = np.nonzero((par == pi) & ok)[0]
            pairs += [(pi, c) for c in kids[np.argsort(-n[kids], kind="stable")][:max_children]]
    cols = ["parent", "child", "n_child", "p_parent_given_child", "parent_rank", "child_rank", "hit",
            "shuffled_parent", "p_shuffled_given_child", "shuffled_rank", "hit_shuffled"]
    if not pairs:
        return pd.DataFrame(columns=cols)
    p, c = (np.array(v, dtype=np.int64) for v in zip(*pairs))
    kids, inv = np.unique(c, return_inverse=True)
    Xf = (X.detach().float().cpu().numpy() if torch.is_tensor(X) else np.asarray(X, np.float32)).astype(np.float64)
    mu = Xf.mean(0)
    cov = np.cov(Xf, rowvar=False)
    cov[np.diag_indices_from(cov)] += ridge * np.trace(cov) / len(cov)
    mean_c = np.asarray(A[:, kids].T @ Xf) / n[kids][:, None]
    probe = np.linalg.solve(cov, (mean_c - mu).T).T                # one Fisher direction per child
    W = W_dec.detach().float().cpu().numpy() if torch.is_tensor(W_dec) else np.asarray(W_dec, np.float32)
    W = (W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)).astype(np.float64)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, 7])
    ps = dense[rng.integers(0, len(dense), len(p))]
    for i in np.nonzero((ps == p) | (ps == c))[0]:                 # another dense latent than the pair's own
        others = dense[(dense != p[i]) & (dense != c[i])]
        ps[i] = others[rng.integers(0, len(others))] if len(others) else ps[i]
    imp, imp_s = _pair_counts(A, c, p) / n[c], _pair_counts(A, c, ps) / n[c]
    pr, cr, sr = _ranks(probe, W, inv, (p, c, ps))
    return pd.DataFrame({"parent": p, "child": c, "n_child": n[c], "p_parent_given_child": imp,
                         "parent_rank": pr, "child_rank": cr, "hit": (imp >= implication) & (pr <= top) & (cr <= top),
                         "shuffled_parent": ps, "p_shuffled_given_child": imp_s, "shuffled_rank": sr,
                         "hit_shuffled": (imp_s >= implication) & (sr <= top) & (cr <= top)})[cols]


def _ranks(probe: np.ndarray, W: np.ndarray, inv: np.ndarray, latents, chunk: int = 1024) -> list[np.ndarray]:
    """For each array j of ``latents``: the rank (from 1, by decreasing cosine) of decoder row j[i] among all rows
    for probe inv[i] (unit probes [m, d_in], unit rows W [d_sae, d_in]); [chunk, d_sae] similarities at a time."""
    out = [np.empty(len(inv), dtype=np.int64) for _ in latents]
    order = np.argsort(inv, kind="stable")
    for b in range(0, len(probe), chunk):
        sim = probe[b:b + chunk] @ W.T
        sel = order[(inv[order] >= b) & (inv[order] < b + chunk)]
        s = sim[inv[sel] - b]
        for o, j in zip(out, latents):
            o[sel] = (s > s[np.arange(len(sel)), j[sel]][:, None]).sum(1) + 1
    return out


def probe_score(pairs: pd.DataFrame, top: int = 5) -> dict:
    """Fraction of hierarchical pairs (``probe_pairs``), the same with random parents, their difference, and
    how often the child alone is among the ``top`` (the test's ceiling)."""
    mean = lambda v: float(np.mean(v)) if len(v) else float("nan")  # noqa: E731
    raw, base = mean(pairs.hit.astype(float)), mean(pairs.hit_shuffled.astype(float))
    return dict(score=raw - base, raw=raw, baseline=base, n_pairs=len(pairs), child_in_top=mean(pairs.child_rank <= top))
