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
from pathlib import Path

import lapjv
import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

THRESHOLD = 0.7
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)  # decoder shared ratio is also reported at each (dec_shared_50 ... _90)
CI = 0.95
BOOT_TAG = 0xB007  # the bootstrap's stream, apart from every other stream seeded with the same seed
FACTORS = ("corpus", "seed", "architecture", "k", "d_sae", "b_dec_init", "tied_init", "layer")
PAIR_COLUMNS = ["a", "b", "n_a", "n_b", "dec_shared", "dec_mean_cos", "enc_shared", "enc_mean_cos", "agree", "top2_a",
                "top2_b"] + [f"dec_shared_{round(t * 100)}" for t in THRESHOLDS]


def _np32(W) -> np.ndarray:
    if torch.is_tensor(W):
        W = W.detach().float().cpu().numpy()
    return np.ascontiguousarray(W, dtype=np.float32)


def normalize_rows(W) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    W = _np32(W)
    n = np.linalg.norm(W, axis=1, keepdims=True)
    return W / np.where(n > 0, n, 1)


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


def cosine_to_init(sae) -> np.ndarray:
    """Cosine of each decoder row to the same row of a freshly initialised SAE of the same config
    (its config holds the init seed, hence the same random decoder): how far training moved each feature."""
    return (normalize_rows(directions(sae)) * normalize_rows(directions(type(sae)(sae.cfg)))).sum(1).astype(np.float64)


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
    from importlib.metadata import version
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
    from concurrent.futures import ThreadPoolExecutor
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


def differing_factor(meta: pd.DataFrame, a, b, factors=FACTORS):
    """The single factor in which SAEs a and b (index labels of meta) differ, "none", or None when
    they differ in several. Only factors that are columns of meta count."""
    cols = [f for f in factors if f in meta.columns]
    diff = [f for f in cols if not _same(meta.at[a, f], meta.at[b, f])]
    return "none" if not diff else diff[0] if len(diff) == 1 else None


def _same(x, y) -> bool:
    return (pd.isna(x) and pd.isna(y)) if (pd.isna(x) or pd.isna(y)) else x == y


def single_factor_pairs(meta: pd.DataFrame, factors=FACTORS) -> list[tuple]:
    """All unordered pairs of meta's index that differ in exactly one factor (what factor_table needs)."""
    return [(a, b) for a, b in itertools.combinations(meta.index, 2)
            if differing_factor(meta, a, b, factors) not in (None, "none")]


def factor_table(pairs: pd.DataFrame, meta: pd.DataFrame, factors=FACTORS) -> pd.DataFrame:
    """Shared ratio by the one training factor that differs between the two SAEs of a pair.

    pairs: ``compare_saes`` output (columns a, b, dec_shared, enc_shared, ...); meta: one row per SAE,
    indexed by name, with factor columns (corpus, seed, architecture, k, d_sae, b_dec_init, tied_init,
    layer; missing ones are ignored). Pairs differing in several factors are dropped.
    Returns per factor: n_pairs, mean/min/max of dec_shared, mean enc_shared and mean dec_mean_cos,
    sorted by mean dec_shared (ascending: the factor that changes features most first).
    """
    p = pairs.copy()
    p["factor"] = [differing_factor(meta, a, b, factors) for a, b in zip(p.a, p.b)]
    p = p[p.factor.notna() & (p.factor != "none")]
    g = p.groupby("factor")
    out = pd.DataFrame({"n_pairs": g.size(), "dec_shared": g.dec_shared.mean(), "dec_shared_min": g.dec_shared.min(),
                        "dec_shared_max": g.dec_shared.max(), "enc_shared": g.enc_shared.mean(),
                        "dec_mean_cos": g.dec_mean_cos.mean()})
    return out.sort_values("dec_shared").reset_index()


def _sae_bootstrap(pairs: pd.DataFrame, n_boot: int, seed: int) -> np.ndarray:
    """Weights [n_boot, n_pairs] of a bootstrap over SAEs: each replicate draws the SAEs with replacement and a
    pair counts the product of its two SAEs' multiplicities (pairs sharing an SAE are not independent)."""
    names = pd.unique(pd.concat([pairs.a, pairs.b]))
    idx = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng([seed, BOOT_TAG])
    counts = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_boot).astype(np.float64)
    return counts[:, pairs.a.map(idx).to_numpy()] * counts[:, pairs.b.map(idx).to_numpy()]


def _wmean(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    tot = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (w * v).sum(1) / np.where(tot > 0, tot, 1), np.nan)


