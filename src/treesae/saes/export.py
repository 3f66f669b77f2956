"""Save / load SAEs in sae-lens' on-disk format, plus ``treesae.json`` to rebuild our module exactly.

``save_sae(sae, path)`` writes ``cfg.json`` + ``sae_weights.safetensors`` (via sae-lens' own
``save_model``) and ``treesae.json`` (our architecture and full config). ``sae_lens.SAE.load_from_disk``
then returns an inference SAE whose ``decode(encode(x))`` equals our eval-mode ``forward(x)``:

============  ===========================  ==================================================
ours          sae-lens architecture        mapping
============  ===========================  ==================================================
topk          ``topk``                     same weights; apply_b_dec_to_input=True,
                                           rescale_acts_by_decoder_norm=False
batchtopk     ``jumprelu``                 same weights; threshold = our scalar on every latent
matryoshka    ``jumprelu`` / ``topk``      by ``selection`` (batchtopk / topk)
relu          ``standard``                 same weights; apply_b_dec_to_input from our config
stacked       ``treesae_stacked``          registered here; identical parameter names
residual      ``treesae_residual``         registered here; identical parameter names
tree          ``treesae_tree``             registered here; identical parameter names
============  ===========================  ==================================================

The three ``treesae_*`` classes reuse the variants' encoder code (``StackedCore`` etc.), so they
cannot drift from ours. Registration happens on ``import treesae.saes``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from sae_lens import SAE, SAEConfig as SLConfig, register_sae_class
from sae_lens.constants import SAE_WEIGHTS_FILENAME
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from torch import Tensor, nn

from .base import BaseSAE
from .hierarchical import HierarchicalSAE, LevelEncoder
from .residual import ResidualCore
from .sparse import Kernels
from .stacked import StackedCore
from .tree import TreeCore

TREESAE_FILENAME = "treesae.json"
FORMAT_VERSION = 1


# ------------------------------------------------------------ sae-lens classes for the TreeSAEs
@dataclass
class HierarchicalSLConfig(SLConfig):
    """sae-lens config of a TreeSAE variant: resolved per-level widths and k."""

    widths: list[int] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)


class _HierarchicalSL(SAE):
    """Inference SAE for a TreeSAE variant; the variant's core (mixed in first) does the encoding."""

    def _encoder_specs(self) -> list[tuple[int, bool]]:
        return [(self.cfg.d_in, False)] * len(self.cfg.widths)

    def initialize_weights(self) -> None:
        kw = dict(device=self.device, dtype=self.dtype)
        for flag in ("layer_norm", "level_residual", "branching"):  # what the variant cores read
            if hasattr(self.cfg, flag):
                setattr(self, flag, getattr(self.cfg, flag))
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


@dataclass
class StackedSLConfig(HierarchicalSLConfig):
    layer_norm: bool = True
    level_residual: bool = False

    @classmethod
    def architecture(cls) -> str:
        return "treesae_stacked"


class StackedSL(StackedCore, _HierarchicalSL):
    def _encoder_specs(self):
        return [(self.cfg.d_in, False)] + [(w, self.cfg.layer_norm) for w in self.cfg.widths[:-1]]


@dataclass
class ResidualSLConfig(HierarchicalSLConfig):
    @classmethod
    def architecture(cls) -> str:
        return "treesae_residual"


class ResidualSL(ResidualCore, _HierarchicalSL):
    pass


@dataclass
class TreeSLConfig(HierarchicalSLConfig):
    branching: int = 2
    parent_rule: str = "fixed"
    budget: str = "level"

    @classmethod
    def architecture(cls) -> str:
        return "treesae_tree"


class TreeSL(TreeCore, _HierarchicalSL):
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.parent_rule, self.budget, self.batch_training = self.cfg.parent_rule, self.cfg.budget, False
        if self.budget == "batch":
            self.register_buffer("threshold", torch.zeros((), dtype=self.dtype, device=self.device))
        if self.parent_rule == "learned":
            self.register_buffer("parent_index", torch.full((self.cfg.d_sae,), -1, dtype=torch.long, device=self.device))

    @property
    def parent_of(self) -> Tensor:
        return self._parent_of()


SAE_LENS_CLASSES = {"stacked": (StackedSL, StackedSLConfig), "residual": (ResidualSL, ResidualSLConfig),
                    "tree": (TreeSL, TreeSLConfig)}
for _cls, _cfg in SAE_LENS_CLASSES.values():
    if _cfg.architecture() not in SAE_CLASS_REGISTRY:
        register_sae_class(_cfg.architecture(), _cls, _cfg)


