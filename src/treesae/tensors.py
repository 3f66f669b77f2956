"""Small tensor helpers every part of the library shares (one home each)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor


def dense(z: Tensor) -> Tensor:
    """``z`` as a strided tensor (codes come dense or as sparse COO)."""
    return z.to_dense() if z.layout != torch.strided else z


@torch.no_grad()
def fired(z: Tensor) -> Tensor:
    """bool [d_sae]: latents with a non-zero code for some token of ``z`` [B, d_sae] (dense or sparse COO)."""
    if z.layout == torch.sparse_coo:
        idx, vals = z._indices(), z._values()
        return torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device).index_fill_(0, idx[-1][vals != 0], True)
    return z.amax(dim=0) > 0  # codes are >= 0 (every architecture ends in a ReLU); amax is ~4x faster than (z != 0).any(0)


@contextlib.contextmanager
def eval_mode(*modules):
    """Put ``modules`` (anything with ``.training``; others are skipped) in eval mode, then restore each one's mode."""
    mods = [m for m in modules if hasattr(m, "training")]
    was = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        yield modules[0] if len(modules) == 1 else modules
    finally:
        for m, w in zip(mods, was):
            m.train(w)


def get_rows(data, idx: Tensor) -> Tensor:
    """data[idx] as a float32 tensor (data: torch.Tensor or numpy array/memmap, any float dtype)."""
    if torch.is_tensor(data):
        return data[idx].to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(data[idx.numpy()])).to(torch.float32)


def as_np32(W) -> np.ndarray:
    """A tensor or array as a C-contiguous float32 numpy array."""
    if torch.is_tensor(W):
        W = W.detach().float().cpu().numpy()
    return np.ascontiguousarray(W, dtype=np.float32)


def normalize_rows(W) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    W = as_np32(W)
    n = np.linalg.norm(W, axis=1, keepdims=True)
    return W / np.where(n > 0, n, 1)
