"""Tree TreeSAE (gated): level l+1's latents are children of level l's, and fire only with them.

Definition (notation of ``treesae.saes.hierarchical``), branching factor b:

    widths:  w_l = w_0 * b**l;  child j of level l+1 has parent floor(j / b) in level l
    a_l   = (x - b_dec) @ W_l + b_l                      every level reads the input; W_l: [d_in, w_l]
    z_0   = ReLU(TopK_{k_0}(a_0))
    z_l   = ReLU(TopK_{k_l}(a_l masked to -inf where z_{l-1}[parent] == 0))        for l >= 1
    x_hat_l = b_dec + sum_{m<=l} z_m @ W_dec[level m],   x_hat = x_hat_{L-1}

So a child is active only on tokens where its parent is active (and ``k_l <= b * k_{l-1}`` is
required, since only the b children of the k_{l-1} active parents are candidates). Every level's
cumulative reconstruction is trained to reconstruct x (``level_loss="cumulative"``: mean of the
levels' nMSE). ``parent_of`` maps every latent of the concatenated space to its parent's index
there (-1 at level 0). AuxK ranks dead latents by their ungated pre-activations, so a dead child
of a dead parent still gets a gradient. With ``size``, ``w_0 = size // (1 + b + ... + b**(L-1))``
(so ``d_sae`` may fall a little short of ``size``). Encoder init: tied to the decoder rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from .hierarchical import HierarchicalConfig, HierarchicalSAE, LevelOut, LevelsMixin, linear_columns
from .sparse import Codes, fixed_rows, topk_select


@dataclass(kw_only=True)
class TreeConfig(HierarchicalConfig):
    """branching: children per parent latent (widths multiply by it level to level)."""

    architecture: ClassVar[str] = "tree"

    branching: int = 2

    def __post_init__(self):
        self._check_int("branching", self.branching)
        if self.widths is not None:
            ok = all(b == a * self.branching for a, b in zip(self.widths, self.widths[1:]))
            self._check(ok, f"widths {list(self.widths)} must grow by exactly branching={self.branching} per level")
        super().__post_init__()
        for l in range(1, len(self._ks)):
            self._check(self._ks[l] <= self.branching * self._ks[l - 1],
                        f"level {l}: k={self._ks[l]} exceeds branching * k of level {l - 1} "
                        f"({self.branching} * {self._ks[l - 1]}), the most children that can be active")

    def _split(self, size, n_levels):
        w0 = size // sum(self.branching ** l for l in range(n_levels))
        self._check(w0 >= 1, f"size={size} is too small for {n_levels} levels with branching {self.branching}")
        return [w0 * self.branching ** l for l in range(n_levels)]


@torch.no_grad()
def gated_select(pre: Tensor, parent: Codes, branching: int, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row top-k among the children of active parents: (rows, cols, offsets, allowed).

    ``parent`` has a fixed number of entries per row; ``allowed`` is False for entries picked only
    to fill k when fewer candidates exist (their values are masked to zero by the caller).
    """
    B = pre.shape[0]
    kp = parent.cols.numel() // B
    kids = torch.arange(branching, device=pre.device)
    cand = (parent.cols.view(B, kp, 1) * branching + kids).view(B, kp * branching)
    active = (parent.vals.detach() > 0).view(B, kp).repeat_interleave(branching, dim=1)
    scores = pre.gather(1, cand).masked_fill(~active, float("-inf"))
    top = scores.topk(min(k, kp * branching), dim=1, sorted=False)
    rows, offsets = fixed_rows(B, top.indices.shape[1], pre.device)
    return rows, cand.gather(1, top.indices).view(-1), offsets, active.gather(1, top.indices).view(-1)


class TreeCore(LevelsMixin):
    branching: int

    def _levels(self, x: Tensor, shift: Tensor | None) -> list[LevelOut]:
        kn, outs = self.kernels, []
        for l, (enc, w, k) in enumerate(zip(self.encoders, self.level_widths, self.level_ks)):
            lin = kn.linear(x, shift, enc.W_enc, enc.b_enc)
            value_at = partial(kn.gather, lin, x, shift, enc.W_enc, enc.b_enc)
            if l == 0:
                rows, cols, offsets = topk_select(lin.detach(), k)
                vals = value_at(rows, cols).relu()
            else:
                rows, cols, offsets, allowed = gated_select(lin.detach(), outs[-1].codes, self.branching, k)
                vals = value_at(rows, cols).relu() * allowed
            outs.append(LevelOut(Codes(vals, rows, cols, offsets, (x.shape[0], w)), lin, value_at,
                                 linear_columns(x, shift, enc)))
        return outs

    def _parent_of(self) -> Tensor:
        parts = [torch.full((self.level_widths[0],), -1, dtype=torch.long)]
        for l in range(1, len(self.level_widths)):
            parts.append(self.level_offsets[l - 1] + torch.arange(self.level_widths[l]) // self.branching)
        return torch.cat(parts)


class TreeSAE(TreeCore, HierarchicalSAE):
    config_class: ClassVar[type] = TreeConfig
    cfg: TreeConfig

    def __init__(self, cfg: TreeConfig):
        self.branching = cfg.branching
        super().__init__(cfg)

    @property
    def parent_of(self) -> Tensor:
        return self._parent_of()
