"""SAE architectures: one module per architecture, a registry, and sae-lens export.

    from treesae.saes import build
    sae = build("topk", d_in=576, d_sae=4608, k=32)

Importing this package registers the TreeSAE variants with sae-lens (``export``), so
``sae_lens.SAE.load_from_disk`` reads every SAE written by ``save_sae``.
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
from .tree import TreeConfig, TreeSAE

ARCHITECTURES: dict[str, type[BaseSAE]] = {
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "matryoshka": MatryoshkaSAE,
    "relu": ReLUSAE,
    "stacked": StackedSAE,
    "residual": ResidualSAE,
    "tree": TreeSAE,
}


def make_config(architecture: str, **cfg) -> SAEConfig:
    """The validated config dataclass of ``architecture``."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    config_class = ARCHITECTURES[architecture].config_class
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field(s) {unknown}; fields: {', '.join(sorted(names))}")
    return config_class(**cfg)


def build(architecture: str, **cfg) -> BaseSAE:
    """Build an SAE from its architecture name and config fields (see each ``*Config``)."""
    cfg = make_config(architecture, **cfg)
    return ARCHITECTURES[architecture](cfg)


from .export import load_sae, save_sae, to_sae_lens  # noqa: E402  (registers the sae-lens classes)

__all__ = ["ARCHITECTURES", "BaseSAE", "SAEConfig", "build", "make_config", "save_sae", "load_sae",
           "to_sae_lens", "fired", "geometric_median", "nmse",
           "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig", "MatryoshkaSAE", "MatryoshkaConfig",
           "ReLUSAE", "ReLUConfig", "StackedSAE", "StackedConfig", "ResidualSAE", "ResidualConfig",
           "TreeSAE", "TreeConfig"]
