"""Runs: the identity of one SAE of a sweep, and the sweep's expansion from params.yaml's ``train`` section.

A run is one SAE: architecture, corpus, layer, dictionary size ``d_sae``, ``k`` and ``seed`` (a
replicate index; the init is drawn from a hash of the whole run, ``Run.init_seed``, so runs never share
an init unless ``options: {shared_init: true}`` asks for it), plus config ``options``. ``base`` is one
run; each grid varies some of its fields; runs that come out identical are trained once. ``k`` is the
target L0, which each architecture's config maps to its own fields (``SAEConfig.target_fields``):
TopK-style SAEs keep k latents per token; the hierarchical variants split k over their levels (``ks``,
summing to k); ReLU-L1 has no k and takes the L1 coefficient listed for that k in
``architectures.relu.l1_coef_by_k``.

Stage 02 writes one row per run to ``data/train/metrics.csv`` (index ``name``): its training factors
(``FACTORS``), ``options``, ``grids`` (the comma-joined grids of ``params.yaml`` it belongs to: base, frontier,
seed, corpus, size, layer, recipe), held-out metrics and convergence diagnostics. Every selection of runs
from that table that a stage, a number or a figure uses is defined here (``base_run``, ``frontier``,
``recipe_runs``, ``layer_runs``, ``hierarchy_runs`` ...). No torch: ``treesae.saes.build_run`` builds a run's SAE.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import paths
from .config import describe, type_ok
from .corpora import safe_name
from .seeds import INIT_TAG, hashed_seed

RUN_FIELDS = ("architecture", "corpus", "layer", "d_sae", "k", "seed", "options")
RUN_OPTIONS = ("shared_init",)  # run options that are not SAE config fields
# The training factors of metrics.csv that feature matching compares (``Run.factors``; matching.factors in params)
FACTORS = ("corpus", "seed", "architecture", "k", "d_sae", "b_dec_init", "tied_init", "aux_k", "layer")


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
        """The run's name, ``FACTORS`` and options: its columns of metrics.csv."""
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


# ------------------------------------------------------------------ selections from the runs table
def metrics_path() -> Path:
    return paths.data("train", "metrics.csv")


def read_metrics(path=None) -> pd.DataFrame:
    """Stage 02's runs table, indexed by run name."""
    path = Path(path or metrics_path())
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the training stage first (`dvc repro train`).")
    return pd.read_csv(path, index_col="name")


def flag(col: pd.Series) -> pd.Series:
    """A bool column as read back from CSV (True / "True" / "true")."""
    return col.astype(str).str.lower() == "true"


def grid_sets(metrics: pd.DataFrame) -> pd.Series:
    """Run name -> set of grid names (the ``grids`` column split on commas)."""
    return metrics["grids"].fillna("").astype(str).map(lambda g: frozenset(x for x in g.split(",") if x))


def in_grids(metrics: pd.DataFrame, *grids) -> pd.Series:
    """Boolean mask: runs that belong to at least one of ``grids``."""
    want = set(grids)
    return grid_sets(metrics).map(lambda g: bool(g & want))


def base_run(metrics: pd.DataFrame) -> pd.Series:
    """The ``base`` run of the sweep (every grid varies it)."""
    rows = metrics[in_grids(metrics, "base")]
    if len(rows) != 1:
        raise ValueError(f"metrics.csv has {len(rows)} runs in the 'base' grid, expected exactly one.")
    return rows.iloc[0]


def pick(metrics: pd.DataFrame, grids=None, **equal) -> pd.DataFrame:
    """Runs in any of ``grids`` (None: all) whose columns equal the given values, in table order."""
    mask = pd.Series(True, index=metrics.index) if grids is None else in_grids(metrics, *grids)
    for col, value in equal.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple, set)) else [value]
        mask &= metrics[col].isin(list(values))
    return metrics[mask]


def option_tag(options) -> str:
    """Recipe variant label of a run's options: {} -> "default", {"aux_k": false} -> "no_aux_k"."""
    opts = json.loads(options) if isinstance(options, str) and options else {}
    if not opts:
        return "default"
    return "+".join(f"no_{k}" if v is False else f"{k}{v}" for k, v in sorted(opts.items()))


