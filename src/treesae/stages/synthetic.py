"""Stage 08: ground truth for the hierarchy claims. Every architecture, and sae-lens' own BatchTopK and
Matryoshka as references, trained on one synthetic world whose features and hierarchy are known
(``treesae.synthetic``), exported, loaded back through ``sae_lens.SAE.load_from_disk`` and scored against
the true features; ``controls`` also on the flat world (the same features firing independently, as often),
where every hierarchy score must come out at chance.

Writes to data/analysis/synthetic/:

* ``runs/<source>-<architecture>-s<seed>.json``: one SAE's scores, written when it is done, so an
  interrupted stage resumes at the next SAE (a file from other parameters or other training and scoring
  code, ``CODE``, is ignored and replaced).
* ``world.csv``: the world per tree level: features, mean firing probability, mean true L0 share.
* ``scores.csv``: one row per SAE (``synthetic.evaluate``'s columns; training time only in ``runs/``).
* ``metrics.json``: per architecture, the mean over seeds and its standard deviation of every score
  (``<architecture>.<score>`` and ``.sd``; sae-lens' references under ``saelens.<architecture>.``, the
  flat control world's SAEs under ``flat.<architecture>.``); differences of means with +- 2 standard errors
  (``.lo``, ``.hi``; ``stats.mean_difference``; scores f1, mcc, explained_variance, absorption, hierarchy_recovery,
  probe): ``<architecture>.vs_topk.<score>``, for the TreeSAE
  variants also ``.vs_batchtopk.`` and ``.vs_matryoshka.`` (the goals: BatchTopK's F1, Matryoshka's
  absorption), and ``matryoshka_vs_saelens.<score>`` (ours minus sae-lens' Matryoshka: does ours train as
  theirs does?). A tree SAE also reports its own edges (``tree_edges``, ``tree_precision`` and its chance).
  ``probe``: Cao et al.'s probe test with a tree's gate lifted, stage 05's headline on the language model, here
  where the truth is known (``probe_gated``, ``probe_given``: with the gate; ``synthetic.evaluate``).
  ``batchtopk_vs_saelens.<score>``: the same for BatchTopK. The recipe factor (``recipes``: per name, SAE config
  fields, e.g. the decoder's norm handling and init, and the architectures trained with them): source
  ``<recipe>``, keys ``recipe.<recipe>.<architecture>.<score>`` and ``recipe.<recipe>.<architecture>.vs_default.<score>``
  (the recipe minus the default recipe, the architectures' rows above). A recipe of the tree alone is a tree design
  (``TreeConfig``'s switches, e.g. ``parent_loss_coef``), compared with the default tree the same way.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import config
from .. import synthetic as S
from ..io import write_json
from ..model import runtime
from ..runs import Run
from ..saes import ARCHITECTURES, TreeConfig, build_run, names, traits
from ..train import pinned_torch
from ..stats import mean_difference
from . import common

NAME = "synthetic"
CODE = ("synthetic.py", "runs.py", "seeds.py", "train.py", "tensors.py", "convergence.py", "metrics.py", "saes",
        "analysis/hierarchy.py")  # under src/treesae
SCORES = ("f1", "mcc", "uniqueness", "explained_variance", "l0", "dead_fraction", "shrinkage", "absorption",
          "recall_with_child", "recall_no_child", "hierarchy_recovery", "implication", "implication_baseline",
          "max_cos_level0", "max_cos_level1", "max_cos_level2", "tree_edges", "tree_precision", "tree_precision_chance",
          "probe", "probe_gated", "probe_given")


@dataclass(frozen=True)
class SyntheticParams:
    world: dict = field(default_factory=dict)   # treesae.synthetic.WorldConfig fields
    architectures: list = field(default_factory=names)
    references: list = field(default_factory=lambda: list(S.REFERENCES))  # sae-lens' trainers, same data and budget
    controls: list = field(default_factory=lambda: ["topk"] + names(hierarchical=True))  # also on the flat world
    seeds: list = field(default_factory=lambda: [0, 1])  # SAE init and batch order (the world has its own seed)
    d_sae: int = 256
    k: int = 12
    n_tokens: int = 2_000_000                   # per SAE
    train_tokens: int = 65_536                  # the fixed training set (n_tokens / train_tokens epochs)
    eval_tokens: int = 16_384
    batch_size: int = 1024
    lr: float = 3e-3
    lr_end: float = 3e-4
    extra: dict = field(default_factory=lambda: dict(S.EXTRA))  # per-architecture SAE config fields
    recipes: dict = field(default_factory=dict)  # name -> {architectures: [...], config: {SAE config fields on top of
    #                                                   extra}}; a profile drops one by setting it to null
    workers: int = 2                            # SAEs trained at once, one single-thread process each

    def __post_init__(self):
        S.WorldConfig(**self.world)  # its own errors name the field
        bad = [a for a in self.architectures if a not in ARCHITECTURES]
        if bad:
            raise ValueError(f"synthetic.architectures: unknown {bad}; known: {sorted(ARCHITECTURES)}")
        bad = [a for a in self.controls if a not in self.architectures]
        if bad:
            raise ValueError(f"synthetic.controls: {bad} not in synthetic.architectures")
        bad = [r for r in self.references if r not in S.REFERENCES]
        if bad:
            raise ValueError(f"synthetic.references: unknown {bad}; sae-lens references: {list(S.REFERENCES)}")
        if len(set(self.seeds)) < 2:
            raise ValueError(f"synthetic.seeds: need at least 2 distinct seeds for a standard deviation, got {list(self.seeds)}")
        for f in ("d_sae", "k", "n_tokens", "train_tokens", "eval_tokens", "batch_size", "workers"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"synthetic.{f} must be >= 1, got {getattr(self, f)}")
        if self.n_tokens < self.batch_size or self.train_tokens < self.batch_size:
            raise ValueError("synthetic: n_tokens and train_tokens must each hold at least one batch (batch_size)")
        if not 0 <= self.lr_end <= self.lr or not self.lr > 0:
            raise ValueError(f"synthetic: need lr > 0 and 0 <= lr_end <= lr, got {self.lr}, {self.lr_end}")
        if self.k >= self.d_sae:
            raise ValueError(f"synthetic.k ({self.k}) must be below d_sae ({self.d_sae})")
        object.__setattr__(self, "recipes", {r: v for r, v in self.recipes.items() if v is not None})  # null: dropped
        for r, spec in self.recipes.items():
            where = f"synthetic.recipes.{r}"
            if r in ("ours", "saelens", "flat") or not str(r).isidentifier():
                raise ValueError(f"{where}: the name is reserved or not an identifier; choose e.g. 'free'")
            if not isinstance(spec, dict) or set(spec) != {"architectures", "config"}:
                raise ValueError(f"{where} must be {{architectures: [...], config: {{field: value}}}}, got {spec!r}")
            bad = [a for a in spec["architectures"] if a not in self.architectures]
            if bad:
                raise ValueError(f"{where}.architectures: {bad} not in synthetic.architectures")
            for a in spec["architectures"]:
                try:
                    build_run(Run(architecture=a, corpus="synthetic", layer=0, d_sae=self.d_sae, k=self.k, seed=0),
                              self.world.get("d_in", S.WorldConfig.d_in), self.recipe_extra(r))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{where}.config for {a}: {e}") from None

    def recipe_extra(self, recipe: str | None) -> dict:
        """``extra`` with the recipe's config fields added to every architecture's (None: ``extra`` itself)."""
        if recipe is None:
            return self.extra
        spec = self.recipes[recipe]
        return {a: {**(self.extra.get(a) or {}), **(spec["config"] or {})} for a in set(self.extra) | set(spec["architectures"])}

    def fingerprint(self) -> str:
        """These parameters (but ``workers``: results do not depend on it) and the code that trains and scores the SAEs: what a resumed SAE must share."""
        root = Path(S.__file__).parent
        h = hashlib.sha256(json.dumps({**asdict(self), "workers": None}, sort_keys=True).encode())
        for f in sorted(f for name in CODE for f in ((root / name).rglob("*.py") if (root / name).is_dir() else [root / name])):
            h.update(f.read_bytes())
        return h.hexdigest()


# --- stage 08, one call per notebook cell ---

def setup(model: dict, synthetic: dict) -> dict:
    """Validate the section, pin threads, build the world and its flat control (the same features firing
    independently, as often), each with its training set and held-out set."""
    runtime(model)
    sp = config.parse(SyntheticParams, synthetic, "synthetic")
    out = common.out_dir(NAME)
    (out / "runs").mkdir(exist_ok=True)
    worlds = {}
    for name, hierarchical in (("ours", True), ("flat", False)):
        w = S.make_world(S.WorldConfig(**{**sp.world, "hierarchical": hierarchical}))
        worlds[name] = dict(world=w, data=S.train_data(w, sp.train_tokens), heldout=S.sample(w, sp.eval_tokens, 0, split="eval"))
    worlds["saelens"] = worlds["ours"]
    return dict(synthetic=sp, worlds=worlds, world=worlds["ours"]["world"], heldout=worlds["ours"]["heldout"], out=out,
                sections=(model, synthetic))


def world(setup: dict) -> pd.DataFrame:
    """Per tree level (-1: free features): features, mean firing probability, share of the true L0."""
    w, feats = setup["world"], setup["heldout"][1]
    lv = S.levels(w.structure, feats.shape[1])
    active = (feats > 0).float().mean(0).numpy()
    t = pd.DataFrame(dict(level=lv, p=active)).groupby("level").agg(features=("p", "size"), mean_p=("p", "mean"),
                                                                    l0=("p", "sum")).reset_index()
    t["l0_share"] = t.l0 / t.l0.sum()
    common.write_table(t, setup["out"] / "world.csv")
    return t


def jobs(setup: dict) -> list[tuple[str, str, int]]:
    sp = setup["synthetic"]
    return [("ours", a, s) for s in sp.seeds for a in sp.architectures] + \
           [("saelens", r, s) for s in sp.seeds for r in sp.references] + \
           [("flat", a, s) for s in sp.seeds for a in sp.controls] + \
           [(r, a, s) for r, spec in sp.recipes.items() for s in sp.seeds for a in spec["architectures"]]


def _job_file(setup: dict, job: tuple[str, str, int]) -> Path:
    source, arch, seed = job
    return setup["out"] / "runs" / f"{source}-{arch}-s{seed}.json"


def _done(setup: dict, job, fingerprint: str) -> dict:
    """The job's scores when its runs/ file is from these parameters and code, else {}."""
    f = _job_file(setup, job)
    done = json.loads(f.read_text()) if f.exists() else {}
    return done if done.get("fingerprint") == fingerprint else {}


