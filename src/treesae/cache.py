"""Activation cache: residual-stream activations as memory-mapped ``.npy`` shards plus ``meta.json``.

Layout of a cache directory::

    meta.json                 model, d_model, layers, hook, context_len, n_contexts, dtype, shards with sha256
    tokens.npy doc_ids.npy split.npy          int32 [n_ctx, ctx_len], [n_ctx], [n_ctx] (0 train, 1 heldout)
    shards/layer<L>_<i>.npy   [n_ctx_in_shard, ctx_len, d_model]; position p of a context is token p of it
    summary.csv               per-layer, per-position residual statistics over every layer of the model

A cache is written into ``data/.partial/activations-<corpus>``, one shard at a time (each write
atomic, progress recorded in ``progress.json``), and renamed into place only when complete; so an
interrupted harvest resumes where it stopped and a reader never sees a partial cache.

Nothing reads a shard that differs from what the harvest wrote: the first access to a layer
(``layer``, ``activations``) checks each of its shards' sha256 against ``meta.json`` (a flipped byte,
a swapped shard, a shard copied from another layer) and its statistics against the harvest's own
per-layer summary (all-zero, constant or off-scale data). Both run once per layer and process, at
about the cost of reading the layer once more from the page cache.
"""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .io import sha256_file

SCALE_TOLERANCE = 4.0  # a shard's median token norm may differ from the harvest summary's by this factor
HELDOUT_TAG = 0x4E1D0  # keeps the held-out context draw apart from every other stream seeded with the same seed


