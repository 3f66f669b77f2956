"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    pre   = (x - b_dec) @ W_enc + b_enc
    z     = TopK_k(ReLU(pre))            # the k largest pre-activations per token, then ReLU
    x_hat = z @ W_dec + b_dec
    loss  = nMSE(x_hat, x) + aux_coef * AuxK

TopK is taken on ``pre`` and ReLU applied to the k selected values: the same codes as ReLU-then-TopK
(a selected non-positive value is 0 either way) without a dense ReLU pass. L0 counts positive values.

Each piece of OpenAI's recipe is a config switch so its effect can be measured: ``tied_init``,
``aux_k`` (top-``k_aux`` dead latents reconstruct the error, coefficient ``aux_coef``),
``normalize_decoder`` (unit-norm rows, parallel gradient removed) and ``geometric_median_init``.

With ``sparse=True`` (default) the only dense work is the encoder GEMM and the TopK; the decoder and
every backward pass use the sparse kernels of ``treesae.saes.sparse``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from sae_lens.saes import TopKSAE as SLTopKSAE, TopKSAEConfig as SLTopKConfig
from torch import Tensor

from .base import AuxKConfig, BaseSAE, FlatConfig, aux_nmse, auxk_reconstruction, nmse, scalar_logs
from .sparse import Codes, topk_select


@dataclass(kw_only=True)
class TopKConfig(FlatConfig, AuxKConfig):
    """k: active latents per token. See ``SAEConfig`` and ``AuxKConfig`` for the other fields."""

    architecture: ClassVar[str] = "topk"

    k: int = 32

    def __post_init__(self):
        super().__post_init__()
        self._check_aux()
        self._check_int("k", self.k)
        self._check(self.k <= self.d_sae,
                    f"k={self.k} is larger than the dictionary (d_sae={self.d_sae}); choose k <= d_sae")

    @property
    def k_aux_eff(self) -> int:
        return min(self.k_aux, max(1, self.d_sae // 2))


class TopKSAE(BaseSAE):
    """TopK SAE; BatchTopK and Matryoshka subclass it and change the selection / the loss."""

    config_class: ClassVar[type] = TopKConfig
    cfg: TopKConfig

    def __init__(self, cfg: TopKConfig):
        super().__init__(cfg)
        self._init_flat_weights()

    def sae_lens_spec(self, state):
        """sae-lens' ``topk``: the same weights, without rescaling by decoder norms."""
        state.pop("threshold", None)
        return SLTopKSAE, SLTopKConfig, dict(k=self.cfg.k, rescale_acts_by_decoder_norm=False), state

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return topk_select(pre, self.cfg.k)

    def _codes(self, x: Tensor) -> tuple[Codes, Tensor]:
        """Sparse codes (values differentiable) and the pre-activations they were selected from
        (a scratch buffer on the sparse path: valid until the next call)."""
        pre = self.kernels.linear(x, self.b_dec, self.W_enc, self.b_enc)
        rows, cols, offsets = self._select(pre.detach())
        vals = self.kernels.gather(pre, x, self.b_dec, self.W_enc, self.b_enc, rows, cols).relu()
        return Codes(vals, rows, cols, offsets, (x.shape[0], self.d_sae)), pre

    def encode(self, x: Tensor) -> Tensor:
        return self._codes(self._prep(x))[0].dense()

    def reconstructions(self, codes: Codes) -> list[Tensor]:
        """Reconstructions the loss is averaged over (the last is the SAE's output)."""
        return [self.kernels.decode(codes, self.W_dec) + self.b_dec]

    def aux_loss(self, x: Tensor, x_hat: Tensor, pre: Tensor, dead_mask: Tensor | None) -> Tensor:
        """AuxK: the top ``k_aux`` dead latents reconstruct the detached error ``x - x_hat``."""
        e_hat = None
        if self.cfg.aux_k and dead_mask is not None:
            e_hat = auxk_reconstruction(
                pre, dead_mask, self.cfg.k_aux_eff,
                lambda cols: torch.addmm(self.b_enc[cols], x - self.b_dec, self.W_enc[:, cols]),
                lambda rows, cols: self.kernels.gather(pre, x, self.b_dec, self.W_enc, self.b_enc, rows, cols),
                self.W_dec, 0, self.kernels)
        return x.new_zeros(()) if e_hat is None else aux_nmse(e_hat, (x - x_hat).detach())

    def training_loss(self, x, dead_mask=None, *, dense_z=True):
        x = self._prep(x)
        codes, pre = self._codes(x)
        recons = self.reconstructions(codes)
        x_hat = recons[-1]
        level_nmse = [nmse(r, x) for r in recons]
        recon = torch.stack(level_nmse).mean()
        aux = self.aux_loss(x, x_hat, pre, dead_mask)
        loss = recon + self.cfg.aux_coef * aux
        B = x.shape[0]
        active = codes.vals.detach() > 0
        logs = scalar_logs(loss=loss, mse=(x_hat - x).pow(2).sum() / B, nmse=level_nmse[-1],
                           l0=active.sum() / B, aux=aux)
        if len(self.levels) > 1:
            for i, (sl, v) in enumerate(zip(self.levels, level_nmse)):
                in_level = (codes.cols >= sl.start) & (codes.cols < sl.stop)
                logs[f"level{i}/l0"] = ((active & in_level).sum() / B).detach()
                logs[f"level{i}/nmse"] = v.detach()
        self._after_batch(codes)
        return loss, logs, self._z_out(codes, dense_z)

    def _after_batch(self, codes: Codes) -> None:
        pass
