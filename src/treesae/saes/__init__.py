"""SAE architectures: one module per architecture, a registry, and sae-lens export.

    from treesae.saes import build
    sae = build("topk", d_in=576, d_sae=4608, k=32)     # any architecture: its config maps (d_sae, k)
    sae = build("tree", d_in=576, size=4608, ks=[4, 8, 20], budget="level")   # or its own fields

Each architecture owns its knowledge: its config maps the sweep's target to its fields
(``SAEConfig.target_fields``), its class declares its sae-lens export (``sae_lens_spec``) and its
name, class and traits are one line of ``treesae.registry`` (torch-free: the table-reading stages use it
alone), which the sweep, the analyses and the figures read through ``names``. Importing this package registers
the TreeSAE variants with sae-lens, so ``sae_lens.SAE.load_from_disk`` reads every SAE written by ``save_sae``.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping

from .base import BaseSAE, SAEConfig, fired, geometric_median, nmse
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .matryoshka import MatryoshkaConfig, MatryoshkaSAE
from .relu import ReLUConfig, ReLUSAE
from .residual import ResidualConfig, ResidualSAE
from .stacked import StackedConfig, StackedSAE
from .topk import TopKConfig, TopKSAE
from .export import load_sae, load_saes, save_sae, to_sae_lens
from .tree import TreeConfig, TreeSAE
from .. import registry
from ..registry import names, traits
from ..runs import RUN_OPTIONS, Run


class _Classes(Mapping):
    """``treesae.registry.ARCHITECTURES``' classes by name, resolved from its lines when asked for."""

    def __getitem__(self, name: str) -> type[BaseSAE]:
        if name not in registry.ARCHITECTURES:
            raise KeyError(name)
        cls = registry.ARCHITECTURES[name].cls
        if isinstance(cls, str):
            module, attr = cls.split(":")
            cls = getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), attr)
        if cls.config_class.architecture != name:
            raise TypeError(f"treesae.registry names {cls.__name__} as {name!r}, but its config says "
                            f"{cls.config_class.architecture!r}")
        return cls

    def __contains__(self, name) -> bool:
        return name in registry.ARCHITECTURES

    def __iter__(self):
        return iter(registry.ARCHITECTURES)

    def __len__(self) -> int:
        return len(registry.ARCHITECTURES)


ARCHITECTURES: Mapping[str, type[BaseSAE]] = _Classes()


def architecture(name: str) -> type[BaseSAE]:
    """The SAE class registered as ``name`` (its traits: ``treesae.registry.traits``)."""
    traits(name)  # names the known architectures when ``name`` is not one
    return ARCHITECTURES[name]


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


def run_config(run: Run, d_in: int, architectures: dict) -> dict:
    """The SAE config fields of a run of the sweep (``treesae.runs.Run``): its architecture's fields for the run's
    d_sae and k (with params.yaml's ``train.architectures.<name>`` extras), its init seed and its options."""
    try:
        fields = architecture(run.architecture).config_class.target_fields(
            run.d_sae, run.k, **(architectures.get(run.architecture) or {}))
    except ValueError as e:
        raise ValueError(f"run {run.name}: {e} (params.yaml: train.architectures.{run.architecture})") from None
    return {"d_in": d_in, "seed": run.init_seed(), **fields, **{k: v for k, v in run.options if k not in RUN_OPTIONS}}


def build_run(run: Run, d_in: int, architectures: dict) -> BaseSAE:
    """The untrained SAE of a run of the sweep."""
    return build(run.architecture, **run_config(run, d_in, architectures))

__all__ = ["ARCHITECTURES", "BaseSAE", "SAEConfig", "architecture", "build", "build_run", "run_config", "make_config", "names", "traits", "save_sae", "load_sae", "load_saes",
           "to_sae_lens", "fired", "geometric_median", "nmse",
           "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig", "MatryoshkaSAE", "MatryoshkaConfig",
           "ReLUSAE", "ReLUConfig", "StackedSAE", "StackedConfig", "ResidualSAE", "ResidualConfig",
           "TreeSAE", "TreeConfig"]
