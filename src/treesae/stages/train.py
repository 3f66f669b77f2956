"""Stage 02: train every run of the sweep (``treesae.runs``) on the cached activations, save and evaluate.

Every SAE of a (corpus, layer) group is trained in one pass over the same shuffled batches
(``treesae.train.train_sweep``), finalized (inference thresholds calibrated), saved in sae-lens' format
with its convergence diagnostics, then evaluated on held-out activations (and downstream, spliced into
the model). One call per notebook cell.
"""
import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import config, imports, metrics, paths
from .. import distributed as dist
from ..cache import ActivationCache, hook_name
from ..convergence import Monitor, converged, finalize
from ..corpora import safe_name
from ..io import JsonStore, sha256_file, write_bytes_atomic, write_json
from ..model import load_model, origin, pin_threads, runtime
from ..runs import Run, expand, grids_of
from ..saes import ARCHITECTURES, build_run, load_sae, names, save_sae
from ..saes.base import weights_digest
from ..stream import ActivationStream
from ..train import TrainConfig, train_sweep


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
    stream_buffer_contexts: int | None = 8192  # when the train split streams (harvest.disk_budget_gb): contexts a buffer
    processes: int = 1                # ranks started by the stage itself, each with model.threads / processes threads
    data_parallel: bool = False       # with several ranks: every rank trains every SAE on its share of each batch

    def __post_init__(self):
        if int(self.processes) < 1:
            raise ValueError(f"params.yaml: train.processes must be >= 1, got {self.processes}")


def check(model, harvest, train: dict) -> dict:
    """Validate the train section against the parsed model / harvest params: types of every key and
    sub-section, architectures, grids, that each run's corpus and layer were harvested, and every SAE
    config (built on a tiny d_in). Returns the parsed params and the runs; nothing is loaded."""
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
            with torch.device("meta"):  # config validation (k vs d_sae, unknown fields) on a tiny d_in, no memory
                build_run(run, 8, tp.architectures)
        except (ValueError, TypeError) as e:
            raise ValueError(f"params.yaml: run {run.name} (train.base / grids / architectures.{run.architecture}): {e}") from None
    optim = config.parse(TrainConfig, {"threads": model.threads, **tp.optim}, "train.optim")
    return dict(train=tp, runs=runs, optim=optim)


def setup(model: dict, harvest: dict, train: dict):
    """Validate everything and build every SAE before any training starts (fast failure)."""
    mp, hp = runtime(model), config.parse(config.HarvestParams, harvest, "harvest")
    c = check(mp, hp, train)
    return dict(model=mp, harvest=hp, train=c["train"], runs=c["runs"], optim=c["optim"])


def plan(setup: dict) -> pd.DataFrame:
    """The runs, their training factors and the grids (analyses) they serve."""
    grids = grids_of({"base": setup["train"].base, "grids": setup["train"].grids})
    return pd.DataFrame([dict(r.factors(), grids=",".join(grids[r.name])) for r in setup["runs"]]).set_index("name")


def train_all(setup: dict, progress: bool = True) -> dict:
    """Train each (corpus, layer) group in one pass over its cached activations; save every SAE. A run whose
    saved SAE this code trained with these settings on this harvest (``train_key``) is loaded, not trained again:
    a rerun after an evaluation setting changed, a run was added or metrics.csv was deleted trains only what is
    missing. Under torchrun, each rank trains its share of the runs (``treesae.distributed``) and every rank
    returns them all; with ``train.processes`` > 1 outside torchrun, this process starts that many ranks."""
    s = setup
    dev = dist.device(s["model"].device)  # model.device: the SAEs train where the model runs
    code = imports.digest(__name__)
    metas = {c: ActivationCache.open(paths.data("activations", safe_name(c))).meta for c in {r.corpus for r in s["runs"]}}
    keys = {r.name: train_key(s, r, metas[r.corpus], code) for r in s["runs"]}
    todo = [r for r in s["runs"] if not _trained(r, keys[r.name])]
    if progress and len(todo) < len(s["runs"]):
        print(f"{len(s['runs']) - len(todo)} of {len(s['runs'])} SAEs were trained by this code with these settings "
              f"on this harvest (data/.partial/trained): loaded, not trained again")
    if todo:
        _train({**s, "runs": todo}, progress)
    keep = {r.name for r in s["runs"]}  # outputs persist (dvc.yaml): drop SAEs of runs no longer in the sweep
    sae_dir, curves_dir = paths.data("saes"), paths.data("train", "curves")
    if dist.is_main():
        for r in todo:
            _record(r, keys[r.name])
        stale = [d for d in sae_dir.iterdir() if d.name not in keep] + [f for f in curves_dir.iterdir() if f.stem not in keep]
        for f in stale:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    dist.barrier()
    return {r.name: load_sae(sae_dir / r.name).to(dev) for r in s["runs"]}


