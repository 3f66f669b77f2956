"""What the three TreeSAE variants (stacked, residual, tree) share.

Notation: L levels of widths ``w_0..w_{L-1}`` (``d_sae = sum w_l``), per-level sparsity ``k_l``,
level ``l``'s latents at ``o_l = w_0 + ... + w_{l-1}`` in the concatenated latent space.

* Decoder: one linear map over the concatenated codes, ``x_hat = z @ W_dec + b_dec`` with
  ``W_dec [d_sae, d_in]``; level l's directions are rows ``o_l .. o_l + w_l - 1``. The cumulative
  reconstruction of level l is ``x_hat_l = b_dec + sum_{m<=l} z_m @ W_dec[level m]``.
* Encoders: ``encoders[l]`` holds ``W_enc``, ``b_enc`` (and, stacked only, a LayerNorm); the variant
  decides what each level reads and which latents may fire. Every level applies ReLU to TopK_{k_l}.
* Loss: ``level_loss="cumulative"``: mean over levels of nMSE(x_hat_l, x); ``"final"``: the last
  level's only. Plus AuxK per level (dead latents of level l, by their ungated pre-activations,
  reconstruct the detached error of the reconstruction that level is trained on), averaged over
  levels, times ``aux_coef``.
* Widths: ``widths`` explicitly, or ``size`` (total latents) split over ``n_levels`` levels by the
  variant's growth rule. ``ks`` lists each level's sparsity; or ``k`` is level 0's (32 if neither is
  given) and level l gets ``round(k * k_scale_per_2x ** log2(w_l / w_0))``. After validation ``ks``
  holds the resolved per-level k and ``k`` level 0's, so a saved config records what the SAE uses.
* The sweep's target (``d_sae`` latents at L0 ``k``) is ``size=d_sae`` over ``n_levels`` (3) levels with
  ``ks = split_k(k, n_levels)``: k spread evenly, deeper levels taking the remainder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, ClassVar, NamedTuple

import torch
from sae_lens import SAE, SAEConfig as SLConfig, register_sae_class
from sae_lens.registry import SAE_CLASS_REGISTRY
from torch import Tensor, nn

from .base import (AuxKConfig, BaseSAE, SAEConfig, aux_nmse, auxk_reconstruction, reconstruction_errors,
                   scalar_logs, unit_rows)
from .sparse import Codes, Kernels


@dataclass(kw_only=True)
class HierarchicalConfig(SAEConfig, AuxKConfig):
    """See the module docstring. ``d_sae``, ``level_widths`` and ``level_ks`` are derived."""

    widths: list[int] | None = None
    size: int | None = None
    n_levels: int | None = None
    k: int | None = None
    k_scale_per_2x: float = 1.0
    ks: list[int] | None = None
    level_loss: str = "cumulative"

    def __post_init__(self):
        super().__post_init__()
        self._check_aux()
        self._check(self.level_loss in ("cumulative", "final"),
                    f"level_loss must be 'cumulative' or 'final', got {self.level_loss!r}")
        if self.k is not None:
            self._check_int("k", self.k)
        self._check(self.k_scale_per_2x > 0, f"k_scale_per_2x must be > 0, got {self.k_scale_per_2x}")
        if self.n_levels is not None:
            self._check_int("n_levels", self.n_levels)
        if self.widths is not None:
            self.widths = list(self.widths)
            self._check(len(self.widths) > 0, "widths must not be empty")
            for w in self.widths:
                self._check_int("every level width", w)
            self._check(self.n_levels in (None, len(self.widths)),
                        f"n_levels={self.n_levels} but widths has {len(self.widths)} levels; drop one of them")
            self._check(self.size in (None, sum(self.widths)),
                        f"size={self.size} but sum(widths)={sum(self.widths)}; give widths or size, not both")
            widths = self.widths
        else:
            self._check(self.size is not None, "give the level widths (widths=[...]) or the total size (size=...)")
            self._check_int("size", self.size)
            widths = self._split(self.size, self.n_levels or 3)
        self._widths = widths
        if self.ks is not None:
            self.ks = list(self.ks)
            self._check(len(self.ks) == len(widths), f"ks has {len(self.ks)} entries for {len(widths)} levels")
            for kk in self.ks:
                self._check_int("every entry of ks", kk)
            self._check(self.k in (None, self.ks[0]), f"k={self.k} is level 0's sparsity but ks={self.ks} gives it "
                        f"{self.ks[0]}; give ks or k, not both")
            ks = self.ks
        else:
            k0 = 32 if self.k is None else self.k
            ks = [max(1, round(k0 * self.k_scale_per_2x ** math.log2(w / widths[0]))) for w in widths]
        for l, (w, kk) in enumerate(zip(widths, ks)):
            self._check(kk <= w, f"level {l}: k={kk} exceeds its width {w}; lower k / k_scale_per_2x or widen it")
        self._ks, self.ks, self.k = ks, list(ks), ks[0]

    @classmethod
    def target_fields(cls, d_sae, k, **extra):
        n_levels = extra.pop("n_levels", 3)
        return {"size": d_sae, "n_levels": n_levels, "ks": split_k(k, n_levels), **extra}

    def _split(self, size: int, n_levels: int) -> list[int]:
        raise NotImplementedError

    @property
    def level_widths(self) -> list[int]:
        return list(self._widths)

    @property
    def level_ks(self) -> list[int]:
        return list(self._ks)

    @property
    def d_sae(self) -> int:
        return sum(self._widths)

    @property
    def k_total(self) -> int:
        """Upper bound on L0 (sum of the per-level k)."""
        return sum(self._ks)


def split_k(k: int, n_levels: int) -> list[int]:
    """k latents spread over levels as evenly as possible, deeper levels taking the remainder."""
    return [k // n_levels + (l >= n_levels - k % n_levels) for l in range(n_levels)]


def geometric_widths(size: int, n_levels: int, growth: float) -> list[int]:
    """Integer widths proportional to growth**l that sum exactly to ``size``."""
    raw = [growth ** l for l in range(n_levels)]
    widths = [max(1, round(size * r / sum(raw))) for r in raw[:-1]]
    return widths + [size - sum(widths)]


@dataclass(kw_only=True)
class GrowthConfig(HierarchicalConfig):
    """growth: width ratio between consecutive levels (with ``size``)."""

    growth: float = 2.0

    def __post_init__(self):
        self._check(self.growth > 0, f"growth must be > 0, got {self.growth}")
        super().__post_init__()

    def _split(self, size, n_levels):
        widths = geometric_widths(size, n_levels, self.growth)
        self._check(min(widths) >= 1, f"size={size} is too small for {n_levels} levels at growth {self.growth}")
        return widths


class LevelEncoder(nn.Module):
    """One level's encoder: ``W_enc [d_in_l, w_l]``, ``b_enc [w_l]``, optional LayerNorm on its input."""

    def __init__(self, d_in: int, width: int, layer_norm: bool = False, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.W_enc = nn.Parameter(torch.empty(d_in, width, **kw))
        self.b_enc = nn.Parameter(torch.zeros(width, **kw))
        self.ln = nn.LayerNorm(d_in, **kw) if layer_norm else None


class LevelOut(NamedTuple):
    """One level's forward: codes (level-local columns, differentiable values); the ungated
    pre-activations AuxK selects from; differentiable pre-activations at entries (rows, cols) and
    for whole columns; the level's decode (no bias) when the encoder already needed it."""

    codes: Codes
    pre: Tensor
    value_at: Callable[[Tensor, Tensor], Tensor]
    columns: Callable[[Tensor], Tensor]
    dec: Tensor | None = None


def linear_columns(x: Tensor, shift: Tensor | None, enc: LevelEncoder) -> Callable[[Tensor], Tensor]:
    """cols -> differentiable ``((x - shift) @ W_enc + b_enc)[:, cols]``."""
    return lambda cols: torch.addmm(enc.b_enc[cols], x if shift is None else x - shift, enc.W_enc[:, cols])


class LevelsMixin:
    """Attributes the variant cores rely on; shared with the sae-lens wrappers in ``export``."""

    level_widths: list[int]
    level_ks: list[int]

    def _setup_levels(self, widths: list[int], ks: list[int]) -> None:
        self.level_widths, self.level_ks = list(widths), list(ks)
        self.level_offsets = [sum(widths[:l]) for l in range(len(widths))]
        self.n_latents = sum(widths)

    def _levels(self, x: Tensor, shift: Tensor | None) -> list[LevelOut]:
        raise NotImplementedError

    def _level_decodes(self, outs: list[LevelOut]) -> list[Tensor]:
        return [o.dec if o.dec is not None else self.kernels.decode(o.codes.shifted(off, self.n_latents), self.W_dec)
                for o, off in zip(outs, self.level_offsets)]

    def _concat(self, outs: list[LevelOut]) -> Codes:
        # rows are sorted per level only: the result is for dense() / to_sparse(), not the kernels
        c = [o.codes.shifted(off, self.n_latents) for o, off in zip(outs, self.level_offsets)]
        rows = torch.cat([ci.rows for ci in c])
        return Codes(torch.cat([ci.vals for ci in c]), rows, torch.cat([ci.cols for ci in c]), None,
                     (c[0].shape[0], self.n_latents))


# ------------------------------------------------------------ sae-lens classes for the TreeSAE variants
@dataclass
class HierarchicalSLConfig(SLConfig):
    """sae-lens config of a TreeSAE variant: resolved per-level widths and k. A variant's subclass adds the
    fields of our config that its encoder reads (exported under the same names)."""

    widths: list[int] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)


