"""Feature matching across SAEs.

Metric definitions used everywhere in this module:
- cosine: rows are L2-normalised, cos(a_i, b_j) = <a_i, b_j> / (|a_i| |b_j|).
- decoder direction of latent i: row i of W_dec [d_sae, d_in]; encoder direction: column i of W_enc
  [d_in, d_sae] (given to these functions as rows, i.e. W_enc.T).
- matching: the maximum-total-cosine one-to-one assignment (Hungarian; the optimum of
  scipy.optimize.linear_sum_assignment on -cos). With dictionaries of different sizes, every latent of
  the smaller one is matched.
- shared ratio: fraction of the matched latents whose matched cosine exceeds ``threshold`` (0.7),
  over the smaller dictionary's size.
- within-SAE top-2: cosine of each latent to its nearest *other* latent of the same SAE (the redundancy
  control for cross-SAE sharing).

Speed: ``assign`` returns the exact optimum of the dense matrix. "auto" sends square matrices to lapjv
(Jonker-Volgenant with vectorised inner loops) and rectangular ones to scipy: on trained SAEs of the
default sweep lapjv is 2-10x faster than scipy on the hard instances (decoders that left their init, e.g.
ReLU-L1 against TopK: ~12 s -> ~4 s at 4,608 x 4,608) and about as fast elsewhere
(``benchmarks/bench_matching.py``). "sparse" first tries a certified sparse solve: the assignment on a
sparse candidate graph (each row's top-m columns, each column's best row, one random permutation so that a
full matching exists), then a proof that it is optimal for the full matrix by LP duality: minimal column
prices q >= 0 (Bellman-Ford longest paths over the graph's arcs) must satisfy
C[i, j] - q[j] <= C[i, s(i)] - q[s(i)] for *every* entry (screened in float32, confirmed in float64).
Violating rows bring their top-m columns of C - q into the graph and it is solved again; when this stalls
(violations not falling) or does not certify, "auto" answers. A certified answer has the dense optimum's
total cosine (the same pairs unless there are ties). It pays off only where rows have clear partners or
none (near-init or different-seed dictionaries); on the default sweep it is slower than "auto" overall.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import lapjv
import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from ..tensors import as_np32 as _np32, normalize_rows

THRESHOLD = 0.7
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)  # decoder shared ratio is also reported at each (dec_shared_50 ... _90)
PAIR_COLUMNS = ["a", "b", "n_a", "n_b", "dec_shared", "dec_mean_cos", "enc_shared", "enc_mean_cos", "agree", "top2_a",
                "top2_b"] + [f"dec_shared_{round(t * 100)}" for t in THRESHOLDS]


def cosine_matrix(A, B) -> np.ndarray:
    """cos[i, j] between row i of A and row j of B (float32 [n_a, n_b])."""
    return torch.from_numpy(normalize_rows(A)).matmul(torch.from_numpy(normalize_rows(B)).T).numpy()


# ---------------------------------------------------------------- assignment
def _topk(C: np.ndarray, m: int) -> np.ndarray:
    return torch.from_numpy(C).topk(min(m, C.shape[1]), dim=1, sorted=False).indices.numpy()


def assign(C, method: str = "auto", m: int = 20, max_rounds: int = 12):
    """Maximum-total-weight one-to-one assignment of C [n_a, n_b]; returns (rows, cols) sorted by row.

    Same optimum as ``scipy.optimize.linear_sum_assignment(C, maximize=True)``. method: "auto" (lapjv when
    square, else scipy), "sparse" (certified sparse solve, module docstring; "auto" when not certified),
    "scipy" (the reference call).
    """
    if method not in ("auto", "sparse", "scipy"):
        raise ValueError(f"method must be auto, sparse or scipy, got {method!r}")
    C = _np32(C)
    if C.shape[0] > C.shape[1]:
        c, r = assign(C.T, method, m, max_rounds)
        order = np.argsort(r)
        return r[order], c[order]
    sig = _sparse_assign(C, m, max_rounds) if method == "sparse" and len(C) else None
    if sig is not None:
        return np.arange(len(C)), sig
    if method == "scipy" or C.shape[0] != C.shape[1] or len(C) < 2:
        return linear_sum_assignment(C, maximize=True)
    return np.arange(len(C)), lapjv.lapjv(-C.astype(np.float64))[0].astype(np.int64)  # lapjv minimises


def _dual_violations(C, sig, a, q, m, block=256):
    """Rows i whose assignment breaks dual feasibility, max_{j != s(i)} C[i, j] - q[j] > a[i] - q[s(i)]
    (screened in float32 by row blocks, confirmed in float64), with their top-m columns of C - q."""
    n, k = C.shape
    q32, buf = q.astype(np.float32), np.empty((min(block, n), k), np.float32)
    bad, new = [], []
    for b0 in range(0, n, block):
        S = buf[:min(block, n - b0)]
        np.subtract(C[b0:b0 + len(S)], q32[None, :], out=S)
        r = np.arange(len(S))
        S[r, sig[b0:b0 + len(S)]] = -np.inf
        base = a[b0:b0 + len(S)] - q[sig[b0:b0 + len(S)]]
        slack = S.max(1) - base.astype(np.float32)
        viol = slack > 1e-5
        near = np.nonzero(np.abs(slack) <= 1e-5)[0]  # near-ties: decide in float64
        if len(near):
            r_, j_ = np.nonzero(S[near] >= (base[near] - 2e-5).astype(np.float32)[:, None])
            v = C[b0 + near[r_], j_].astype(np.float64) - q[j_] - base[near[r_]] > 1e-12
            viol[near[np.unique(r_[v])]] = True
        if viol.any():
            bad.append(b0 + np.nonzero(viol)[0])
            new.append(_topk(np.ascontiguousarray(S[viol]), m))
    if not bad:
        return np.zeros(0, np.int64), np.zeros((0, m), np.int64)
    return np.concatenate(bad), np.concatenate(new)


def _sparse_assign(C: np.ndarray, m: int, max_rounds: int):
    """Certified sparse solve (module docstring); the column of each row, or None. Weights are shifted to
    >= 1 for scipy (which drops zeros); a constant shift does not change the optimal full matching."""
    n, k = C.shape
    ar = np.arange(n)
    # candidates: each row's top-m columns, each column's best rows, and a random permutation so that a
    # full matching always exists inside the graph (its edges are real entries; the certificate decides)
    cmax = C.max(0)
    best = [np.nonzero(C[b:b + 256] >= cmax) for b in range(0, n, 256)]
    cr = np.concatenate([r + b for (r, _), b in zip(best, range(0, n, 256))])
    cc = np.concatenate([c for _, c in best])
    perm = np.random.default_rng(0).permutation(k)[:n]
    rows = np.concatenate([np.repeat(ar, min(m, k)), cr, ar])
    cols = np.concatenate([_topk(C, m).ravel(), cc, perm])
    sig_old, q, n_bad = None, np.zeros(k), n
    for rnd in range(max_rounds):
        key = np.unique(rows.astype(np.int64) * k + cols)
        rows, cols = key // k, key % k
        vals = C[rows, cols].astype(np.float64)
        try:
            G = csr_matrix((vals - vals.min() + 1.0, (rows, cols)), shape=(n, k))
            _, sig = min_weight_full_bipartite_matching(G, maximize=True)
        except ValueError:
            return None
        a = C[ar, sig].astype(np.float64)
        # minimal prices q >= 0 with q[j] >= q[s(i)] + C[i, j] - a[i] on every candidate arc s(i) -> j
        # (Bellman-Ford; a larger graph with the same s only raises the minimal q, so warm-start then)
        if sig_old is None or not np.array_equal(sig, sig_old):
            q = np.zeros(k)
        sig_old = sig
        off = sig[rows] != cols
        src, dst, w = sig[rows[off]], cols[off], vals[off] - a[rows[off]]
        order = np.argsort(dst, kind="stable")
        src, dst, w = src[order], dst[order], w[order]
        udst, start = np.unique(dst, return_index=True)
        for _ in range(k + 2):
            best = np.maximum.reduceat(q[src] + w, start) if len(w) else np.zeros(0)
            up = best > q[udst] + 1e-12
            if not up.any():
                break
            q[udst[up]] = best[up]
        else:
            return None  # positive cycle: s is not optimal on the graph (rounding); use the dense solver
        free = np.ones(k, bool)
        free[sig] = False
        if (q[free] > 1e-9).any():
            return None
        bad, new = _dual_violations(C, sig, a, q, m)
        if len(bad) == 0:
            return sig
        if rnd and len(bad) > max(0.7 * n_bad, n / 10):
            return None  # column generation stalls (many rows want unseen columns): dense is faster
        n_bad = len(bad)
        rows = np.concatenate([rows, np.repeat(bad, new.shape[1])])
        cols = np.concatenate([cols, new.ravel()])
    return None


# ---------------------------------------------------------------- features of one pair
def match_features(A, B, method: str = "auto") -> pd.DataFrame:
    """Hungarian matching of the rows of A [n_a, d] to the rows of B [n_b, d] by cosine.

    Pass decoder rows (W_dec) or encoder columns (W_enc.T): the caller chooses which directions.
    Returns DataFrame(i, j, cos), one row per latent of the smaller side, sorted by i.
    """
    C = cosine_matrix(A, B)
    r, c = assign(C, method)
    return pd.DataFrame({"i": r.astype(np.int64), "j": c.astype(np.int64), "cos": C[r, c].astype(np.float64)})


def shared_ratio(cos, threshold: float = THRESHOLD) -> float:
    """Fraction of matched latents with cosine > threshold (cos: the matched cosines)."""
    cos = np.asarray(cos, dtype=np.float64)
    return float((cos > threshold).mean()) if len(cos) else float("nan")


def within_sae_top2(W, block: int = 1024) -> np.ndarray:
    """Cosine of each row of W [n, d] to its nearest *other* row of the same matrix ([n] float64)."""
    U = torch.from_numpy(normalize_rows(W))
    out = np.empty(len(U))
    for b in range(0, len(U), block):
        S = U[b:b + block] @ U.T
        S[torch.arange(len(S)), torch.arange(b, b + len(S))] = -2.0
        out[b:b + len(S)] = S.max(1).values.double().numpy()
    return out


def directions(sae, kind: str = "decoder"):
    """Dictionary directions as rows [d_sae, d_in] (float32 numpy), or None when undefined.

    decoder: W_dec. encoder: W_enc.T; for multi-level SAEs the levels' encoders concatenated when every
    level reads the input space (residual, tree), else None (stacked: deeper levels read codes).
    ``sae`` may also be a dict with "W_dec" / "W_enc" arrays.
    """
    get = sae.get if isinstance(sae, dict) else (lambda k: getattr(sae, k, None))
    if kind == "decoder":
        W = get("W_dec")
        return None if W is None else _np32(W)
    if kind != "encoder":
        raise ValueError(f"kind must be 'decoder' or 'encoder', got {kind!r}")
    W = get("W_enc")
    if W is not None:
        return _np32(W).T.copy()
    encs, dec = get("encoders"), get("W_dec")
    if encs is None or dec is None:
        return None
    Ws = [_np32(e.W_enc) for e in encs]
    if any(w.shape[0] != dec.shape[1] for w in Ws):
        return None
    return np.concatenate(Ws, axis=1).T.copy()


def match_pair(sae_a, sae_b, method: str = "auto") -> pd.DataFrame:
    """Per-latent matches of one pair: i (latent of the smaller SAE, a when equal), j_dec, cos_dec,
    j_enc, cos_enc (NaN where encoder directions are undefined), and the encoder-matched latent's
    decoder cosine ``cos_dec_at_enc`` (cos of decoder rows i, j_enc), the disagreement the paper shows."""
    Da, Db = directions(sae_a, "decoder"), directions(sae_b, "decoder")
    Ea, Eb = directions(sae_a, "encoder"), directions(sae_b, "encoder")
    swap = len(Da) > len(Db)
    if swap:
        Da, Db, Ea, Eb = Db, Da, Eb, Ea
    dec = match_features(Da, Db, method)
    out = pd.DataFrame({"i": dec.i, "j_dec": dec.j, "cos_dec": dec.cos})
    if Ea is not None and Eb is not None:
        enc = match_features(Ea, Eb, method)
        Ua, Ub = normalize_rows(Da), normalize_rows(Db)
        out["j_enc"], out["cos_enc"] = enc.j.to_numpy(), enc.cos.to_numpy()
        out["cos_dec_at_enc"] = (Ua[enc.i] * Ub[enc.j]).sum(1).astype(np.float64)
    else:
        out["j_enc"], out["cos_enc"], out["cos_dec_at_enc"] = -1, np.nan, np.nan
    out["swapped"] = swap
    return out


# ---------------------------------------------------------------- many SAEs
@functools.cache
def _code_digest() -> bytes:
    """This module's source and the solvers' versions: a change to either invalidates cached pair rows."""
    libs = " ".join(version(p) for p in ("numpy", "scipy", "torch", "lapjv"))
    return hashlib.sha256(Path(__file__).read_bytes() + libs.encode()).digest()


def _digest(*arrays) -> bytes:
    h = hashlib.sha256()
    for W in arrays:
        h.update(b"none" if W is None else f"{W.dtype}{W.shape}".encode())
        if W is not None:
            h.update(np.ascontiguousarray(W).data)
    return h.digest()


def pair_key(digest_a: bytes, digest_b: bytes, threshold: float, method: str) -> str:
    """Cache key of one ordered pair's ``compare_saes`` row: the two SAEs' unit decoder and encoder directions
    (digests), threshold, method, and ``_code_digest``."""
    params = f"{method}|{float(threshold).hex()}".encode()
    return hashlib.sha256(_code_digest() + digest_a + digest_b + params).hexdigest()


def compare_saes(saes: dict, pairs=None, threshold: float = THRESHOLD, method: str = "auto",
                 features: bool = False, n_jobs: int = 1, cache=None):
    """Match every pair (default: all unordered pairs, in dict order) by decoder and by encoder.

    Per pair: n_a, n_b; dec_shared / enc_shared = shared ratio (cos > threshold, over the smaller SAE);
    dec_mean_cos / enc_mean_cos = mean matched cosine; agree = fraction of latents whose decoder and
    encoder partners coincide; top2_a / top2_b = within-SAE control, fraction of latents whose nearest
    other decoder row has cos > threshold; dec_shared_50 ... dec_shared_90: decoder shared ratio at THRESHOLDS.
    features=True also returns the per-latent table (``match_pair`` columns plus a, b) as a second DataFrame. n_jobs: pairs matched concurrently
    (threads; the result does not depend on it). Cost per 4,608 x 4,608 pair: two GEMMs and two exact
    assignments, 1.7 s on average over the default sweep's 496 pairs on 2 cores with n_jobs=2 (0.3 s to
    ~15 s, see the module docstring); ``single_factor_pairs`` / ``layer_pairs`` pick the pairs the factor
    and layer analyses need when all pairs are too many.

    cache: None, or a thread-safe store with ``get(key)`` (a row without a, b, or None) and ``cache[key] = row``
    (a dict, or ``stages.matching.PairCache`` on disk), keyed by ``pair_key``. Cached pairs are not recomputed
    (features=True recomputes all: per-latent tables are not cached); each computed row is stored as soon as
    its pair finishes, so an interrupted call loses only the pairs in flight. The table is the same either way.
    """
    names = list(saes)
    pairs = list(itertools.combinations(names, 2)) if pairs is None else [tuple(p) for p in pairs]
    used = list(dict.fromkeys(n for p in pairs for n in p))
    dirs, digest = {}, {}
    for n in used:
        d, e = normalize_rows(directions(saes[n], "decoder")), directions(saes[n], "encoder")
        e = None if e is None else normalize_rows(e)
        dirs[n] = dict(W_dec=d, W_enc=None if e is None else e.T)
        digest[n] = _digest(d, e) if cache is not None else None
    keys = [pair_key(digest[a], digest[b], threshold, method) if cache is not None else None for a, b in pairs]
    rows = [cache.get(k) if cache is not None and not features else None for k in keys]
    todo = [i for i, r in enumerate(rows) if r is None]
    if cache is not None:
        print(f"matching: {len(pairs) - len(todo)}/{len(pairs)} pairs cached, {len(todo)} to compute", flush=True)
    top2 = {n: float((within_sae_top2(dirs[n]["W_dec"]) > threshold).mean())
            for n in dict.fromkeys(x for i in todo for x in pairs[i])}
    done, step = itertools.count(1), max(1, len(todo) // 10)

    def one(i):
        a, b = pairs[i]
        f = match_pair(dirs[a], dirs[b], method)
        enc = bool(f.cos_enc.notna().all())
        row = dict(n_a=len(dirs[a]["W_dec"]), n_b=len(dirs[b]["W_dec"]),
                   dec_shared=shared_ratio(f.cos_dec, threshold), dec_mean_cos=float(f.cos_dec.mean()),
                   enc_shared=shared_ratio(f.cos_enc, threshold) if enc else np.nan,
                   enc_mean_cos=float(f.cos_enc.mean()) if enc else np.nan,
                   agree=float((f.j_dec == f.j_enc).mean()) if enc else np.nan, top2_a=top2[a], top2_b=top2[b],
                   **{f"dec_shared_{round(t * 100)}": shared_ratio(f.cos_dec, t) for t in THRESHOLDS})
        if cache is not None:
            cache[keys[i]] = row
            if (k := next(done)) % step == 0:
                print(f"matching: {k}/{len(todo)} computed", flush=True)
        return row, (f.assign(a=a, b=b) if features else None)

    if n_jobs > 1:
        ex = ThreadPoolExecutor(n_jobs)
        try:
            out = list(ex.map(one, todo))
        finally:  # on Ctrl-C: finish the pairs in flight, drop the queued ones
            ex.shutdown(wait=True, cancel_futures=True)
    else:
        out = [one(i) for i in todo]
    for i, (r, _) in zip(todo, out):
        rows[i] = r
    table = pd.DataFrame([dict(a=a, b=b, **r) for (a, b), r in zip(pairs, rows)], columns=PAIR_COLUMNS)
    if not features:
        return table
    feats = [f for _, f in out]
    return table, (pd.concat(feats, ignore_index=True) if feats else pd.DataFrame())


# ---------------------------------------------------------------- 2-D map of decoder directions
def decoder_embedding(saes: dict, method: str = "umap", seed: int = 0, max_per_sae: int | None = 2000,
                      n_neighbors: int = 15, min_dist: float = 0.1, perplexity: float = 30.0) -> pd.DataFrame:
    """2-D embedding of unit decoder rows of several SAEs together (cosine metric).

    method "umap" (umap-learn, metric cosine) or "tsne" (sklearn when installed, else an error).
    max_per_sae: latents per SAE kept (a seeded random subset) to bound the cost; None keeps all.
    Returns DataFrame(x, y, sae, feature).
    """
    rng = np.random.default_rng(seed)
    X, tags = [], []
    for name, sae in saes.items():
        W = normalize_rows(directions(sae, "decoder"))
        idx = np.arange(len(W)) if max_per_sae is None or len(W) <= max_per_sae else np.sort(
            rng.choice(len(W), max_per_sae, replace=False))
        X.append(W[idx])
        tags.append(pd.DataFrame({"sae": name, "feature": idx}))
    X = np.concatenate(X)
    if method == "umap":
        import umap  # noqa: PLC0415  (its first import compiles numba code: ~15 s a stage without a UMAP should not pay)
        emb = umap.UMAP(n_neighbors=min(n_neighbors, len(X) - 1), min_dist=min_dist, metric="cosine",
                        random_state=seed, n_jobs=1).fit_transform(X)
    elif method == "tsne":
        from sklearn.manifold import TSNE  # noqa: PLC0415  (as umap: only when a t-SNE is asked for)
        emb = TSNE(2, perplexity=min(perplexity, (len(X) - 1) / 3), metric="cosine", init="pca",
                   random_state=seed).fit_transform(X)
    else:
        raise ValueError(f"method must be 'umap' or 'tsne', got {method!r}")
    out = pd.concat(tags, ignore_index=True)
    out.insert(0, "y", emb[:, 1].astype(np.float64))
    out.insert(0, "x", emb[:, 0].astype(np.float64))
    return out