def sink_mask(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool over the tokens of ``x`` [..., d_model]: attention sinks, whose norm exceeds ``ratio`` times the
    median token norm of ``x``. In SmolLM2 they sit at position 0 and, in ~2% of contexts, at position 1 or 2,
    with ~170x the median norm: 0.017% of the tokens after position 0 carry 88% of the centred variance, so
    one more or one fewer in a sample changes its FVU by 2x (docs/LOG.md, "Attention sinks")."""
    n = x.float().norm(dim=-1)
    return n > ratio * n.median()


class CacheError(RuntimeError):
    pass


def hook_name(layer: int, hook: str = "hook_resid_pre") -> str:
    """transformer_lens' name of a residual-stream hook (the cache holds ``hook_resid_pre``)."""
    return f"blocks.{layer}.{hook}"


class ShardedArray:
    """Read-only view of one layer's shards as a single [n_ctx, ctx_len, d_model] array."""

    def __init__(self, files, counts, shape, dtype):
        self.files, self.shape, self.dtype = files, tuple(shape), np.dtype(dtype)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self._maps = [None] * len(files)

    def __len__(self):
        return self.shape[0]

    def shard(self, i):
        if self._maps[i] is None:
            self._maps[i] = np.load(self.files[i], mmap_mode="r")
        return self._maps[i]

    def __getitem__(self, idx):
        """Contexts by an int, a slice or an index array (further dims may follow)."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        rows = np.arange(self.shape[0])[idx[0]]
        scalar = rows.ndim == 0
        rows = np.atleast_1d(rows)
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(which):
            sel = which == s
            out[sel] = self.shard(s)[rows[sel] - self.offsets[s]]
        out = out[0] if scalar else out
        return out[(slice(None),) * (1 - scalar) + idx[1:]] if len(idx) > 1 else out


class ActivationCache:
    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self._checked = set()  # layers whose shards passed check_layer in this process
        self.tokens = np.load(self.path / "tokens.npy", mmap_mode="r")
        self.doc_ids = np.load(self.path / "doc_ids.npy", mmap_mode="r")
        self.split = np.load(self.path / "split.npy", mmap_mode="r")

    @classmethod
    def open(cls, path, expect: dict | None = None, verify: bool = False) -> "ActivationCache":
        """Open and validate a cache. ``expect`` (e.g. ``{"model": ..., "layers": [...]}``) must match
        its metadata (for ``layers``: be a subset). ``verify`` re-hashes every shard (slow, thorough)."""
        path = Path(path)
        rerun = "Re-create it with `dvc repro -f -s harvest` (or run notebooks/01_harvest.ipynb)."
        if not (path / "meta.json").exists():
            partial = path.parent.with_name(".partial") / f"{path.parent.name}-{path.name}"
            hint = f" A partial harvest is in {partial}; rerunning the harvest resumes it." if partial.exists() else ""
            raise CacheError(f"No activation cache at {path} (meta.json missing).{hint} {rerun}")
        meta = json.loads((path / "meta.json").read_text())
        for key, want in (expect or {}).items():
            have = meta.get(key)
            if key == "layers":
                missing = sorted(set(want) - set(have))
                if missing:
                    raise CacheError(f"Cache {path} holds layers {have}, not {missing}. Add them to harvest.layers in "
                                     f"params.yaml and rerun the harvest, or pick a harvested layer.")
            elif have != want:
                raise CacheError(f"Cache {path} was harvested with {key}={have!r}, but {want!r} was asked for. "
                                 f"The cache belongs to another configuration. {rerun}")
        cache = cls(path, meta)
        cache.validate(verify)
        return cache

    def validate(self, verify: bool = False):
        m = self.meta
        n, T = m["n_contexts"], m["context_len"]
        if self.tokens.shape != (n, T) or len(self.doc_ids) != n or len(self.split) != n:
            raise CacheError(f"Cache {self.path}: token arrays do not match meta.json ({self.tokens.shape} vs {(n, T)}). "
                             "The cache is corrupt; delete it and rerun the harvest.")
        for sh in m["shards"]:
            for layer, digest in sh["sha256"].items():
                f = self.shard_file(int(layer), sh["index"])
                expected = (sh["n_contexts"], T, m["d_model"])
                try:
                    arr = np.load(f, mmap_mode="r")
                except (OSError, ValueError) as e:
                    raise CacheError(f"Shard {f} is missing or unreadable ({e}). The cache is truncated or corrupt; "
                                     "delete it and rerun the harvest.") from None
                if arr.shape != expected or arr.dtype != np.dtype(m["dtype"]):
                    raise CacheError(f"Shard {f} has shape {arr.shape} {arr.dtype}, expected {expected} {m['dtype']}. "
                                     "The cache is truncated or corrupt; delete it and rerun the harvest.")
                if verify and sha256_file(f) != digest:
                    raise CacheError(f"Shard {f} fails its sha256 check. {self.repair_hint()}")

    def shard_file(self, layer: int, index: int) -> Path:
        return self.path / "shards" / f"layer{layer}_{index:05d}.npy"

    def repair_hint(self) -> str:
        return (f"Rerun the harvest: `dvc repro -f -s harvest` (-f: DVC does not re-hash a file whose size and mtime are "
                f"unchanged, so plain `dvc repro` may find nothing to do), or notebooks/01_harvest.ipynb; it keeps the "
                f"intact shards of {self.path} and recomputes only the damaged ones.")

    def check_layer(self, layer: int):
        """Refuse shards of ``layer`` whose bytes differ from the harvest's (sha256 in meta.json) or whose
        statistics are implausible (all zero, a constant dimension, a median token norm off by more than
        SCALE_TOLERANCE from the harvest's summary.csv at this layer)."""
        ref = self._summary_norm(layer)
        for sh in self.meta["shards"]:
            f, digest = self.shard_file(layer, sh["index"]), sh["sha256"].get(str(layer))
            if digest is None or sha256_file(f) != digest:
                raise CacheError(f"Shard {f} (layer {layer}) differs from what the harvest wrote: its sha256 does not "
                                 f"match meta.json (flipped bytes, or a shard swapped with or copied from another). "
                                 f"{self.repair_hint()}")
            x = np.load(f, mmap_mode="r")[:, 1:].astype(np.float32).reshape(-1, self.meta["d_model"])
            if not np.isfinite(x).all():
                raise CacheError(f"Shard {f} (layer {layer}): {int((~np.isfinite(x)).any(1).sum())} token activations are "
                                 f"NaN/inf. Delete {self.path} and rerun the harvest (dtype float32 if float16 overflowed).")
            norm = float(np.median(np.linalg.norm(x, axis=1)))
            const = np.flatnonzero(x.max(0) == x.min(0))
            problem = ("is all zero" if not x.any() else
                       f"has {len(const)} constant dimension(s) (e.g. {const[:5].tolist()})" if len(const) else
                       f"has median token norm {norm:.4g} where the harvest measured {ref:.4g} at this layer"
                       if ref and not ref / SCALE_TOLERANCE <= norm <= ref * SCALE_TOLERANCE else None)
            if problem:
                raise CacheError(f"Shard {f} (layer {layer}) {problem}: these are not this model's activations. "
                                 f"Delete {self.path} and rerun the harvest.")
        self._checked.add(layer)

    def _summary_norm(self, layer: int) -> float | None:
        """Median over positions >= 1 of the harvest summary's median token norm at ``layer``."""
        f = self.path / "summary.csv"
        if not f.exists():
            return None
        s = pd.read_csv(f)
        v = s[(s.layer == layer) & (s.position >= 1)].norm_median.median()
        return float(v) if v == v and not math.isinf(v) else None

    def layer(self, layer: int) -> ShardedArray:
        if layer not in self.meta["layers"]:
            raise CacheError(f"Layer {layer} is not in cache {self.path} (layers {self.meta['layers']}).")
        if layer not in self._checked:
            self.check_layer(layer)
        shards = self.meta["shards"]
        return ShardedArray([self.shard_file(layer, s["index"]) for s in shards], [s["n_contexts"] for s in shards],
                            (self.meta["n_contexts"], self.meta["context_len"], self.meta["d_model"]), self.meta["dtype"])

    def contexts(self, split: str = "train") -> np.ndarray:
        if split == "all":
            return np.arange(len(self.split))
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
        return np.flatnonzero(np.asarray(self.split) == (split == "heldout"))

    def sample_contexts(self, split: str, n: int | None, seed: int | None) -> np.ndarray:
        """``n`` contexts of ``split`` (all when None): the first ``n`` in cache order when ``seed`` is None, else
        drawn at random from a stream of their own (seeded by ``seed`` and a fixed tag), in cache order."""
        rows = self.contexts(split)
        if n is None or n >= len(rows):
            return rows
        if seed is None:
            return rows[:n]
        return np.sort(np.random.default_rng([seed, HELDOUT_TAG]).choice(rows, n, replace=False))

    def activations(self, layer: int, split: str = "train", drop_first: bool = True, max_tokens: int | None = None,
                    seed: int | None = None, sink_ratio: float | None = None) -> torch.Tensor:
        """float32 [n_tokens, d_model], positions in order (position 0 dropped by default). ``max_tokens``: the
        contexts that hold them, the first ones or, with ``seed``, a random draw (``sample_contexts``).
        ``sink_ratio``: also drop attention-sink tokens (``sink_mask``), wherever they fall."""
        arr = self.layer(layer)
        start = 1 if drop_first else 0
        per_ctx = self.meta["context_len"] - start
        rows = self.sample_contexts(split, None if max_tokens is None else max(1, -(-max_tokens // per_ctx)), seed)
        out = torch.empty(len(rows) * per_ctx, self.meta["d_model"], dtype=torch.float32)
        for i in range(0, len(rows), 256):
            chunk = torch.from_numpy(arr[rows[i:i + 256], start:].astype(np.float32)).reshape(-1, self.meta["d_model"])
            out[i * per_ctx: i * per_ctx + len(chunk)] = chunk
        if not torch.isfinite(out).all():
            bad = (~torch.isfinite(out)).any(1).sum().item()
            raise CacheError(f"Cache {self.path} layer {layer}: {bad} token activations are NaN/inf. "
                             "Delete the cache and rerun the harvest (dtype float32 if float16 overflowed).")
        if sink_ratio is not None:
            out = out[~sink_mask(out, sink_ratio)]
        return out[:max_tokens] if max_tokens is not None else out