class HierarchicalSL(SAE):
    """Inference SAE for a TreeSAE variant; the variant's core (mixed in first) does the encoding."""

    def _encoder_specs(self) -> list[tuple[int, bool]]:
        return [(self.cfg.d_in, False)] * len(self.cfg.widths)

    def initialize_weights(self) -> None:
        kw = dict(device=self.device, dtype=self.dtype)
        for f in _variant_fields(type(self.cfg)):  # what the variant cores read
            setattr(self, f, getattr(self.cfg, f))
        self._setup_levels(self.cfg.widths, self.cfg.ks)
        self.kernels = Kernels(sparse=True)
        self.b_dec = nn.Parameter(torch.zeros(self.cfg.d_in, **kw))
        self.W_dec = nn.Parameter(torch.empty(self.cfg.d_sae, self.cfg.d_in, **kw))
        self.encoders = nn.ModuleList(LevelEncoder(d, w, ln, **kw)
                                      for (d, ln), w in zip(self._encoder_specs(), self.cfg.widths))

    def encode(self, x: Tensor) -> Tensor:
        sae_in = self.process_sae_in(x)  # x - b_dec; any leading dims ([batch, pos, d] in HookedSAETransformer)
        z = self._concat(self._levels(sae_in.reshape(-1, sae_in.shape[-1]), None)).dense()
        return self.hook_sae_acts_post(z.reshape(*sae_in.shape[:-1], z.shape[-1]))

    def decode(self, feature_acts: Tensor) -> Tensor:
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        return self.reshape_fn_out(self.run_time_activation_norm_fn_out(out), self.d_head)

    def fold_W_dec_norm(self):
        raise NotImplementedError("TreeSAE variants do not support folding decoder norms")


