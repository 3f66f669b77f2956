"""Runs: the identity of one SAE of a sweep, and the sweep's expansion from params.yaml's ``train`` section.

A run is one SAE: architecture, corpus, layer, dictionary size ``d_sae``, ``k`` and ``seed`` (a
replicate index; the init is drawn from a hash of the whole run, ``Run.init_seed``, so runs never share
an init unless ``options: {shared_init: true}`` asks for it), plus config ``options``. ``base`` is one
run; each grid varies some of its fields; runs that come out identical are trained once. ``k`` is the
target L0, which each architecture's config maps to its own fields (``SAEConfig.target_fields``):
TopK-style SAEs keep k latents per token; the hierarchical variants split k over their levels (``ks``,
summing to k); ReLU-L1 has no k and takes the L1 coefficient listed for that k in
``architectures.relu.l1_coef_by_k``.
"""
import itertools
import json
from dataclasses import dataclass

from .config import describe, type_ok
from .corpora import safe_name
from .saes import architecture
from .saes import build as build_sae
from .seeds import INIT_TAG, hashed_seed

RUN_FIELDS = ("architecture", "corpus", "layer", "d_sae", "k", "seed", "options")
RUN_OPTIONS = ("shared_init",)  # run options that are not SAE config fields


@dataclass(frozen=True)
class Run:
    architecture: str
    corpus: str
    layer: int
    d_sae: int
    k: int
    seed: int
    options: tuple = ()  # sorted (key, value) pairs of extra SAE config fields

    @property
    def name(self) -> str:
        tags = "".join(f"-no_{k}" if v is False else f"-{k}{v}" for k, v in self.options)
        return f"{self.architecture}-{safe_name(self.corpus)}-L{self.layer}-d{self.d_sae}-k{self.k}-s{self.seed}{tags}"

    def init_seed(self) -> int:
        """The seed of this SAE's initial weights: a hash of its whole identity under a fixed tag, so no two
        runs share an init by accident and no other seeded stream (data order, synthetic data) reproduces
        it. ``options: {shared_init: true}`` is the named control arm: the init then depends on the seed
        and dictionary size alone, so such runs of one architecture start from the same weights."""
        ident = dict(seed=self.seed, d_sae=self.d_sae) if dict(self.options).get("shared_init") else \
            {f: (dict(getattr(self, f)) if f == "options" else getattr(self, f)) for f in RUN_FIELDS}
        return hashed_seed(INIT_TAG, **ident)

    def factors(self) -> dict:
        """The training factors the matching analysis compares (column names of analysis.matching.FACTORS)."""
        opts = dict(self.options)
        return dict(name=self.name, architecture=self.architecture, corpus=self.corpus, layer=self.layer,
                    d_sae=self.d_sae, k=self.k, seed=self.seed, tied_init=opts.get("tied_init", True),
                    aux_k=opts.get("aux_k", True),
                    b_dec_init="geometric_median" if opts.get("geometric_median_init", True) else "zero",
                    options=json.dumps(opts, sort_keys=True))


RUN_TYPES = dict(architecture=str, corpus=str, layer=int, d_sae=int, k=int, seed=int, options=dict)


def _check_field(where: str, key: str, value):
    if not type_ok(value, RUN_TYPES[key]):
        raise ValueError(f"params.yaml: {where}.{key} must be {describe(RUN_TYPES[key])}, got {value!r} "
                         f"({type(value).__name__}).")
    if key in ("d_sae", "k") and value < 1 or key == "layer" and value < 0:
        raise ValueError(f"params.yaml: {where}.{key} must be {'>= 0' if key == 'layer' else '>= 1'}, got {value}.")


def _runs_by_grid(train: dict) -> dict[Run, list[str]]:
    """Every run of the sweep (deduplicated, in a stable order) with the grids it belongs to."""
    if not isinstance(train.get("base"), dict):
        raise ValueError(f"params.yaml: train.base must be a mapping of run fields {list(RUN_FIELDS)}, got {train.get('base')!r}.")
    base = dict(train["base"])
    unknown = sorted(set(base) - set(RUN_FIELDS))
    missing = sorted(set(RUN_FIELDS[:-1]) - set(base))
    if unknown or missing:
        raise ValueError(f"params.yaml: train.base has unknown field(s) {unknown}, lacks {missing}; fields: {list(RUN_FIELDS)}")
    for key, value in base.items():
        _check_field("train.base", key, value)
    runs = {}
    grids = train.get("grids") or {}
    if not isinstance(grids, dict):
        raise ValueError(f"params.yaml: train.grids must be a mapping of grid names to {{field: [values]}}, got {grids!r}.")
    for gname, grid in {"base": {}, **grids}.items():
        if not isinstance(grid, dict):
            raise ValueError(f"params.yaml: train.grids.{gname} must map run fields to lists of values, got {grid!r}.")
        bad = sorted(set(grid) - set(RUN_FIELDS))
        if bad:
            raise ValueError(f"params.yaml: train.grids.{gname} varies unknown field(s) {bad}; fields: {list(RUN_FIELDS)}")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"params.yaml: train.grids.{gname}.{key} must be a non-empty list of values, got "
                                 f"{values!r}; an empty grid trains nothing (delete the grid instead).")
            for v in values:
                _check_field(f"train.grids.{gname}", key, v)
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            spec = dict(base, **dict(zip(keys, values)))
            spec["options"] = tuple(sorted((spec.get("options") or {}).items()))
            runs.setdefault(Run(**spec), []).append(gname)
    return runs


def expand(train: dict) -> list[Run]:
    """All runs of the sweep, deduplicated, in a stable order."""
    return list(_runs_by_grid(train))


def grids_of(train: dict) -> dict[str, list[str]]:
    """Run name -> the grids it belongs to (a run can serve several analyses)."""
    return {run.name: grids for run, grids in _runs_by_grid(train).items()}


def sae_config(run: Run, d_in: int, architectures: dict) -> dict:
    """The SAE config fields of a run (``treesae.saes.build(run.architecture, **fields)``)."""
    try:
        fields = architecture(run.architecture).config_class.target_fields(
            run.d_sae, run.k, **(architectures.get(run.architecture) or {}))
    except ValueError as e:
        raise ValueError(f"run {run.name}: {e} (params.yaml: train.architectures.{run.architecture})") from None
    return {"d_in": d_in, "seed": run.init_seed(), **fields, **{k: v for k, v in run.options if k not in RUN_OPTIONS}}


def build(run: Run, d_in: int, architectures: dict):
    return build_sae(run.architecture, **sae_config(run, d_in, architectures))
