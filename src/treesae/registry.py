"""The SAE architectures: one line each, its name, its class and its traits. Imports no torch.

The sweep, the analyses, the numbers and the figures ask this table instead of listing names, and the
table-reading stages (numbers, figures, paper) need nothing else from the SAE code. ``treesae.saes`` builds
its class registry from the same lines, so a new architecture is its module plus one line here (a line may hold
the class itself: a plug-in outside this package registers with ``ARCHITECTURES[name] = Architecture(cls, ...)``).

Traits: ``display_order`` ranks it in tables and legends and picks its colour and marker; ``multi_level``:
several dictionary levels (nested prefixes or a hierarchy); ``hierarchical``: a TreeSAE variant (levels
with their own encoders); ``fixed_l0``: k sets L0 (ReLU-L1's L1 coefficient does instead).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    cls: str | type           # "module:Class" (a module of treesae.saes, or any importable one), or the class
    display_order: int
    multi_level: bool = False
    hierarchical: bool = False
    fixed_l0: bool = True


ARCHITECTURES: dict[str, Architecture] = {
    "relu": Architecture("relu:ReLUSAE", 0, fixed_l0=False),
    "topk": Architecture("topk:TopKSAE", 1),
    "batchtopk": Architecture("batchtopk:BatchTopKSAE", 2),
    "matryoshka": Architecture("matryoshka:MatryoshkaSAE", 3, multi_level=True),
    "stacked": Architecture("stacked:StackedSAE", 4, multi_level=True, hierarchical=True),
    "residual": Architecture("residual:ResidualSAE", 5, multi_level=True, hierarchical=True),
    "tree": Architecture("tree:TreeSAE", 6, multi_level=True, hierarchical=True),
}


def traits(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown SAE architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def names(**want) -> list[str]:
    """Registered architectures in display order, those whose traits equal ``want`` (``hierarchical=True``)."""
    return sorted((n for n, a in ARCHITECTURES.items() if all(getattr(a, t) == v for t, v in want.items())),
                  key=lambda n: (ARCHITECTURES[n].display_order, n))