def _variant_fields(cfg_cls: type) -> list[str]:
    """Fields a variant's sae-lens config adds to ``HierarchicalSLConfig``."""
    base = {f.name for f in fields(HierarchicalSLConfig)}
    return [f.name for f in fields(cfg_cls) if f.name not in base]


def register_sae_lens(cls: type, cfg_cls: type) -> None:
    """Register a variant's sae-lens class under ``cfg_cls.architecture()`` (once)."""
    if cfg_cls.architecture() not in SAE_CLASS_REGISTRY:
        register_sae_class(cfg_cls.architecture(), cls, cfg_cls)


class HierarchicalSAE(LevelsMixin, BaseSAE):
    """Parameters: ``encoders`` (ModuleList of ``LevelEncoder``), ``W_dec``, ``b_dec``. A variant names its
    sae-lens inference class and that class' config in ``sae_lens_classes``."""

    config_class: ClassVar[type] = HierarchicalConfig
    cfg: HierarchicalConfig
    sae_lens_classes: ClassVar[tuple[type, type]]

    def sae_lens_spec(self, state):
        cls, cfg_cls = self.sae_lens_classes
        extra = dict(widths=self.level_widths, ks=self.level_ks) | {f: getattr(self.cfg, f) for f in _variant_fields(cfg_cls)}
        return cls, cfg_cls, extra, state

    def __init__(self, cfg: HierarchicalConfig):
        super().__init__(cfg)
        self._setup_levels(cfg.level_widths, cfg.level_ks)
        gen = self._generator()
        W_dec = unit_rows((cfg.d_sae, cfg.d_in), gen, cfg.decoder_init_norm)
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.encoders = nn.ModuleList(self._level_encoder(l, gen, W_dec) for l in range(len(self.level_widths)))

    def _level_encoder(self, l: int, gen: torch.Generator, W_dec: Tensor) -> LevelEncoder:
        """Default: level l reads d_in; its encoder is its decoder rows transposed (tied_init)."""
        w = self.level_widths[l]
        enc = LevelEncoder(self.d_in, w)
        rows = W_dec[self.levels[l]] if self.cfg.tied_init else unit_rows((w, self.d_in), gen, self.cfg.decoder_init_norm)
        enc.W_enc.data.copy_(rows.t())
        return enc

    @property
    def levels(self) -> list[slice]:
        return [slice(o, o + w) for o, w in zip(self.level_offsets, self.level_widths)]

    def encode(self, x):
        return self._concat(self._levels(self._prep(x), self.b_dec)).dense()

    def training_loss(self, x, dead_mask=None, *, dense_z=True):
        x = self._prep(x)
        cfg, B = self.cfg, x.shape[0]
        outs = self._levels(x, self.b_dec)
        self._observe(outs)
        cum, acc = [], self.b_dec
        for dec in self._level_decodes(outs):
            acc = acc + dec
            cum.append(acc)
        errors, level_nmse = reconstruction_errors(cum, x)
        recon = torch.stack(level_nmse).mean() if cfg.level_loss == "cumulative" else level_nmse[-1]
        level_aux = [self._level_aux(l, o, x, cum[l] if cfg.level_loss == "cumulative" else cum[-1], dead_mask)
                     for l, o in enumerate(outs)]
        aux = torch.stack(level_aux).mean()
        loss = recon + cfg.aux_coef * aux
        structure = self._structure_loss(x, outs)
        if structure is not None:
            loss = loss + structure
        l0s = [(o.codes.vals.detach() > 0).sum() / B for o in outs]
        logs = scalar_logs(loss=loss, mse=errors[-1] / B, nmse=level_nmse[-1],
                           l0=sum(l0s), aux=aux)
        if structure is not None:
            logs |= scalar_logs(structure=structure)
        for l in range(len(outs)):
            logs |= scalar_logs(**{f"level{l}/l0": l0s[l], f"level{l}/nmse": level_nmse[l],
                                   f"level{l}/aux": level_aux[l]})
        return loss, logs, self._z_out(self._concat(outs), dense_z)

    def _observe(self, outs: list[LevelOut]) -> None:
        """Training statistics a variant keeps from each batch's codes (none by default)."""

    def _structure_loss(self, x: Tensor, outs: list[LevelOut]) -> Tensor | None:
        """A variant's loss on how its levels relate (none by default; added to the loss and logged as ``structure``)."""
        return None

    def _level_aux(self, l: int, out: LevelOut, x: Tensor, x_hat: Tensor, dead_mask: Tensor | None) -> Tensor:
        e_hat = None
        if self.cfg.aux_k and dead_mask is not None:
            k_aux = min(self.cfg.k_aux, max(1, self.level_widths[l] // 2))
            e_hat = auxk_reconstruction(out.pre, dead_mask[self.levels[l]], k_aux, out.columns, out.value_at,
                                        self.W_dec, self.level_offsets[l], self.kernels)
        return x.new_zeros(()) if e_hat is None else aux_nmse(e_hat, (x - x_hat).detach())
