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
``rescale_acts_by_decoder_norm`` (sae-lens' default; needs ``normalize_decoder=False``) leaves the decoder free
and selects by each latent's contribution ``pre_i * ||W_dec_i||``: codes are ``ReLU(pre) * ||W_dec||`` and the
decoder reads them through unit rows, so ``x_hat = sum_i ReLU(pre_i) W_dec_i`` over the selected latents. The
export folds the norms into the encoder (exact).

With ``sparse=True`` (default) the only dense work is the encoder GEMM and the TopK; the decoder and
every backward pass use the sparse kernels of ``treesae.saes.sparse``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from sae_lens.saes import TopKSAE as SLTopKSAE, TopKSAEConfig as SLTopKConfig
from torch import Tensor

from .base import AuxKConfig, BaseSAE, FlatConfig, aux_nmse, auxk_reconstruction, reconstruction_errors, scalar_logs
from .sparse import Codes, topk_select


@dataclass(kw_only=True)
class TopKConfig(FlatConfig, AuxKConfig):
    """k: active latents per token. rescale_acts_by_decoder_norm: select by ``pre * ||W_dec||`` with a free decoder
    (module docstring). See ``SAEConfig`` and ``AuxKConfig`` for the other fields."""

    architecture: ClassVar[str] = "topk"

    k: int = 32
    rescale_acts_by_decoder_norm: bool = False

    def __post_init__(self):
        super().__post_init__()
        self._check_aux()
        self._check_int("k", self.k)
        self._check(not (self.rescale_acts_by_decoder_norm and self.normalize_decoder),
                    "rescale_acts_by_decoder_norm needs normalize_decoder=False (unit rows leave nothing to rescale)")
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
        """sae-lens' ``topk``: the same weights (decoder norms folded in), without rescaling by decoder norms."""
        state.pop("threshold", None)
        return SLTopKSAE, SLTopKConfig, dict(k=self.cfg.k, rescale_acts_by_decoder_norm=False), self._fold(state)

    def _fold(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Under ``rescale_acts_by_decoder_norm``: decoder norms moved into the encoder (unit decoder rows, the same
        codes and reconstructions)."""
        if self.cfg.rescale_acts_by_decoder_norm:
            n = state["W_dec"].norm(dim=1)
            state |= dict(W_enc=state["W_enc"] * n, b_enc=state["b_enc"] * n, W_dec=state["W_dec"] / n[:, None])
        return state

    def _dec_norm(self) -> Tensor | None:
        return self.W_dec.detach().norm(dim=1) if self.cfg.rescale_acts_by_decoder_norm else None

    def _select(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return topk_select(pre, self.cfg.k)

    def _codes(self, x: Tensor) -> tuple[Codes, Tensor, Tensor, Tensor | None]:
        """Sparse codes ``ReLU(pre)`` (values differentiable; decode them with ``W_dec`` as it is), the
        pre-activations (a scratch buffer on the sparse path: valid until the next call), the selection scores
        (``pre``, times the decoder norms under ``rescale_acts_by_decoder_norm``) and those norms (or None)."""
        pre = self.kernels.linear(x, self.b_dec, self.W_enc, self.b_enc)
        n = self._dec_norm()
        score = pre.detach() if n is None else pre.detach() * n
        rows, cols, offsets = self._select(score)
        vals = self.kernels.gather(pre, x, self.b_dec, self.W_enc, self.b_enc, rows, cols).relu()
        return Codes(vals, rows, cols, offsets, (x.shape[0], self.d_sae)), pre, score, n

    @staticmethod
    def _scaled(codes: Codes, n: Tensor | None) -> Codes:
        """Detached codes in the units an inference SAE reports (times the decoder norms when rescaling)."""
        vals = codes.vals.detach()
        return codes._replace(vals=vals if n is None else vals * n[codes.cols])

    def encode(self, x: Tensor) -> Tensor:
        codes, _, _, n = self._codes(self._prep(x))
        return self._scaled(codes, n).dense()

    def decode(self, z: Tensor) -> Tensor:
        n = self._dec_norm()
        return (z if n is None else z / n) @ self.W_dec + self.b_dec

    def reconstructions(self, codes: Codes) -> list[Tensor]:
        """Reconstructions the loss is averaged over (the last is the SAE's output)."""
        return [self.kernels.decode(codes, self.W_dec) + self.b_dec]

    def aux_loss(self, x: Tensor, x_hat: Tensor, pre: Tensor, dead_mask: Tensor | None, score: Tensor,
                 n: Tensor | None) -> Tensor:
        """AuxK: the top ``k_aux`` dead latents (by ``score``) reconstruct the detached error ``x - x_hat``."""
        e_hat = None
        if self.cfg.aux_k and dead_mask is not None:
            e_hat = auxk_reconstruction(
                score, dead_mask, self.cfg.k_aux_eff,
                lambda cols: torch.addmm(self.b_enc[cols], x - self.b_dec, self.W_enc[:, cols]),
                lambda rows, cols: self.kernels.gather(pre, x, self.b_dec, self.W_enc, self.b_enc, rows, cols),
                self.W_dec, 0, self.kernels, n)
        return x.new_zeros(()) if e_hat is None else aux_nmse(e_hat, (x - x_hat).detach())

    def training_loss(self, x, dead_mask=None, *, dense_z=True):
        x = self._prep(x)
        codes, pre, score, n = self._codes(x)
        recons = self.reconstructions(codes)
        x_hat = recons[-1]
        errors, level_nmse = reconstruction_errors(recons, x)
        recon = torch.stack(level_nmse).mean()
        aux = self.aux_loss(x, x_hat, pre, dead_mask, score, n)
        loss = recon + self.cfg.aux_coef * aux
        B = x.shape[0]
        active = codes.vals.detach() > 0
        logs = scalar_logs(loss=loss, mse=errors[-1] / B, nmse=level_nmse[-1],
                           l0=active.sum() / B, aux=aux)
        if len(self.levels) > 1:
            for i, (sl, v) in enumerate(zip(self.levels, level_nmse)):
                in_level = (codes.cols >= sl.start) & (codes.cols < sl.stop)
                logs[f"level{i}/l0"] = ((active & in_level).sum() / B).detach()
                logs[f"level{i}/nmse"] = v.detach()
        scaled = self._scaled(codes, n)
        self._after_batch(scaled)
        return loss, logs, self._z_out(scaled, dense_z)

    def _after_batch(self, codes: Codes) -> None:
        pass