def train_key(setup: dict, run: Run, cache_meta: dict, code: str | None = None) -> str:
    """What a run's saved SAE, curve and diagnostics depend on: the run, its architecture's extra config, the
    optimiser (``TrainConfig.determining``), the token filters, the harvest it trains on (``cache_meta``: its
    fingerprint) and the code stage 02 runs (``treesae.imports.digest``, the files dvc.yaml lists for it)."""
    tp = setup["train"]
    ident = dict(run=run.name, init=run.init_seed(), extra=tp.architectures.get(run.architecture),
                 optim=setup["optim"].determining(), drop_first=tp.drop_first, sink_ratio=tp.sink_ratio,
                 stream=None if cache_meta.get("train_cached", True) else tp.stream_buffer_contexts,
                 data_parallel=tp.data_parallel, harvest=cache_meta["fingerprint"], model=setup["model"].name,
                 code=code or imports.digest(__name__))
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _outputs(run: Run) -> list[Path]:
    return sorted(paths.data("saes", run.name).iterdir()) + [paths.data("train", "curves", f"{run.name}.csv")]


def _record_file(run: Run) -> Path:
    return paths.data(".partial", "trained", f"{run.name}.json")


def _record(run: Run, key: str) -> None:
    """Note the key and the sha256 of every file the run's training wrote."""
    files = {f.relative_to(paths.data()).as_posix(): sha256_file(f) for f in _outputs(run)}
    write_json(_record_file(run), dict(key=key, files=files))


def _trained(run: Run, key: str) -> bool:
    """True when the run's record has this key and every file it lists is there with its recorded bytes."""
    f = _record_file(run)
    rec = json.loads(f.read_text()) if f.exists() else {}
    if rec.get("key") != key:
        return False
    have = {p.relative_to(paths.data()).as_posix() for p in _outputs(run)} if paths.data("saes", run.name).is_dir() else set()
    return have == set(rec["files"]) and all(sha256_file(paths.data(p)) == h for p, h in rec["files"].items())


