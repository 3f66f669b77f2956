"""Stage 02: expand the ``train`` section of params.yaml into runs, train them, save and evaluate.

A run is one SAE: architecture, corpus, layer, dictionary size ``d_sae``, ``k`` and ``seed`` (a
replicate index; the init is drawn from a hash of the whole run, ``Run.init_seed``, so runs never share
an init unless ``options: {shared_init: true}`` asks for it; every SAE of a (corpus, layer) group sees the
same shuffled batches), plus config ``options``. ``base`` is one run; each grid varies some of its fields; runs that come out
identical are trained once. ``k`` is the target L0, which each architecture's config maps to its own
fields (``SAEConfig.target_fields``): TopK-style SAEs keep k latents per token; the hierarchical variants
split k over their levels (``ks``, summing to k); ReLU-L1 has no k and takes the L1 coefficient listed for
that k in ``architectures.relu.l1_coef_by_k``.
"""
import hashlib
import itertools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import paths
from .cache import ActivationCache, hook_name
from .io import write_bytes_atomic, write_json
from .model import origin
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
        return f"{self.architecture}-{self.corpus}-L{self.layer}-d{self.d_sae}-k{self.k}-s{self.seed}{tags}"

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
        return dict(name=self.name, architecture=self.architecture, dataset=self.corpus, layer=self.layer,
                    d_sae=self.d_sae, k=self.k, seed=self.seed, tied_init=opts.get("tied_init", True),
                    aux_k=opts.get("aux_k", True),
                    b_dec_init="geometric_median" if opts.get("geometric_median_init", True) else "zero",
                    options=json.dumps(opts, sort_keys=True))


RUN_TYPES = dict(architecture=str, corpus=str, layer=int, d_sae=int, k=int, seed=int, options=dict)


def _check_field(where: str, key: str, value):
    from .config import describe, type_ok
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
    from .saes import architecture
    try:
        fields = architecture(run.architecture).config_class.target_fields(
            run.d_sae, run.k, **(architectures.get(run.architecture) or {}))
    except ValueError as e:
        raise ValueError(f"run {run.name}: {e} (params.yaml: train.architectures.{run.architecture})") from None
    return {"d_in": d_in, "seed": run.init_seed(), **fields, **{k: v for k, v in run.options if k not in RUN_OPTIONS}}


def build(run: Run, d_in: int, architectures: dict):
    from .saes import build as build_sae
    return build_sae(run.architecture, **sae_config(run, d_in, architectures))


# --- stage 02, one call per notebook cell ---

@dataclass
class EvalParams:
    heldout_tokens: int | None = 32768     # held-out tokens for the reconstruction metrics (null: all)
    downstream_contexts: int = 16          # held-out contexts for CE / KL with the reconstruction spliced in (0: none)
    downstream_batch_size: int = 8
    seed: int = 0                          # which held-out contexts both use (a random draw of their own)

    def __post_init__(self):
        if self.heldout_tokens is not None and self.heldout_tokens < 1 or self.downstream_contexts < 0 \
                or self.downstream_batch_size < 1:
            raise ValueError("params.yaml: train.eval needs heldout_tokens >= 1 (or null), downstream_contexts >= 0, "
                             f"downstream_batch_size >= 1; got {self}")


@dataclass
class TrainParams:
    base: dict
    grids: dict = field(default_factory=dict)
    architectures: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    drop_first: bool = True
    sink_ratio: float | None = 10.0   # drop attention-sink tokens (norm > this x the median) as position 0 is; null: keep


