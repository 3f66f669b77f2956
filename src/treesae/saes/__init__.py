"""SAE architectures: one module per architecture, a registry, and sae-lens export.

    from treesae.saes import build
    sae = build("topk", d_in=576, d_sae=4608, k=32)     # any architecture: its config maps (d_sae, k)
    sae = build("tree", d_in=576, size=4608, ks=[4, 8, 20], budget="level")   # or its own fields

Each architecture owns its knowledge: its config maps the sweep's target to its fields
(``SAEConfig.target_fields``), its class declares its sae-lens export (``sae_lens_spec``) and its
traits (``display_order``, ``multi_level``, ``hierarchical``, ``fixed_l0``), which the sweep, the analyses
and the figures read through ``names``. Importing this package registers the TreeSAE variants with
sae-lens, so ``sae_lens.SAE.load_from_disk`` reads every SAE written by ``save_sae``.
"""
from __future__ import annotations

import dataclasses

from .base import BaseSAE, SAEConfig, fired, geometric_median, nmse
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .matryoshka import MatryoshkaConfig, MatryoshkaSAE
from .relu import ReLUConfig, ReLUSAE
from .residual import ResidualConfig, ResidualSAE
from .stacked import StackedConfig, StackedSAE
from .topk import TopKConfig, TopKSAE
from .export import load_sae, save_sae, to_sae_lens
from .tree import TreeConfig, TreeSAE

ARCHITECTURES: dict[str, type[BaseSAE]] = {cls.config_class.architecture: cls for cls in (
    TopKSAE, BatchTopKSAE, MatryoshkaSAE, ReLUSAE, StackedSAE, ResidualSAE, TreeSAE)}


def architecture(name: str) -> type[BaseSAE]:
    """The SAE class registered as ``name`` (its traits are class attributes)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def names(**traits) -> list[str]:
    """Registered architectures in display order, those whose traits equal ``traits`` (``hierarchical=True``)."""
    return sorted((n for n, c in ARCHITECTURES.items() if all(getattr(c, t) == v for t, v in traits.items())),
                  key=lambda n: (ARCHITECTURES[n].display_order, n))


def make_config(architecture_name: str, **cfg) -> SAEConfig:
    """The validated config dataclass of an architecture, from its fields, or from the sweep's target
    ``d_sae`` and ``k`` where the config has no such field (a hierarchical ``size`` and ``ks``, ReLU's
    L1 coefficient: ``SAEConfig.target_fields``)."""
    config_class = architecture(architecture_name).config_class
    names_ = {f.name for f in dataclasses.fields(config_class)}
    if {"d_sae", "k"} <= set(cfg) and not {"d_sae", "k"} <= names_:
        cfg = dict(d_in=cfg.pop("d_in"), **({"seed": cfg.pop("seed")} if "seed" in cfg else {}),
                   **config_class.target_fields(cfg.pop("d_sae"), cfg.pop("k"), **cfg))
    unknown = sorted(set(cfg) - names_)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field(s) {unknown}; fields: {', '.join(sorted(names_))}")
    return config_class(**cfg)


def build(architecture_name: str, **cfg) -> BaseSAE:
    """Build an SAE from its architecture name and config fields (see ``make_config``)."""
    return architecture(architecture_name)(make_config(architecture_name, **cfg))

__all__ = ["ARCHITECTURES", "BaseSAE", "SAEConfig", "architecture", "build", "make_config", "names", "save_sae", "load_sae",
           "to_sae_lens", "fired", "geometric_median", "nmse",
           "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig", "MatryoshkaSAE", "MatryoshkaConfig",
           "ReLUSAE", "ReLUConfig", "StackedSAE", "StackedConfig", "ResidualSAE", "ResidualConfig",
           "TreeSAE", "TreeConfig"]