def interval(boot: np.ndarray, ci: float = CI) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates, where a resample lost a group, left out)."""
    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    if len(b) < 10:
        return float("nan"), float("nan")
    return float(np.quantile(b, (1 - ci) / 2)), float(np.quantile(b, (1 + ci) / 2))


def seeds_differ(pairs: pd.DataFrame, meta: pd.DataFrame) -> np.ndarray:
    """Bool per pair (columns a, b: index labels of meta): its two SAEs have different seeds."""
    if "seed" not in meta.columns:
        return np.zeros(len(pairs), dtype=bool)
    return np.array([not _same(meta.at[a, "seed"], meta.at[b, "seed"]) for a, b in zip(pairs.a, pairs.b)], dtype=bool)


def cross_seed_sharing(pairs: pd.DataFrame, meta: pd.DataFrame, run, factors=FACTORS, column: str = "dec_shared",
                       n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean ``column`` over pairs of SAEs that differ only in seed and share every other factor with ``run``
    (an index label of meta), with a bootstrap interval over SAEs: n_pairs, mean, lo, hi."""
    cols = [f for f in factors if f in meta.columns and f != "seed"]
    like = meta.index[[all(_same(meta.at[n, f], meta.at[run, f]) for f in cols) for n in meta.index]]
    p = pairs[pairs.a.isin(like) & pairs.b.isin(like)]
    p = p[seeds_differ(p, meta)]
    if not len(p):
        return dict(n_pairs=0, mean=float("nan"), lo=float("nan"), hi=float("nan"))
    v = p[column].to_numpy(np.float64)
    lo, hi = interval(_wmean(_sae_bootstrap(p, n_boot, seed), v))
    return dict(n_pairs=len(p), mean=float(v.mean()), lo=lo, hi=hi)


def factor_effects(pairs: pd.DataFrame, meta: pd.DataFrame, factors=FACTORS, column: str = "dec_shared",
                   n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How much each factor changes the learned features, from pairs whose two SAEs have different seeds.

    For factor F, among pairs that differ in seed and agree on every factor but F: ``within`` = mean ``column``
    of those at the same level of F, ``between`` = of those at different levels. effect = within - between, the
    sharing lost by changing F beyond what a new seed loses (0: F changes nothing a seed does not). Interval:
    percentile bootstrap over SAEs (``_sae_bootstrap``), the same replicates for every factor, returned as the
    second table ([n_boot, factor]) so that contrasts between factors get intervals too (``interval``).
    Rows: factor, n_within, n_between, within, between, effect, lo, hi, for factors with pairs of both kinds.
    """
    cols = [f for f in factors if f in meta.columns and f != "seed"]
    p = pairs[seeds_differ(pairs, meta)].reset_index(drop=True)
    w = _sae_bootstrap(p, n_boot, seed) if len(p) else np.zeros((n_boot, 0))
    v = p[column].to_numpy(np.float64)
    rows, boot = [], {}
    for f in cols:
        others = [g for g in cols if g != f]
        same_rest = np.array([all(_same(meta.at[a, g], meta.at[b, g]) for g in others) for a, b in zip(p.a, p.b)], bool)
        same_f = np.array([_same(meta.at[a, f], meta.at[b, f]) for a, b in zip(p.a, p.b)], bool)
        win, btw = same_rest & same_f, same_rest & ~same_f
        if not win.any() or not btw.any():
            continue
        boot[f] = _wmean(w * win, v) - _wmean(w * btw, v)
        rows.append(dict(factor=f, n_within=int(win.sum()), n_between=int(btw.sum()), within=float(v[win].mean()),
                         between=float(v[btw].mean()), effect=float(v[win].mean() - v[btw].mean()),
                         **dict(zip(("lo", "hi"), interval(boot[f])))))
    cols_out = ["factor", "n_within", "n_between", "within", "between", "effect", "lo", "hi"]
    return pd.DataFrame(rows, columns=cols_out), pd.DataFrame(boot)


def layer_pairs(meta: pd.DataFrame, factors=FACTORS) -> list[tuple]:
    """Pairs of SAEs at adjacent layers that agree on every other factor (matching along layers).
    Adjacent: consecutive among the layers present in meta (harvested layers are often spaced, e.g.
    3, 9, 15, 21), not necessarily one block apart."""
    rank = {L: i for i, L in enumerate(sorted(set(meta["layer"])))}
    out = []
    for a, b in itertools.combinations(meta.index, 2):
        if differing_factor(meta, a, b, factors) == "layer" and abs(rank[meta.at[a, "layer"]] - rank[meta.at[b, "layer"]]) == 1:
            out.append((a, b) if meta.at[a, "layer"] < meta.at[b, "layer"] else (b, a))
    return out


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
        import umap
        emb = umap.UMAP(n_neighbors=min(n_neighbors, len(X) - 1), min_dist=min_dist, metric="cosine",
                        random_state=seed, n_jobs=1).fit_transform(X)
    elif method == "tsne":
        from sklearn.manifold import TSNE
        emb = TSNE(2, perplexity=min(perplexity, (len(X) - 1) / 3), metric="cosine", init="pca",
                   random_state=seed).fit_transform(X)
    else:
        raise ValueError(f"method must be 'umap' or 'tsne', got {method!r}")
    out = pd.concat(tags, ignore_index=True)
    out.insert(0, "y", emb[:, 1].astype(np.float64))
    out.insert(0, "x", emb[:, 0].astype(np.float64))
    return out