def check(model, harvest, train: dict) -> dict:
    """Validate the train section against the parsed model / harvest params: types of every key and
    sub-section, architectures, grids, that each run's corpus and layer were harvested, and every SAE
    config (built on a tiny d_in). Returns the parsed params and the runs; nothing is loaded."""
    from . import config
    from .saes import ARCHITECTURES
    from .train import TrainConfig
    tp = config.parse(TrainParams, train, "train")
    tp.eval = config.parse(EvalParams, tp.eval, "train.eval")
    bad = sorted(set(tp.architectures) - set(ARCHITECTURES))
    if bad:
        raise ValueError(f"params.yaml: train.architectures names unknown architecture(s) {bad}; known: "
                         f"{', '.join(ARCHITECTURES)}.")
    for name, extra in tp.architectures.items():
        if not isinstance(extra, dict):
            raise ValueError(f"params.yaml: train.architectures.{name} must be a mapping of config fields, got {extra!r}.")
    runs = expand(train)
    for run in runs:
        if run.architecture not in ARCHITECTURES:
            raise ValueError(f"params.yaml: run {run.name}: unknown architecture {run.architecture!r}; known: "
                             f"{', '.join(ARCHITECTURES)}.")
        if run.corpus not in harvest.corpora:
            raise ValueError(f"run {run.name}: corpus {run.corpus!r} is not harvested (harvest.corpora: {harvest.corpora}).")
        if run.layer not in harvest.layers:
            raise ValueError(f"run {run.name}: layer {run.layer} is not harvested (harvest.layers: {harvest.layers}).")
        try:
            build(run, 8, tp.architectures)  # config validation (k vs d_sae, unknown fields) on a tiny d_in
        except (ValueError, TypeError) as e:
            raise ValueError(f"params.yaml: run {run.name} (train.base / grids / architectures.{run.architecture}): {e}") from None
    optim = config.parse(TrainConfig, {"threads": model.threads, **tp.optim}, "train.optim")
    return dict(train=tp, runs=runs, optim=optim)


def setup(model: dict, harvest: dict, train: dict):
    """Validate everything and build every SAE before any training starts (fast failure)."""
    from .harvest import setup as harvest_setup
    mp, hp = harvest_setup(model, harvest)
    c = check(mp, hp, train)
    return dict(model=mp, harvest=hp, train=c["train"], runs=c["runs"], optim=c["optim"])


def plan(setup: dict) -> pd.DataFrame:
    """The runs, their training factors and the grids (analyses) they serve."""
    grids = grids_of({"base": setup["train"].base, "grids": setup["train"].grids})
    return pd.DataFrame([dict(r.factors(), grids=",".join(grids[r.name])) for r in setup["runs"]]).set_index("name")


def train_all(setup: dict, progress: bool = True) -> dict:
    """Train each (corpus, layer) group in one pass over its cached activations; save every SAE."""
    from .convergence import Monitor, finalize
    from .corpora import safe_name
    from .saes import save_sae
    from .train import train_sweep
    s, tp = setup, setup["train"]
    groups = {}
    for run in s["runs"]:
        groups.setdefault((run.corpus, run.layer), []).append(run)
    cfg = s["optim"]
    curves_dir, sae_dir = paths.data("train", "curves"), paths.data("saes")
    curves_dir.mkdir(parents=True, exist_ok=True)
    trained = {}
    for (corpus, layer), runs in groups.items():
        cache = ActivationCache.open(paths.data("activations", safe_name(corpus)),
                                     expect={"model": s["model"].name, "layers": [layer]})
        data = cache.activations(layer, "train", drop_first=tp.drop_first, sink_ratio=tp.sink_ratio)
        saes = {r.name: build(r, cache.meta["d_model"], tp.architectures) for r in runs}
        if progress:
            print(f"{corpus} layer {layer}: {len(saes)} SAEs on {len(data):,} tokens ({cfg.n_tokens:,} tokens each)")
        part = paths.root() / "data" / ".partial" / f"train-{safe_name(corpus)}-L{layer}"
        heldout = cache.activations(layer, "heldout", drop_first=tp.drop_first, max_tokens=tp.eval.heldout_tokens,
                                    seed=tp.eval.seed, sink_ratio=tp.sink_ratio)
        sample = data[torch.linspace(0, len(data) - 1, len(heldout)).long()]  # as many train tokens, spread out
        monitor = Monitor(cfg.n_steps, heldout, part / "monitor.pt", train_sample=sample,
                          epoch_steps=math.ceil(len(data) / cfg.batch_size))
        curves = train_sweep(saes, data, cfg, out_dir=part, progress=progress, callback=monitor)
        for sae in saes.values():
            finalize(sae, sample)  # BatchTopK / Matryoshka: inference threshold calibrated to L0 = k
        diagnostics = monitor.diagnostics(saes, sample)
        for r in runs:
            save_sae(saes[r.name], sae_dir / r.name, metadata=sae_metadata(s["model"].name, layer, cache.meta, tp, corpus))
            write_json(sae_dir / r.name / "training.json", diagnostics[r.name])
            write_bytes_atomic(curves_dir / f"{r.name}.csv", curves[r.name].to_csv(index=False, float_format="%.6g").encode())
            trained[r.name] = saes[r.name]
        del data
    names = {r.name for r in s["runs"]}  # outputs persist (dvc.yaml): drop SAEs of runs no longer in the sweep
    for stale in [d for d in sae_dir.iterdir() if d.name not in names] + [f for f in curves_dir.iterdir() if f.stem not in names]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return trained


