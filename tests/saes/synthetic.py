"""Planted sparse data for SAE tests: a known dictionary, optionally with a parent/child hierarchy.

    from synthetic import planted_dictionary      # tests/saes is on sys.path for tests in it
    X, true_dirs, parent_of = planted_dictionary(d_in=32, n_features=64, k=4, n_samples=4096, seed=0)
"""
from __future__ import annotations

import torch
from torch import Tensor


def planted_dictionary(d_in: int, n_features: int, k: int, n_samples: int, seed: int = 0,
                       hierarchy: tuple[int, int] | None = None, *, noise: float = 0.0,
                       child_parent_cos: float = 0.0, child_prob: float = 1.0) -> tuple[Tensor, Tensor, Tensor | None]:
    """``X = codes @ true_dirs (+ noise * N(0, 1))`` with k active features per sample.

    Features are random unit directions; active ones get magnitudes uniform in [0.5, 1.5].
    Without ``hierarchy`` each sample activates k features chosen uniformly.
    With ``hierarchy=(n_parents, children_per_parent)`` (P, C): features 0..P-1 are parents and
    parent p's children are ``P + p*C + c`` for c < C (so ``n_features`` must be ``P * (1 + C)``);
    each sample activates k/2 parents (k even) and one child of each, so a child never fires
    without its parent. With ``child_prob < 1`` each active parent fires a child only with that
    probability (a parent that always brings a child invites absorbing the children's mean into
    the parent's latent); L0 is then between k/2 and k. ``child_parent_cos`` sets the cosine
    between a child's direction and its parent's exactly (0: independent random directions).

    Returns ``X`` float32 [n_samples, d_in], ``true_dirs`` [n_features, d_in] (unit rows) and
    ``parent_of`` LongTensor [n_features] (-1 for parents), or None without a hierarchy.
    """
    if not 0 < k <= n_features:
        raise ValueError(f"k={k} must be in 1..n_features={n_features}")
    if not 0 <= child_prob <= 1:
        raise ValueError(f"child_prob={child_prob} must be in [0, 1]")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_features, d_in, generator=gen)
    dirs /= dirs.norm(dim=1, keepdim=True)
    parent_of = None
    if hierarchy is None:
        idx = torch.rand(n_samples, n_features, generator=gen).topk(k, dim=1).indices
    else:
        P, C = hierarchy
        if n_features != P * (1 + C):
            raise ValueError(f"hierarchy {hierarchy} needs n_features = {P} * (1 + {C}) = {P * (1 + C)}, got {n_features}")
        if k % 2 or k // 2 > P:
            raise ValueError(f"with a hierarchy k counts parents and children: it must be even and k/2 <= {P}, got {k}")
        parent_of = torch.cat([torch.full((P,), -1), torch.arange(P).repeat_interleave(C)])
        if child_parent_cos:  # child = c * parent + sqrt(1 - c^2) * (unit vector orthogonal to the parent)
            c, par = child_parent_cos, dirs[parent_of[P:]]
            r = dirs[P:] - (dirs[P:] * par).sum(1, keepdim=True) * par
            dirs[P:] = c * par + (1 - c * c) ** 0.5 * r / r.norm(dim=1, keepdim=True)
        parents = torch.rand(n_samples, P, generator=gen).topk(k // 2, dim=1).indices
        children = P + parents * C + torch.randint(C, parents.shape, generator=gen)
        idx = torch.cat([parents, children], dim=1)
    mags = 0.5 + torch.rand(idx.shape, generator=gen)
    if hierarchy is not None and child_prob < 1:
        mags[:, k // 2:] *= torch.rand(children.shape, generator=gen) < child_prob
    codes = torch.zeros(n_samples, n_features).scatter_(1, idx, mags)
    X = codes @ dirs
    if noise:
        X += noise * torch.randn(X.shape, generator=gen)
    return X, dirs, parent_of
