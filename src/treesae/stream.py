"""Training activations streamed from the model through a shuffling buffer, for token budgets no disk holds.

    stream = ActivationStream(model, "data/corpora/brown", layer=15, seed=0, buffer_contexts=8192)
    train_sweep(saes, stream, cfg)          # instead of the cached tensor: the same trainer, batch for batch

The train split's contexts go through the model ``buffer_contexts`` at a time (each epoch in its own seeded
order); each buffer's tokens (position 0 and attention sinks dropped as the cache path drops them, rounded
to the harvest's dtype) are shuffled with a seed of their own and served in order, while a producer thread
computes the next buffer. Everything is a function of (seed, epoch, buffer): the same seed gives the same
batches, whatever the timing, and a resumed run fast-forwards to its step. With ``buffer_contexts=None``
(every train context in one buffer) it is the cache's path exactly: the contexts run in the harvest's
batches, the tokens come out in ``cache.activations``' order and ``train.ShuffledOrder`` draws the batches,
so ``train_sweep`` trains the same SAEs (tests/test_stream.py). Attention sinks are then found against the
median of every token, as in the cache; with smaller buffers, against each buffer's median.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .cache import sink_mask
from .model import forward_layers
from .seeds import DATA_TAG, hashed_seed
from .train import CachedBatches


class ActivationStream:
    """See the module docstring. ``corpus``: a directory as ``corpora.prepare`` writes it (tokens.npy, split.npy)
    or a (tokens [n_ctx, T], split [n_ctx]) pair; ``batch_size`` / ``shard_contexts``: the model's batches, as
    the harvest runs them; ``prefetch``: compute the next buffer in a background thread."""

    def __init__(self, model, corpus, layer: int, seed: int, buffer_contexts: int | None = None,
                 drop_first: bool = True, sink_ratio: float | None = None, dtype: str = "float16",
                 batch_size: int = 32, shard_contexts: int = 512, device=None, prefetch: bool = True):
        if isinstance(corpus, (str, Path)):
            tokens, split = np.load(Path(corpus) / "tokens.npy"), np.load(Path(corpus) / "split.npy")
        else:
            tokens, split = corpus
        if dtype not in ("float16", "float32"):
            raise ValueError(f"ActivationStream dtype must be 'float16' or 'float32', not {dtype!r}")
        self.model, self.tokens, self.layer, self.seed = model, np.asarray(tokens), int(layer), int(seed)
        self.train = np.nonzero(np.asarray(split) == 0)[0]
        if not len(self.train):
            raise ValueError("ActivationStream: the corpus has no train contexts (split == 0)")
        self.C = None if buffer_contexts is None or buffer_contexts >= len(self.train) else int(buffer_contexts)
        self.start, self.sink_ratio, self.dtype = (1 if drop_first else 0), sink_ratio, getattr(torch, dtype)
        self.batch_size, self.shard_contexts = batch_size, shard_contexts
        self.device = device or next(model.parameters()).device
        self.d_in = model.cfg.d_model
        self.epoch_tokens = len(self.train) * (self.tokens.shape[1] - self.start)  # before attention sinks are dropped
        self._whole = None                      # single-buffer mode: CachedBatches over every train token
        self._bufs = []                         # [(first global position, shuffled tokens)], in stream order
        self._next = 0                          # index of the next buffer to make
        self._pool = ThreadPoolExecutor(1) if prefetch and self.C else None
        self._pending = None

    # ------------------------------------------------------------------ the model's activations
    @torch.no_grad()
    def _model_batch(self, ctx: np.ndarray) -> torch.Tensor:
        """float32 [len(ctx), T - start, d_model] from one model batch, rounded to the harvest's dtype."""
        toks = torch.from_numpy(self.tokens[ctx]).long().to(self.device)
        x = forward_layers(self.model, toks, [self.layer])[self.layer][:, self.start:].to(self.dtype).float().cpu()
        if not torch.isfinite(x).all():
            raise ValueError(f"ActivationStream layer {self.layer}: the model produced NaN/inf activations"
                             + (" (float16 overflow: use dtype float32)" if self.dtype == torch.float16 else ""))
        return x

    def _tokens(self, parts: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(parts).reshape(-1, self.d_in)
        return x[~sink_mask(x, self.sink_ratio)] if self.sink_ratio is not None else x

    def _acts(self, ctx: np.ndarray) -> torch.Tensor:
        """[tokens, d_model] of contexts ``ctx`` in that order."""
        return self._tokens([self._model_batch(ctx[s:s + self.batch_size]) for s in range(0, len(ctx), self.batch_size)])

    def _all(self) -> torch.Tensor:
        """Every train token in cache order, the model run in the harvest's batches (every context, by shard)."""
        is_train, parts, n = np.zeros(len(self.tokens), bool), [], len(self.tokens)
        is_train[self.train] = True
        for s in range(0, n, self.shard_contexts):
            for b in range(s, min(s + self.shard_contexts, n), self.batch_size):
                ctx = np.arange(b, min(b + self.batch_size, s + self.shard_contexts, n))
                parts.append(self._model_batch(ctx)[torch.from_numpy(is_train[ctx])])
        return self._tokens(parts)

    # ------------------------------------------------------------------ buffers
    def _buffer(self, j: int) -> torch.Tensor:
        """Buffer ``j`` of the stream, shuffled: epoch j // per_epoch, its slice of that epoch's context order."""
        per_epoch = -(-len(self.train) // self.C)
        e, b = divmod(j, per_epoch)
        g = torch.Generator().manual_seed(hashed_seed(DATA_TAG, seed=self.seed, epoch=e, stream="contexts"))
        order = self.train[torch.randperm(len(self.train), generator=g).numpy()]
        x = self._acts(order[b * self.C:(b + 1) * self.C])
        g = torch.Generator().manual_seed(hashed_seed(DATA_TAG, seed=self.seed, epoch=e, buffer=b))
        return x[torch.randperm(len(x), generator=g)]

    def _make_next(self) -> None:
        j = self._next
        x = self._pending.result() if self._pending is not None else self._buffer(j)
        self._pending = self._pool.submit(self._buffer, j + 1) if self._pool is not None else None
        first = self._bufs[-1][0] + len(self._bufs[-1][1]) if self._bufs else 0  # the oldest buffer is never dropped alone
        self._bufs.append((first, x))
        self._next = j + 1

    def _rows(self, lo: int, hi: int) -> torch.Tensor:
        """Stream positions [lo, hi), making buffers as needed and dropping the ones left behind."""
        if self._bufs and lo < self._bufs[0][0]:
            raise ValueError(f"ActivationStream: position {lo} is behind the stream (at {self._bufs[0][0]}); "
                             "streams only go forward (make a new one to restart)")
        while not self._bufs or self._bufs[-1][0] + len(self._bufs[-1][1]) < hi:
            self._make_next()
        while len(self._bufs) > 1 and self._bufs[1][0] <= lo:
            self._bufs.pop(0)
        parts = [x[max(lo - f, 0):max(min(hi - f, len(x)), 0)] for f, x in self._bufs if f < hi and f + len(x) > lo]
        return torch.cat(parts)

    # ------------------------------------------------------------------ what train_sweep calls
    def batch(self, step: int, size: int) -> torch.Tensor:
        if self.C is None:
            return self._single().batch(step, size)
        return self._rows(step * size, (step + 1) * size)

    def sample(self, n: int) -> torch.Tensor:
        if self.C is None:
            return self._single().sample(n)
        return self._rows(0, n).clone()

    @property
    def whole(self) -> torch.Tensor | None:
        """Every train token in cache order when one buffer holds them (``buffer_contexts=None``), else None."""
        return self._single().data if self.C is None else None

    def _single(self) -> CachedBatches:
        if self._whole is None:
            self._whole = CachedBatches(self._all(), self.seed)
        return self._whole

    def fingerprint(self) -> str:
        """What the stream's batches depend on (checkpoints of another stream are not resumed)."""
        return hashlib.sha256(json.dumps([self.model.cfg.model_name, self.layer, self.seed, self.C, self.start,
                                          self.sink_ratio, str(self.dtype), self.batch_size, self.shard_contexts]).encode()
                              + np.ascontiguousarray(self.tokens).tobytes() + self.train.tobytes()).hexdigest()[:16]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