def default_options(metrics: pd.DataFrame) -> pd.DataFrame:
    """Runs with no config options (the full recipe as params.yaml's architectures set it)."""
    return metrics[metrics.options.map(option_tag) == "default"] if "options" in metrics else metrics


def default_recipe(m: pd.DataFrame) -> pd.Series:
    """Mask: runs trained with the full recipe (AuxK, tied init, geometric-median b_dec), by their factor columns."""
    ok = pd.Series(True, index=m.index)
    for c in ("aux_k", "tied_init"):
        if c in m:
            ok &= flag(m[c])
    if "b_dec_init" in m:
        ok &= m.b_dec_init.astype(str) == "geometric_median"
    return ok


def _ordered(rows: pd.DataFrame, architectures, *then) -> pd.DataFrame:
    order = {a: i for i, a in enumerate(architectures)}
    return rows.assign(_o=[order[a] for a in rows.architecture]).sort_values(["_o", *then], kind="stable").drop(columns="_o")


def frontier(metrics: pd.DataFrame) -> pd.DataFrame:
    """The frontier: base and ``frontier`` grid runs on the base corpus / layer / size / seed, default options (one
    row per architecture and k)."""
    b = base_run(metrics)
    return default_options(pick(metrics, ["base", "frontier"], corpus=b.corpus, layer=b.layer, d_sae=b.d_sae, seed=b.seed))


def frontier_seeds(metrics: pd.DataFrame) -> pd.DataFrame:
    """Every seed of the frontier's configurations (same corpus / layer / size / options as the base run), for
    error bars; ``frontier`` keeps the base seed only."""
    b = base_run(metrics)
    keys = set(zip(frontier(metrics).architecture, frontier(metrics).k))
    r = default_options(pick(metrics, None, corpus=b.corpus, layer=b.layer, d_sae=b.d_sae))
    return r[[(a, k) in keys for a, k in zip(r.architecture, r.k)]]


def recipe_runs(metrics: pd.DataFrame) -> pd.DataFrame:
    """The base run and the recipe ablations of its architecture, with a ``variant`` column (``option_tag``)."""
    b = base_run(metrics)
    r = pick(metrics, ["base", "recipe"], architecture=b.architecture)
    return r.assign(variant=[option_tag(o) for o in r.options])


def hierarchy_runs(metrics: pd.DataFrame, architectures) -> pd.DataFrame:
    """The frontier runs at the base run's k, one per architecture (in the order of ``architectures``; those not
    trained are skipped)."""
    f = frontier(metrics)
    rows = f[f.architecture.isin(list(architectures)) & (f.k == base_run(metrics).k)]
    rows = _ordered(rows[~rows.architecture.duplicated()], architectures)
    if rows.empty:
        raise ValueError(f"no frontier SAE of {list(architectures)} at the base k={base_run(metrics).k} in metrics.csv.")
    return rows


def probe_runs(metrics: pd.DataFrame, architectures) -> pd.DataFrame:
    """Every seed of the hierarchy runs' configuration (base corpus, layer, size and k, default options): the probe
    test's replicates, in the order of ``architectures`` then seed."""
    b = base_run(metrics)
    rows = pick(metrics, None, architecture=list(architectures), k=b.k, corpus=b.corpus, layer=b.layer, d_sae=b.d_sae)
    return _ordered(default_options(rows), architectures, "seed")


def layer_runs(metrics: pd.DataFrame, architecture: str = "topk", corpus: str | None = None) -> pd.DataFrame:
    """One SAE per layer: the base run and the ``layer`` grid (they differ only in layer), restricted to
    ``architecture`` and, when given, ``corpus``. Sorted by layer; index run name."""
    base = base_run(metrics)
    rows = pick(metrics, ["base", "layer"], architecture=architecture, corpus=corpus or base.corpus)
    if rows.empty:
        raise ValueError(f"no {architecture} SAE in the base run or the 'layer' grid of metrics.csv "
                         f"(corpus {corpus or base.corpus}); set the stage's architecture/corpus to a trained one.")
    rows = rows.sort_values(["layer", "seed"], kind="stable")
    return rows[~rows.layer.duplicated()]
