"""Stacked TreeSAE (Pi-Net): a deep sparse encoder whose levels feed each other.

Definition (notation of ``treesae.saes.hierarchical``):

    a_0 = (x - b_dec) @ W_0 + b_0
    a_l = LN_l(z_{l-1}) @ W_l + b_l  [+ a_{l-1}[:, pi_l]]         for l >= 1
    z_l = ReLU(TopK_{k_l}(a_l))
    x_hat = [z_0, ..., z_{L-1}] @ W_dec + b_dec                   (one decoder over all levels)

``W_l`` is ``[w_{l-1}, w_l]`` for l >= 1: level l sees only level l-1's sparse code (LayerNorm'd,
``layer_norm=True`` by default, a learned affine LayerNorm over the w_{l-1} code entries).
Widths grow by ``growth`` (2x by default) per level; level l's k is scaled by ``k_scale_per_2x``
per doubling of width. ``level_residual=True`` adds a parameter-free identity shortcut between
the levels' pre-activations: unit j of level l also receives unit ``pi_l(j) = floor(j w_{l-1}/w_l)``
of level l-1's pre-activation (for 2x growth: each level-(l-1) unit feeds its two "children"), so
dense information from the input reaches every level; without it level l only sees k_{l-1}
numbers. Loss: the final reconstruction's nMSE by default (``level_loss="final"``).
Encoder init: level 0 tied to its decoder rows (``tied_init``); deeper levels random with
unit-norm columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .hierarchical import (GrowthConfig, HierarchicalSAE, HierarchicalSL, HierarchicalSLConfig, LevelEncoder,
                           LevelOut, LevelsMixin, linear_columns, register_sae_lens)
from .base import unit_rows
from .sparse import Codes, topk_select


@dataclass(kw_only=True)
class StackedConfig(GrowthConfig):
    """layer_norm: LayerNorm between levels. level_residual: identity shortcut between
    pre-activations (module docstring). growth: see ``GrowthConfig``."""

    architecture: ClassVar[str] = "stacked"

    layer_norm: bool = True
    level_residual: bool = False
    level_loss: str = "final"


class StackedCore(LevelsMixin):
    layer_norm: bool
    level_residual: bool

    def _levels(self, x: Tensor, shift: Tensor | None) -> list[LevelOut]:
        kn, outs = self.kernels, []
        prev_pre = prev_value = prev_columns = None
        for l, (enc, w, k) in enumerate(zip(self.encoders, self.level_widths, self.level_ks)):
            if l == 0:
                xin, sh = x, shift
            else:
                zp = outs[-1].codes.dense()
                xin, sh = (enc.ln(zp) if enc.ln is not None else zp), None
            lin = kn.linear(xin, sh, enc.W_enc, enc.b_enc)
            up = None
            if self.level_residual and l > 0:
                w_prev = self.level_widths[l - 1]
                up = lambda cols, w_prev=w_prev, w=w: cols * w_prev // w
                pre = lin + prev_pre[:, up(torch.arange(w, device=x.device))]
            else:
                pre = lin

            def value_at(rows, cols, lin=lin, xin=xin, sh=sh, enc=enc, up=up, prev=prev_value):
                v = kn.gather(lin, xin, sh, enc.W_enc, enc.b_enc, rows, cols)
                return v if up is None else v + prev(rows, up(cols))

            def columns(cols, own=linear_columns(xin, sh, enc), up=up, prev=prev_columns):
                return own(cols) if up is None else own(cols) + prev(up(cols))

            rows, cols, offsets = topk_select(pre.detach(), k)
            codes = Codes(value_at(rows, cols).relu(), rows, cols, offsets, (x.shape[0], w))
            outs.append(LevelOut(codes, pre, value_at, columns))
            prev_pre, prev_value, prev_columns = pre, value_at, columns
        return outs


@dataclass
class StackedSLConfig(HierarchicalSLConfig):
    layer_norm: bool = True
    level_residual: bool = False

    @classmethod
    def architecture(cls) -> str:
        return "treesae_stacked"


class StackedSL(StackedCore, HierarchicalSL):
    def _encoder_specs(self):
        return [(self.cfg.d_in, False)] + [(w, self.cfg.layer_norm) for w in self.cfg.widths[:-1]]


register_sae_lens(StackedSL, StackedSLConfig)


class StackedSAE(StackedCore, HierarchicalSAE):
    config_class: ClassVar[type] = StackedConfig
    sae_lens_classes = (StackedSL, StackedSLConfig)
    cfg: StackedConfig

    def __init__(self, cfg: StackedConfig):
        self.layer_norm, self.level_residual = cfg.layer_norm, cfg.level_residual
        super().__init__(cfg)

    def _level_encoder(self, l, gen, W_dec):
        if l == 0:
            return super()._level_encoder(l, gen, W_dec)
        w_prev, w = self.level_widths[l - 1], self.level_widths[l]
        enc = LevelEncoder(w_prev, w, layer_norm=self.layer_norm)
        enc.W_enc.data.copy_(unit_rows((w, w_prev), gen).t())
        return enc