def sae_metadata(model_name: str, layer: int, cache_meta: dict, tp, corpus: str) -> dict:
    """cfg.json metadata: what a sae-lens user needs to load the model and splice the SAE where it was trained."""
    return {**origin(model_name), "hook_name": hook_name(layer), "context_size": cache_meta["context_len"],
            "prepend_bos": False, "dataset_path": corpus, "excluded_positions": [0] if tp.drop_first else [],
            "sink_ratio": tp.sink_ratio,
            "splice": "positions in excluded_positions and attention sinks (residual norm > sink_ratio x the median) "
                      "were never trained on: keep them clean, e.g. treesae.metrics.splice_hook(sae, "
                      "exclude_first=True, sink_ratio=sink_ratio); TreeSAE architectures (treesae_*) load after "
                      "`import treesae.saes`"}


def eval_key(run: Run, sae, cache_meta: dict, setup: dict, downstream: bool) -> str:
    """What a run's evaluation row depends on: the SAE's weights, the harvest (fingerprint), the eval
    settings, and the code of ``metrics``; keys ``data/.partial/eval`` so an interrupted evaluation resumes."""
    import dataclasses

    from . import metrics
    from .saes.base import weights_digest
    h = hashlib.sha256(Path(metrics.__file__).read_bytes() + weights_digest(sae))
    h.update(json.dumps(dict(run=run.name, harvest=cache_meta["fingerprint"], eval=dataclasses.asdict(setup["train"].eval),
                             drop_first=setup["train"].drop_first, downstream=bool(downstream),
                             model=setup["model"].name), sort_keys=True).encode())
    return h.hexdigest()


