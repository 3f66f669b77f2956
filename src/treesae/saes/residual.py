"""Residual TreeSAE (coarse to fine): each level encodes what the previous levels missed.

Definition (notation of ``treesae.saes.hierarchical``):

    r_0 = x - b_dec
    z_l = ReLU(TopK_{k_l}(r_l @ W_l + b_l))                  W_l: [d_in, w_l]
    r_{l+1} = r_l - z_l @ W_dec[level l]
    x_hat_l = b_dec + sum_{m<=l} z_m @ W_dec[level m] = x - r_{l+1},     x_hat = x_hat_{L-1}

Gradients flow through the residuals (end to end, not greedy). Widths grow by ``growth`` (2x by
default) per level, k per level as in ``hierarchical``. Loss: mean over levels of the cumulative
nMSE (``level_loss="cumulative"``, default), so level 0 alone must already reconstruct x, and
each further level refines it. Encoder init: each level tied to its own decoder rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from torch import Tensor

from .hierarchical import (GrowthConfig, HierarchicalSAE, HierarchicalSL, HierarchicalSLConfig, LevelOut, LevelsMixin,
                           linear_columns, register_sae_lens)
from .sparse import Codes, topk_select


@dataclass(kw_only=True)
class ResidualConfig(GrowthConfig):
    """See ``GrowthConfig`` (growth) and ``HierarchicalConfig``."""

    architecture: ClassVar[str] = "residual"


class ResidualCore(LevelsMixin):
    def _levels(self, x: Tensor, shift: Tensor | None) -> list[LevelOut]:
        kn, outs = self.kernels, []
        r, sh = x, shift
        for enc, w, k, off in zip(self.encoders, self.level_widths, self.level_ks, self.level_offsets):
            lin = kn.linear(r, sh, enc.W_enc, enc.b_enc)
            value_at = partial(kn.gather, lin, r, sh, enc.W_enc, enc.b_enc)
            rows, cols, offsets = topk_select(lin.detach(), k)
            codes = Codes(value_at(rows, cols).relu(), rows, cols, offsets, (x.shape[0], w))
            dec = kn.decode(codes.shifted(off, self.n_latents), self.W_dec)
            outs.append(LevelOut(codes, lin, value_at, linear_columns(r, sh, enc), dec))
            r, sh = (r if sh is None else r - sh) - dec, None
        return outs


@dataclass
class ResidualSLConfig(HierarchicalSLConfig):
    @classmethod
    def architecture(cls) -> str:
        return "treesae_residual"


class ResidualSL(ResidualCore, HierarchicalSL):
    pass


register_sae_lens(ResidualSL, ResidualSLConfig)


class ResidualSAE(ResidualCore, HierarchicalSAE):
    config_class: ClassVar[type] = ResidualConfig
    sae_lens_classes = (ResidualSL, ResidualSLConfig)
    cfg: ResidualConfig
