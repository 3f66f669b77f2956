"""BatchTopK SAE (Bussmann et al. 2024).

Training: the ``k * B`` largest positive pre-activations of the whole batch of B tokens are kept
(so L0 is k on average, free to vary per token); otherwise as TopK (same recipe switches).
Inference (``eval()`` mode): a single learned threshold theta replaces the batch selection,
``z = ReLU(pre) * (pre > theta)``. theta is a running estimate of the smallest kept activation:
after the n-th training batch ``theta <- theta + max(threshold_lr, 1/n) * (min(kept values) - theta)``,
i.e. the plain mean of the first 1/threshold_lr batches, an EMA after that (an EMA started at zero
would stay biased low for hundreds of steps and let hundreds of latents through at inference).
After training, ``calibrate_threshold`` sets theta from training activations so that L0 is k (stage 02
does this for every SAE that has it).
Exported to sae-lens as a JumpReLU SAE with that threshold on every latent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig
from torch import Tensor

from .sparse import Codes, batch_topk_select, row_offsets
from .topk import TopKConfig, TopKSAE


@dataclass(kw_only=True)
class BatchTopKConfig(TopKConfig):
    """k: mean active latents per token. threshold_lr: EMA rate of the inference threshold."""

    architecture: ClassVar[str] = "batchtopk"

    threshold_lr: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        self._check(0 < self.threshold_lr <= 1, f"threshold_lr must be in (0, 1], got {self.threshold_lr}")


@torch.no_grad()
def threshold_select(pre: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entries with ``pre > max(threshold, 0)``, row-major."""
    rows, cols = (pre > threshold.clamp_min(0)).nonzero(as_tuple=True)
    return rows, cols, row_offsets(rows, pre.shape[0])


def kth_largest_positive(chunks, m: int) -> float:
    """The m-th largest positive value over the (flattened) tensors of ``chunks``, keeping only the top m between
    chunks; 0 when fewer than m are positive. The threshold that keeps m entries: BatchTopK's selection with all
    the chunks as one batch."""
    top = None
    for v in chunks:
        top = v[v > 0] if top is None else torch.cat([top, v[v > 0]])
        top = top.topk(m, sorted=False).values if len(top) > m else top
    return float(top.min()) if top is not None and len(top) == m else 0.0


@torch.no_grad()
def update_running_threshold(threshold: Tensor, updates: Tensor, kept_min: Tensor, rate: float) -> None:
    """One step of the inference threshold's running estimate (module docstring), in place."""
    updates += 1
    threshold.lerp_(kept_min.to(threshold), max(rate, 1.0 / float(updates)))


class BatchTopKSAE(TopKSAE):
    config_class: ClassVar[type] = BatchTopKConfig
    cfg: BatchTopKConfig
    threshold: Tensor
    training_only = ("threshold_updates",)

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def sae_lens_spec(self, state):
        """sae-lens' ``jumprelu`` with our scalar inference threshold on every latent."""
        state["threshold"] = state["threshold"].expand(self.d_sae).clone()
        return JumpReLUSAE, JumpReLUSAEConfig, {}, self._fold(state)

    def _select(self, pre):
        if self.training:
            return batch_topk_select(pre, self.cfg.k * pre.shape[0])
        return threshold_select(pre, self.threshold)

    @torch.no_grad()
    def calibrate_threshold(self, x: Tensor, batch_size: int = 4096) -> None:
        """Set the inference threshold so that L0 on ``x`` (training activations) is k: the (k N)-th largest
        positive pre-activation over its N tokens, i.e. BatchTopK's selection with ``x`` as one batch. The
        running estimate alone gives a held-out L0 well below k."""
        if getattr(self.cfg, "selection", "batchtopk") != "batchtopk":
            return
        x, n = self._prep(x), self._dec_norm()
        pre = ((lin if n is None else lin * n).flatten() for lin in
               (self.kernels.linear(x[i:i + batch_size], self.b_dec, self.W_enc, self.b_enc) for i in range(0, len(x), batch_size)))
        self.threshold.fill_(kth_largest_positive(pre, self.cfg.k * len(x)))

    @torch.no_grad()
    def _after_batch(self, codes: Codes) -> None:
        if not self.training:
            return
        kept = codes.vals[codes.vals > 0]
        if kept.numel():
            update_running_threshold(self.threshold, self.threshold_updates, kept.min(), self.cfg.threshold_lr)