def run_job(setup: dict, job: tuple[str, str, int]) -> dict:
    """Train and score one SAE on one thread (so its numbers do not depend on ``workers``); write its runs/ file."""
    sp, (source, arch, seed) = setup["synthetic"], job
    w = setup["worlds"].get(source, setup["worlds"]["ours"])  # a recipe trains on the planted world
    kw = dict(data=w["data"], batch_size=sp.batch_size, lr=sp.lr, lr_end=sp.lr_end)
    with pinned_torch(1, torch.are_deterministic_algorithms_enabled()):
        t = time.perf_counter()
        sae = (S.train_reference(arch, w["world"], sp.d_sae, sp.k, sp.n_tokens, seed, **kw) if source == "saelens"
               else S.train_ours(arch, w["world"], sp.d_sae, sp.k, sp.n_tokens, seed,
                                 extra=sp.recipe_extra(source if source in sp.recipes else None), **kw))
        seconds = time.perf_counter() - t
        score = S.evaluate(sae, w["world"], sp.eval_tokens, 0, eval_data=w["heldout"])
    done = dict(fingerprint=sp.fingerprint(), source=source, architecture=arch, seed=seed,
                d_sae=int(sae.W_dec.shape[0]), seconds=seconds, **score)
    write_json(_job_file(setup, job), done)
    return done


