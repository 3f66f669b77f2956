"""ReLU + L1 SAE, Anthropic style (Towards Monosemanticity; April 2024 update).

    z     = ReLU((x - apply_b_dec_to_input * b_dec) @ W_enc + b_enc)
    x_hat = z @ W_dec + b_dec
    loss  = nMSE(x_hat, x) + l1_coef * sum_b sum_i z_bi ||W_dec_i|| / sum_b ||x_b||

The L1 penalty is weighted by the decoder row norms (so it cannot be dodged by shrinking z and
growing W_dec) and divided by the batch's summed input norm, which makes ``l1_coef`` scale-free like
the nMSE term. (Anthropic instead rescale inputs to E||x||^2 = d_in and use raw squared error:
their lambda corresponds to about ``l1_coef * sqrt(d_in)`` here.) Defaults follow the update:
decoder rows initialised at norm 0.1 and left unconstrained, encoder = decoder transpose,
no pre-encoder bias, ``b_dec`` at zero. Dense kernels only (codes are not k-sparse).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from sae_lens.saes import StandardSAE, StandardSAEConfig

from .base import BaseSAE, FlatConfig, reconstruction_errors, scalar_logs
from .sparse import Codes


@dataclass(kw_only=True)
class ReLUConfig(FlatConfig):
    """l1_coef: sparsity coefficient (see module docstring). l1_warm_up_steps: the coefficient ramps
    linearly from 0 over this many optimiser steps (the update uses 5% of training; without it short
    runs collapse to L0 ~ 0 at coefficients that target L0 ~ 16). apply_b_dec_to_input: subtract
    b_dec before the encoder."""

    architecture: ClassVar[str] = "relu"

    l1_coef: float = 0.2
    l1_warm_up_steps: int = 0
    apply_b_dec_to_input: bool = False
    normalize_decoder: bool = False
    geometric_median_init: bool = False
    decoder_init_norm: float = 0.1
    sparse: bool = False

    def __post_init__(self):
        super().__post_init__()
        self._check(self.l1_coef >= 0, f"l1_coef must be >= 0, got {self.l1_coef}")
        self._check(self.l1_warm_up_steps >= 0, f"l1_warm_up_steps must be >= 0, got {self.l1_warm_up_steps}")
        self._check(not self.sparse, "the ReLU SAE has no sparse kernels; set sparse=False")

    @classmethod
    def target_fields(cls, d_sae, k, **extra):
        """No k: the L1 coefficient sets L0. ``l1_coef_by_k`` (target L0 -> coefficient) picks it for k;
        without that map, ``l1_coef`` (or its default) is used as given."""
        by_k = extra.pop("l1_coef_by_k", None)
        if by_k is not None:
            coefs = {int(x): v for x, v in by_k.items()}
            if int(k) not in coefs:
                raise ValueError(f"{cls.__name__}: l1_coef_by_k has no entry for k={k} (it has {sorted(coefs)}); "
                                 "the L1 coefficient sets a ReLU SAE's L0, so list one for every k of the sweep.")
            extra = {"l1_coef": coefs[int(k)], **extra}
        return {"d_sae": d_sae, **extra}


class ReLUSAE(BaseSAE):
    config_class: ClassVar[type] = ReLUConfig
    cfg: ReLUConfig
    training_only = ("steps",)

    def sae_lens_spec(self, state):
        """sae-lens' ``standard`` (ReLU) SAE, the same weights."""
        return StandardSAE, StandardSAEConfig, dict(apply_b_dec_to_input=self.cfg.apply_b_dec_to_input), state

    def __init__(self, cfg: ReLUConfig):
        super().__init__(cfg)
        self._init_flat_weights()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training-only, for the warm-up

    @property
    def l1_scale(self) -> float:
        w = self.cfg.l1_warm_up_steps
        return min(1.0, (int(self.steps) + 1) / w) if w else 1.0

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        self.steps += 1

    def encode(self, x):
        x = self._prep(x)
        shift = self.b_dec if self.cfg.apply_b_dec_to_input else None
        return self.kernels.linear(x, shift, self.W_enc, self.b_enc).relu()

    def training_loss(self, x, dead_mask=None, *, dense_z=True):
        x = self._prep(x)
        z = self.encode(x)
        x_hat = self.decode(z)
        (error,), (recon,) = reconstruction_errors([x_hat], x)
        l1 = (z * self.W_dec.norm(dim=1)).sum() / x.norm(dim=1).sum().clamp_min(1e-12)
        loss = recon + self.cfg.l1_coef * self.l1_scale * l1
        B = x.shape[0]
        logs = scalar_logs(loss=loss, mse=error / B, nmse=recon,
                           l0=(z > 0).sum() / B, aux=0.0, l1=l1)
        z = z.detach()
        if not dense_z:
            rows, cols = z.nonzero(as_tuple=True)
            z = Codes(z[rows, cols], rows, cols, None, tuple(z.shape)).to_sparse()
        return loss, logs, z