def evaluate(setup: dict, saes: dict, lm=None, progress: bool = True) -> pd.DataFrame:
    """Held-out metrics of every SAE: reconstruction (nMSE, FVU, L0, dead, per level) and, with the
    model, downstream CE / KL with the reconstruction spliced in. Writes data/train/metrics.csv.
    Each row is kept in data/.partial/eval as soon as it is computed (``eval_key``): a rerun after an
    interruption evaluates only the missing SAEs and writes the same table."""
    from .corpora import safe_name
    from .io import JsonStore
    from .metrics import downstream_metrics, downstream_reference, reconstruction_metrics
    s, ev = setup, setup["train"].eval
    rows, acts, ref = [], {}, None
    store = JsonStore(paths.data(".partial", "eval"))
    downstream = lm is not None and ev.downstream_contexts
    for run in sorted(s["runs"], key=lambda r: (r.corpus, r.layer)):  # one group's activations in memory at a time
        key = (run.corpus, run.layer)
        cache = ActivationCache.open(paths.data("activations", safe_name(run.corpus)))
        row_key = eval_key(run, saes[run.name], cache.meta, s, downstream)
        row = store.get(row_key)
        if row is None:
            if key not in acts:
                acts = {key: cache.activations(run.layer, "heldout", drop_first=s["train"].drop_first,
                                               max_tokens=ev.heldout_tokens, seed=ev.seed, sink_ratio=s["train"].sink_ratio)}
                if downstream:  # clean and zero-ablated runs: once per group, not per SAE
                    ctx = cache.sample_contexts("heldout", ev.downstream_contexts, ev.seed)
                    toks = torch.from_numpy(np.asarray(cache.tokens[ctx])).long()
                    ref = downstream_reference(lm, toks, hook_name(run.layer), ev.downstream_batch_size,
                                               s["train"].drop_first, s["train"].sink_ratio)
            row = dict(name=run.name, **reconstruction_metrics(saes[run.name], acts[key]))
            if downstream:
                row.update(downstream_metrics(lm, saes[run.name], toks, hook_name(run.layer),
                                              batch_size=ev.downstream_batch_size, exclude_first=s["train"].drop_first,
                                              reference=ref))
            store[row_key] = row
        rows.append(row)
        if progress:
            print(f"{run.name}: nmse {row['nmse']:.4f} l0 {row['l0']:.1f} dead {row['dead_fraction']:.3f}"
                  + (f" ce+ {row['ce_increase']:.3f}" if "ce_increase" in row else ""))
    table = add_verdicts(plan(s).join(pd.DataFrame(rows).set_index("name")).join(convergence_table(s)))
    out = paths.data("train")
    write_bytes_atomic(out / "metrics.csv", table.to_csv(float_format="%.6g").encode())
    keep = ("nmse", "fvu", "l0", "dead_fraction", "ce_increase", "ce_score", "kl_score", "dec_stability", "converged")
    write_json(out / "metrics.json", {n: {k: (bool(v) if k == "converged" else round(float(v), 6)) for k, v in r.items()
                                          if k in keep and v == v} for n, r in table.iterrows()})
    return table


def convergence_table(setup: dict) -> pd.DataFrame:
    """Per run: the training diagnostics saved beside each SAE (``convergence``; none for an SAE trained
    before they existed)."""
    rows = []
    for run in setup["runs"]:
        f = paths.data("saes", run.name, "training.json")
        rows.append(dict(name=run.name, **(json.loads(f.read_text()) if f.exists() else {})))
    return pd.DataFrame(rows).set_index("name")


def add_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """``l0_rel_error`` where k fixes L0 (from the held-out L0) and the ``converged`` verdict per run."""
    from .convergence import converged
    from .saes import names
    fixed = table.architecture.isin(names(fixed_l0=True))
    table["l0_rel_error"] = ((table.l0 - table.k).abs() / table.k).where(fixed)
    table["converged"] = [converged(r.to_dict()) for _, r in table.iterrows()]
    return table


def clear_partial(setup: dict):
    """Remove finished training checkpoints (kept until metrics are written, so a crash resumes)."""
    for d in (paths.root() / "data" / ".partial").glob("train-*"):
        shutil.rmtree(d, ignore_errors=True)


def load(setup: dict):
    from .model import load_model
    return load_model(setup["model"].name, setup["model"].device)


def summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """The columns worth reading first, rounded."""
    cols = [c for c in ("architecture", "dataset", "layer", "d_sae", "k", "seed", "nmse", "explained_variance", "l0",
                        "dead_fraction", "ce_increase", "ce_score", "kl_score", "fvu_gain_last_quarter", "dec_stability",
                        "init_frac_above", "fvu_gap", "fvu_gap_growth", "l0_rel_error", "converged") if c in metrics]
    return metrics[cols].round(4)