_WORKER: dict = {}  # a worker process's own setup, built once from the raw sections


def _worker_init(model: dict, synthetic: dict) -> None:
    _WORKER.update(setup(model, synthetic))


def _worker_job(job) -> dict:
    return run_job(_WORKER, job)


def train(setup: dict, progress: bool = True) -> pd.DataFrame:
    """Train and score every SAE not yet done under these parameters, ``workers`` at a time; one row per SAE
    (``source``: ours, saelens, or flat: ours on the flat control world)."""
    sp, fingerprint = setup["synthetic"], setup["synthetic"].fingerprint()
    done = {j: _done(setup, j, fingerprint) for j in jobs(setup)}
    todo = [j for j, d in done.items() if not d]
    bar = tqdm(total=len(done), desc="synthetic SAEs", unit="sae", disable=not progress)  # done, rate, ETA

    def report(job, scores, resumed=False):
        done[job] = scores
        bar.update()
        if progress:
            bar.write(f"{scores['source']:7s} {scores['architecture']:10s} s{scores['seed']}: f1 {scores['f1']:.3f} "
                      f"mcc {scores['mcc']:.3f} ev {scores['explained_variance']:.3f} l0 {scores['l0']:.1f} "
                      f"absorption {scores['absorption']:.3f} ({scores['seconds']:.0f} s{', resumed' if resumed else ''})")
    for j, d in list(done.items()):
        if d:
            report(j, d, resumed=True)
    if sp.workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(sp.workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=setup["sections"]) as pool:
            futures = {pool.submit(_worker_job, j): j for j in todo}
            for f in as_completed(futures):
                report(futures[f], f.result())
    else:
        for j in todo:
            report(j, run_job(setup, j))
    bar.close()
    rows = [{k: v for k, v in d.items() if k not in ("fingerprint", "seconds")} for d in done.values()]  # deterministic
    t = pd.DataFrame(rows)
    head = ["source", "architecture", "seed", "d_sae"]
    t = t[head + sorted(c for c in t if c not in head)]  # the same bytes whether scored now or resumed from runs/
    common.write_table(t, setup["out"] / "scores.csv")
    return t