# ------------------------------------------------------------------------------- conversion
TRAINING_ONLY = ("threshold_updates", "steps", "cofire", "fire_count", "adopt_steps")  # buffers that only matter during training


def _dtype_str(sae: BaseSAE) -> str:
    return str(sae.W_dec.dtype).removeprefix("torch.")


def _sae_lens_spec(sae: BaseSAE) -> tuple[type, type, dict[str, Any], dict[str, Tensor]]:
    """(sae-lens class, config class, extra config fields, state dict) for one of our SAEs."""
    state = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items() if k not in TRAINING_ONLY}
    arch, cfg = sae.architecture, sae.cfg
    if isinstance(sae, HierarchicalSAE):
        cls, cfg_cls = SAE_LENS_CLASSES[arch]
        extra = dict(widths=sae.level_widths, ks=sae.level_ks)
        extra |= dict(layer_norm=cfg.layer_norm, level_residual=cfg.level_residual) if arch == "stacked" else {}
        extra |= dict(branching=cfg.branching, parent_rule=cfg.parent_rule, budget=cfg.budget) if arch == "tree" else {}
        return cls, cfg_cls, extra, state
    if arch == "relu":
        return StandardSAE, StandardSAEConfig, dict(apply_b_dec_to_input=cfg.apply_b_dec_to_input), state
    if arch == "topk" or (arch == "matryoshka" and cfg.selection == "topk"):
        state.pop("threshold", None)
        return TopKSAE, TopKSAEConfig, dict(k=cfg.k, rescale_acts_by_decoder_norm=False), state
    if arch in ("batchtopk", "matryoshka"):
        state["threshold"] = state["threshold"].expand(cfg.d_sae).clone()
        return JumpReLUSAE, JumpReLUSAEConfig, {}, state
    raise ValueError(f"no sae-lens mapping for architecture {arch!r}")


def to_sae_lens(sae: BaseSAE, metadata: dict[str, Any] | None = None) -> SAE:
    """An equivalent sae-lens inference SAE (CPU, our dtype); ``metadata`` e.g. model_name, hook_name."""
    cls, cfg_cls, extra, state = _sae_lens_spec(sae)
    cfg = cfg_cls(d_in=sae.d_in, d_sae=sae.d_sae, dtype=_dtype_str(sae), device="meta",
                  apply_b_dec_to_input=extra.pop("apply_b_dec_to_input", True),
                  metadata=SAEMetadata(**(metadata or {})), **extra)
    sl = cls(cfg)
    sl.load_state_dict(state, assign=True)
    return sl.to("cpu")


def save_sae(sae: BaseSAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``path/{cfg.json, sae_weights.safetensors, treesae.json}`` (atomically: a reader sees the old
    SAE or the new one, never a mix); returns ``path``."""
    from ..io import atomic_dir
    path = Path(path)
    with atomic_dir(path) as tmp:
        to_sae_lens(sae, metadata).save_model(tmp)
        info = {"format": FORMAT_VERSION, "architecture": sae.architecture, "config": sae.cfg.to_dict(),
                "sae_lens_architecture": json.loads((tmp / "cfg.json").read_text())["architecture"]}
        (tmp / TREESAE_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
    return path


def load_sae(path: str | Path) -> BaseSAE:
    """Rebuild our module (eval mode, CPU) from a directory written by ``save_sae``."""
    from . import build

    path = Path(path)
    if not (path / TREESAE_FILENAME).exists():
        raise FileNotFoundError(f"{path} has no {TREESAE_FILENAME}: not written by treesae.saes.save_sae "
                                "(load sae-lens SAEs with sae_lens.SAE.load_from_disk)")
    info = json.loads((path / TREESAE_FILENAME).read_text())
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / TREESAE_FILENAME}: format {info.get('format')!r}, expected {FORMAT_VERSION}")
    state = load_file(str(path / SAE_WEIGHTS_FILENAME))
    sae = build(info["architecture"], **info["config"]).to(state["W_dec"].dtype)
    if "threshold" in state:
        if state["threshold"].ndim == 1:  # jumprelu: our scalar threshold, repeated on every latent
            state["threshold"] = state["threshold"][0]
    elif "threshold" in sae.state_dict():  # matryoshka with topk selection: the threshold is unused
        state["threshold"] = sae.threshold
    state |= {k: v for k, v in sae.state_dict().items() if k in TRAINING_ONLY}  # counters, not exported
    sae.load_state_dict(state, strict=True)
    return sae.eval()
