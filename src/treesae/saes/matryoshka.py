"""Matryoshka SAE (Bussmann, Nabeshima et al. 2025).

The dictionary is nested: for prefix sizes ``m_1 < m_2 < ... < m_G = d_sae`` the first ``m_g``
latents alone must reconstruct the input. With one set of codes z (selected once over the whole
dictionary),

    x_hat_g = z[:, :m_g] @ W_dec[:m_g] + b_dec,      loss = mean_g nMSE(x_hat_g, x) + aux_coef * AuxK

(a mean rather than the paper's sum, so the loss is on a flat SAE's scale; with Adam this only
changes the relative weight of AuxK). ``selection="batchtopk"`` (default, as in the paper) selects
like BatchTopK, with the learned inference threshold; ``selection="topk"`` selects k per token.
AuxK reconstructs the error of the full dictionary. ``levels`` are the prefix increments
``[m_{g-1}, m_g)``, so logs carry ``level{g}/l0`` and the cumulative ``level{g}/nmse``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .sparse import Codes, topk_select
from .topk import TopKSAE


@dataclass(kw_only=True)
class MatryoshkaConfig(BatchTopKConfig):
    """prefixes: strictly increasing prefix sizes; ``d_sae`` is appended if missing; None gives
    ``d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae``. selection: "batchtopk" or "topk"."""

    architecture: ClassVar[str] = "matryoshka"

    prefixes: list[int] | None = None
    selection: str = "batchtopk"

    def __post_init__(self):
        super().__post_init__()
        self._check(self.selection in ("batchtopk", "topk"),
                    f"selection must be 'batchtopk' or 'topk', got {self.selection!r}")
        if self.prefixes is not None:
            self.prefixes = list(self.prefixes)
            self._check(len(self.prefixes) > 0, "prefixes must not be empty (or None for the default)")
            for m in self.prefixes:
                self._check_int("every prefix size", m)
            self._check(all(a < b for a, b in zip(self.prefixes, self.prefixes[1:])),
                        f"prefixes must be strictly increasing, got {self.prefixes}")
            self._check(self.prefixes[-1] <= self.d_sae,
                        f"prefix {self.prefixes[-1]} exceeds d_sae={self.d_sae}; prefixes must be <= d_sae")

    @property
    def prefix_sizes(self) -> list[int]:
        if self.prefixes is None:
            sizes = sorted({max(1, self.d_sae >> s) for s in (4, 3, 2, 1)})
        else:
            sizes = list(self.prefixes)
        return sizes + ([self.d_sae] if sizes[-1] != self.d_sae else [])


class MatryoshkaSAE(BatchTopKSAE):
    config_class: ClassVar[type] = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def sae_lens_spec(self, state):
        """``jumprelu`` as BatchTopK, or ``topk`` under ``selection="topk"`` (the threshold is then unused)."""
        return TopKSAE.sae_lens_spec(self, state) if self.cfg.selection == "topk" else super().sae_lens_spec(state)

    @property
    def levels(self) -> list[slice]:
        sizes = self.cfg.prefix_sizes
        return [slice(a, b) for a, b in zip([0] + sizes[:-1], sizes)]

    def _select(self, pre):
        if self.cfg.selection == "topk":
            return topk_select(pre, self.cfg.k)
        return super()._select(pre)

    def reconstructions(self, codes: Codes) -> list[Tensor]:
        out, acc = [], self.b_dec
        for sl in self.levels:
            part = codes.select((codes.cols >= sl.start) & (codes.cols < sl.stop))
            acc = acc + self.kernels.decode(part, self.W_dec)
            out.append(acc)
        return out

    def _after_batch(self, codes: Codes) -> None:
        if self.cfg.selection == "batchtopk":
            super()._after_batch(codes)