RECIPE_FIELDS = ("normalize_decoder", "rescale_acts_by_decoder_norm", "decoder_init_norm", "geometric_median_init")


def default_recipe(sp: SyntheticParams) -> dict:
    """The recipe fields TopK trains with by default here (the config's defaults with ``extra``)."""
    cfg = build_run(Run(architecture="topk", corpus="synthetic", layer=0, d_sae=sp.d_sae, k=sp.k, seed=0),
                    sp.world.get("d_in", S.WorldConfig.d_in), sp.extra).cfg
    return {f: getattr(cfg, f) for f in RECIPE_FIELDS}


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per source and architecture (the paper's table)."""
    cols = [c for c in SCORES if c in scores]
    g = scores.groupby(["source", "architecture"], sort=False)[cols]
    return g.mean().join(g.std(ddof=1).add_suffix("_sd"))


def summarize(setup: dict, scores: pd.DataFrame) -> dict:
    """metrics.json (keys in the module docstring)."""
    sp, out = setup["synthetic"], {}
    s = summary(scores)
    for (source, arch), r in s.iterrows():
        key = arch if source == "ours" else f"recipe.{source}.{arch}" if source in sp.recipes else f"{source}.{arch}"
        for c in SCORES:
            if c in r and np.isfinite(r[c]):
                out[f"{key}.{c}"] = float(r[c])
                if np.isfinite(r.get(f"{c}_sd", np.nan)):
                    out[f"{key}.{c}.sd"] = float(r[f"{c}_sd"])
    def diff(key, a, b):
        for c in ("f1", "mcc", "explained_variance", "absorption", "hierarchy_recovery", "probe"):
            d, lo, hi = mean_difference(a[c], b[c])
            if np.isfinite(d):
                out.update({f"{key}.{c}": d, f"{key}.{c}.lo": lo, f"{key}.{c}.hi": hi})
    mine = scores[scores.source == "ours"]
    for arch in sp.architectures:  # every architecture against TopK; the TreeSAE variants also against the goals
        for ref in ("topk",) + (("batchtopk", "matryoshka") if traits(arch).hierarchical else ()):
            if arch != ref and ref in sp.architectures:
                diff(f"{arch}.vs_{ref}", mine[mine.architecture == arch], mine[mine.architecture == ref])
    for arch in sp.references:  # does ours train as sae-lens' own trainer does, on the same batches?
        ours, ref = (scores[(scores.source == src) & (scores.architecture == arch)] for src in ("ours", "saelens"))
        diff(f"{arch}_vs_saelens", ours, ref)
    for r, spec in sp.recipes.items():
        for arch in spec["architectures"]:
            diff(f"recipe.{r}.{arch}.vs_default", scores[(scores.source == r) & (scores.architecture == arch)],
                 mine[mine.architecture == arch])
    out.update({f"recipe_default.{k}": v for k, v in default_recipe(sp).items()})
    out["recipes"] = {r: dict(spec["config"] or {}) for r, spec in sp.recipes.items()}
    out["recipe_architectures"] = {r: list(spec["architectures"]) for r, spec in sp.recipes.items()}
    if "tree" in sp.architectures:  # the tree's design as trained here (the paper describes it from these)
        tc = {f.name: f.default for f in fields(TreeConfig)} | (sp.extra.get("tree") or {})
        out.update({f"tree_config.{k}": tc[k] for k in ("parent_rule", "budget", "adopt_every", "adopt_coverage")})
    out["controls"] = list(sp.controls)
    out.update({"world." + k: v for k, v in asdict(S.WorldConfig(**sp.world)).items()}, d_sae=sp.d_sae, k=sp.k, n_tokens=sp.n_tokens,
               train_tokens=sp.train_tokens, eval_tokens=sp.eval_tokens, n_seeds=len(sp.seeds),
               true_l0=float(mine.true_l0.mean()), architectures=list(sp.architectures), references=list(sp.references))
    common.write_metrics(setup["out"] / "metrics.json", out)
    return out