def _train(setup: dict, progress: bool) -> None:
    """Train and save ``setup["runs"]`` (see ``train_all``)."""
    s, tp = setup, setup["train"]
    rank, world = dist.rank_world()
    dev = dist.device(s["model"].device)
    if tp.processes > 1 and world == 1:
        threads = max(1, s["optim"].threads // tp.processes)
        share = {**s, "train": dataclasses.replace(tp, processes=1), "optim": dataclasses.replace(s["optim"], threads=threads)}
        dist.spawn(_train_rank, tp.processes, share, progress)
        return
    dp = tp.data_parallel and world > 1  # else the runs are split over the ranks
    groups = {}
    for run in s["runs"] if dp else dist.share(s["runs"]):
        groups.setdefault((run.corpus, run.layer), []).append(run)
    cfg = s["optim"]
    curves_dir, sae_dir = paths.data("train", "curves"), paths.data("saes")
    curves_dir.mkdir(parents=True, exist_ok=True)
    lm = None
    for (corpus, layer), runs in groups.items():
        cache = ActivationCache.open(paths.data("activations", safe_name(corpus)),
                                     expect={"model": s["model"].name, "layers": [layer]})
        if cache.meta.get("train_cached", True):
            data = full = cache.activations(layer, "train", drop_first=tp.drop_first, sink_ratio=tp.sink_ratio)
        else:  # the harvest kept the held-out contexts only (harvest.disk_budget_gb): the train split streams
            lm = lm or load_model(s["model"].name, dev)
            hp = s["harvest"]
            data = ActivationStream(lm, paths.data("corpora", safe_name(corpus)), layer, seed=cfg.seed,
                                    buffer_contexts=tp.stream_buffer_contexts, drop_first=tp.drop_first,
                                    sink_ratio=tp.sink_ratio, dtype=cache.meta["dtype"], batch_size=hp.batch_size,
                                    shard_contexts=hp.shard_contexts, device=dev)
            full = data.whole  # one buffer: every train token, as the cache would give them
        n_train = len(full) if full is not None else data.epoch_tokens
        saes = {r.name: build_run(r, cache.meta["d_model"], tp.architectures).to(dev) for r in runs}
        if progress:
            print(f"{corpus} layer {layer}: {len(saes)} SAEs on {n_train:,} tokens ({cfg.n_tokens:,} tokens each)"
                  + ("" if cache.meta.get("train_cached", True) else ", streamed from the model"))
        part = paths.root() / "data" / ".partial" / (f"train-{safe_name(corpus)}-L{layer}"
                                                     + (f"-rank{rank}of{world}" if world > 1 and not dp else ""))
        heldout = cache.activations(layer, "heldout", drop_first=tp.drop_first, max_tokens=tp.eval.heldout_tokens,
                                    seed=tp.eval.seed, sink_ratio=tp.sink_ratio)
        # as many train tokens as held-out ones, spread over the split (a stream in buffers: the first of its order)
        sample = (full[torch.linspace(0, n_train - 1, len(heldout)).long()] if full is not None
                  else data.sample(len(heldout))).to(dev)
        heldout = heldout.to(dev)
        writer = not dp or rank == 0  # data parallel: every rank holds the same SAEs, rank 0 writes them
        monitor = Monitor(cfg.n_steps, heldout, part / "monitor.pt" if writer else None, train_sample=sample,
                          epoch_steps=math.ceil(n_train / cfg.batch_size))
        curves = train_sweep(saes, data, cfg, out_dir=part, progress=progress, callback=monitor, data_parallel=dp)
        for sae in saes.values():
            finalize(sae, sample)  # BatchTopK / Matryoshka: inference threshold calibrated to L0 = k
        diagnostics = monitor.diagnostics(saes, sample)
        for r in runs if writer else []:
            save_sae(saes[r.name], sae_dir / r.name, metadata=sae_metadata(s["model"].name, layer, cache.meta, tp, corpus))
            write_json(sae_dir / r.name / "training.json", diagnostics[r.name])
            write_bytes_atomic(curves_dir / f"{r.name}.csv", curves[r.name].to_csv(index=False, float_format="%.6g").encode())
        if not torch.is_tensor(data):
            data.close()
        del data
    dist.barrier()  # every rank's SAEs are saved


def _train_rank(setup: dict, progress: bool) -> None:
    pin_threads(setup["optim"].threads)
    _train(setup, progress=progress and dist.is_main())


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

    h = hashlib.sha256(Path(metrics.__file__).read_bytes() + weights_digest(sae))
    h.update(json.dumps(dict(run=run.name, harvest=cache_meta["fingerprint"], eval=dataclasses.asdict(setup["train"].eval),
                             drop_first=setup["train"].drop_first, downstream=bool(downstream),
                             model=setup["model"].name), sort_keys=True).encode())
    return h.hexdigest()


def evaluate(setup: dict, saes: dict, lm=None, progress: bool = True) -> pd.DataFrame:
    """Held-out metrics of every SAE: reconstruction (nMSE, FVU, L0, dead, per level) and, with the
    model, downstream CE / KL with the reconstruction spliced in. Writes data/train/metrics.csv, metrics.json and
    config.json (``resolved_config``).
    Each row is kept in data/.partial/eval as soon as it is computed (``eval_key``): a rerun after an
    interruption evaluates only the missing SAEs and writes the same table. Under torchrun, rank 0 evaluates;
    the other ranks wait for it and read its table."""
    if not dist.is_main():
        dist.barrier()
        return pd.read_csv(paths.data("train", "metrics.csv"), index_col="name")
    s, ev = setup, setup["train"].eval
    rows, acts, ref = [], {}, None
    store = JsonStore(paths.data(".partial", "eval"))
    downstream = lm is not None and ev.downstream_contexts
    t0, todo = time.perf_counter(), sorted(s["runs"], key=lambda r: (r.corpus, r.layer))  # one group's activations at a time
    for i, run in enumerate(todo, 1):
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
                    ref = metrics.downstream_reference(lm, toks, hook_name(run.layer), ev.downstream_batch_size,
                                               s["train"].drop_first, s["train"].sink_ratio)
            row = dict(name=run.name, **metrics.reconstruction_metrics(saes[run.name], acts[key]))
            if downstream:
                row.update(metrics.downstream_metrics(lm, saes[run.name], toks, hook_name(run.layer),
                                                      batch_size=ev.downstream_batch_size, exclude_first=s["train"].drop_first,
                                                      reference=ref))
            store[row_key] = row
        rows.append(row)
        if progress:  # count, and the time left at this pace (rows kept from an earlier run count as instant)
            eta = (time.perf_counter() - t0) / i * (len(todo) - i)
            print(f"[{i}/{len(todo)}, ~{eta / 60:.1f} min left] {run.name}: nmse {row['nmse']:.4f} l0 {row['l0']:.1f} "
                  f"dead {row['dead_fraction']:.3f}" + (f" ce+ {row['ce_increase']:.3f}" if "ce_increase" in row else ""))
    table = add_verdicts(plan(s).join(pd.DataFrame(rows).set_index("name")).join(convergence_table(s)))
    out = paths.data("train")
    write_bytes_atomic(out / "metrics.csv", table.to_csv(float_format="%.6g").encode())
    keep = ("nmse", "fvu", "l0", "dead_fraction", "ce_increase", "ce_score", "kl_score", "dec_stability", "converged")
    write_json(out / "metrics.json", {n: {k: (bool(v) if k == "converged" else round(float(v), 6)) for k, v in r.items()
                                          if k in keep and v == v} for n, r in table.iterrows()})
    write_json(out / "config.json", resolved_config(s))
    dist.barrier()
    return table


def resolved_config(setup: dict) -> dict:
    """data/train/config.json: the training config every SAE was trained with (``TrainConfig.determining``: its
    defaults and derived fields filled in), held-out evaluation and token filters: what the numbers stage quotes."""
    tp = setup["train"]
    return dict(optim=setup["optim"].determining(), eval=dataclasses.asdict(tp.eval), drop_first=tp.drop_first,
                sink_ratio=tp.sink_ratio)


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
    fixed = table.architecture.isin(names(fixed_l0=True))
    table["l0_rel_error"] = ((table.l0 - table.k).abs() / table.k).where(fixed)
    table["converged"] = [converged(r.to_dict()) for _, r in table.iterrows()]
    return table


def clear_partial(setup: dict):
    """Remove finished training checkpoints (kept until metrics are written, so a crash resumes)."""
    if dist.is_main():
        for d in (paths.root() / "data" / ".partial").glob("train-*"):
            shutil.rmtree(d, ignore_errors=True)


def load(setup: dict):
    """The language model for the downstream metrics (rank 0 only under torchrun: it alone evaluates)."""
    return load_model(setup["model"].name, setup["model"].device) if dist.is_main() else None


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """The columns worth reading first, rounded."""
    cols = [c for c in ("architecture", "corpus", "layer", "d_sae", "k", "seed", "nmse", "explained_variance", "l0",
                        "dead_fraction", "ce_increase", "ce_score", "kl_score", "fvu_gain_last_quarter", "dec_stability",
                        "init_frac_above", "fvu_gap", "fvu_gap_growth", "l0_rel_error", "converged") if c in table]
    return table[cols].round(4)
