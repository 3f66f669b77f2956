"""Ground-truth benchmark for hierarchy claims: SAEs trained on a synthetic world whose features are known.

    world = make_world(WorldConfig())                     # sae-lens SyntheticModel with a feature forest
    acts, feats = sample(world, 4096, seed=0)             # activations and the true features behind them
    sae = train_ours("tree", world, d_sae=256, k=12, n_tokens=2_000_000, seed=0)   # a sae-lens SAE
    evaluate(sae, world, 16384, seed=0)                   # F1, MCC, explained variance, ..., absorption

Stage 08 (``treesae.stages.synthetic``, ``notebooks/08_ground_truth.ipynb``) runs the whole benchmark.

The world (``sae_lens.synthetic``): ``n_roots`` trees of ``depth`` levels, every parent with ``branching``
mutually exclusive children whose magnitudes scale with the parent's, the remaining features free;
Zipfian firing probabilities in feature order (roots first), the top one solved for so that the
expected true L0 is ``target_l0``. Every random stream (world, data, reference SAE init) is seeded from a
sha256 of its own tag and identity, so none coincides with another or with ``runs.Run.init_seed``.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sae_lens import (SAE, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, MatryoshkaBatchTopKTrainingSAE,
                      MatryoshkaBatchTopKTrainingSAEConfig, SAETrainer)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.synthetic import (HierarchyConfig, SyntheticModel, SyntheticModelConfig, ZipfianFiringProbabilityConfig,
                                eval_sae_on_synthetic_data, generate_hierarchy)
from sae_lens.synthetic.firing_probabilities import zipfian_firing_probabilities
from sae_lens.util import temporary_seed
from scipy.optimize import linear_sum_assignment

from .analysis.hierarchy import codes, probe_pairs, probe_score
from .convergence import finalize
from .saes import MatryoshkaConfig
from .saes.export import save_sae
from .seeds import hashed_seed
from .runs import Run
from .saes import build_run
from .tensors import get_rows
from .train import ShuffledOrder, TrainConfig, train_sweep

WORLD_TAG = "treesae/synthetic-world/1:"
SAMPLE_TAG = "treesae/synthetic-sample/1:"
REFERENCE_INIT_TAG = "treesae/synthetic-saelens-init/1:"
CHUNK = 8192
REFERENCES = ("batchtopk", "matryoshka")
EXTRA = dict(relu={"l1_coef_by_k": {12: 0.26}, "l1_warm_up_steps": 50}, stacked={"n_levels": 3},
             residual={"n_levels": 3}, tree={"n_levels": 3, "branching": 2})


@dataclass(frozen=True)
class WorldConfig:
    """A synthetic world. ``depth`` counts levels per tree, roots included (sae-lens ``max_depth`` is
    ``depth - 1``); the ``n_roots`` trees take the first ``n_roots * (1 + b + ... + b**(depth-1))``
    features in breadth-first order, the rest fire independently. ``zipf_exponent`` and ``min_prob``
    shape the firing probabilities (``min_prob``: the last feature's); ``target_l0``: expected active
    features per token. ``magnitude_std``: std of the magnitudes around 1. ``hierarchical=False``: the flat
    control, every feature firing independently as often as it does in the hierarchical world (the trees
    then only say which feature pairs the hierarchy scores look at: every such score must be at chance)."""

    d_in: int = 128
    n_features: int = 512
    n_roots: int = 24
    branching: int = 4
    depth: int = 3
    zipf_exponent: float = 0.5
    min_prob: float = 0.2
    target_l0: float = 12.0
    magnitude_std: float = 0.1
    seed: int = 0
    hierarchical: bool = True

    def __post_init__(self):
        for name, low in (("d_in", 1), ("n_features", 1), ("n_roots", 1), ("branching", 2), ("depth", 2), ("seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"WorldConfig.{name} must be an integer >= {low}, got {v!r}")
        if self.n_roots * self.tree_size > self.n_features:
            raise ValueError(f"WorldConfig.n_roots={self.n_roots} trees of {self.tree_size} features (branching "
                             f"{self.branching}, depth {self.depth}) need {self.n_roots * self.tree_size} > "
                             f"n_features={self.n_features}; lower n_roots to <= {self.n_features // self.tree_size} "
                             "or raise n_features")
        if not isinstance(self.hierarchical, bool):
            raise ValueError(f"WorldConfig.hierarchical must be true or false, got {self.hierarchical!r}")
        if not self.zipf_exponent > 0:
            raise ValueError(f"WorldConfig.zipf_exponent must be > 0, got {self.zipf_exponent}")
        if not 0 < self.min_prob < 1:
            raise ValueError(f"WorldConfig.min_prob must be in (0, 1), got {self.min_prob}")
        if not 0 < self.target_l0 < self.n_features:
            raise ValueError(f"WorldConfig.target_l0 must be in (0, n_features={self.n_features}), got {self.target_l0}")
        if not self.magnitude_std >= 0:
            raise ValueError(f"WorldConfig.magnitude_std must be >= 0, got {self.magnitude_std}")

    @property
    def tree_size(self) -> int:
        return sum(self.branching ** l for l in range(self.depth))


def _hierarchy_config(cfg: WorldConfig):
    return HierarchyConfig(total_root_nodes=cfg.n_roots, branching_factor=cfg.branching, max_depth=cfg.depth - 1,
                           mutually_exclusive_portion=1.0, scale_children_by_parent=True)


def parents(hierarchy) -> dict[int, tuple[int, list[int]]]:
    """Parent feature -> (its level, its children's features), for every parent of a sae-lens Hierarchy."""
    out, stack = {}, [(r, 0) for r in hierarchy.roots]
    while stack:
        node, level = stack.pop()
        if node.children:
            out[node.feature_index] = (level, [c.feature_index for c in node.children])
            stack += [(c, level + 1) for c in node.children]
    return dict(sorted(out.items()))


def levels(hierarchy, n_features: int) -> np.ndarray:
    """Level of every feature in its tree (0: roots), -1 for free features."""
    lv = np.full(n_features, -1)
    for r in hierarchy.roots:
        lv[r.feature_index] = 0
    for p, (l, kids) in parents(hierarchy).items():
        lv[kids] = l + 1
    return lv


def marginals(hierarchy, probs: torch.Tensor) -> np.ndarray:
    """Each feature's probability of being active under sae-lens' sampling: a feature is drawn with its
    probability, a child survives
    only with its parent, and among drawn mutually exclusive siblings one uniformly random winner
    survives. P(child j wins | parent) = q_j E[1 / (1 + N_j)] with N_j the other drawn siblings, and
    E[1 / (1 + N)] = int_0^1 prod_{m != j} (1 - q_m (1 - t)) dt (16-point Gauss-Legendre: exact up to
    32 siblings)."""
    p = probs.double().numpy()
    marg = p.copy()
    groups = parents(hierarchy)
    t, w = np.polynomial.legendre.leggauss(16)
    t, w = (t + 1) / 2, w / 2
    for par, (_, kids) in sorted(groups.items(), key=lambda kv: kv[1][0]):
        q = p[kids][:, None]
        f = 1 - q * (1 - t[None])
        win = (f.prod(0, keepdims=True) / f * w).sum(1) if len(kids) > 1 else np.ones(1)
        marg[kids] = marg[par] * p[kids] * win
    return marg


def expected_l0(hierarchy, probs: torch.Tensor) -> float:
    """Expected true L0: the sum of ``marginals``."""
    return float(marginals(hierarchy, probs).sum())


def _model_config(cfg: WorldConfig, max_prob: float):
    return SyntheticModelConfig(
        num_features=cfg.n_features, hidden_dim=cfg.d_in,
        hierarchy=_hierarchy_config(cfg) if cfg.hierarchical else None,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=cfg.zipf_exponent, max_prob=max_prob,
                                                          min_prob=cfg.min_prob),
        std_firing_magnitudes=cfg.magnitude_std, mean_firing_magnitudes=1.0,
        seed=hashed_seed(WORLD_TAG, seed=cfg.seed))


def calibrate_max_prob(cfg: WorldConfig) -> float:
    """The top Zipf probability at which the expected true L0 is ``cfg.target_l0`` (bisection)."""
    hier = structure(cfg)
    l0 = lambda m: expected_l0(hier, zipfian_firing_probabilities(cfg.n_features, cfg.zipf_exponent, m, cfg.min_prob))
    lo, hi = cfg.min_prob * (1 + 1e-6), 1.0
    if not l0(lo) <= cfg.target_l0 <= l0(hi):
        raise ValueError(f"WorldConfig.target_l0={cfg.target_l0} is out of reach: with zipf_exponent="
                         f"{cfg.zipf_exponent} and min_prob={cfg.min_prob} the expected L0 is {l0(lo):.2f} to "
                         f"{l0(hi):.2f}; change target_l0, or min_prob / zipf_exponent / n_roots")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if l0(mid) < cfg.target_l0 else (lo, mid)
    return (lo + hi) / 2


def structure(cfg: WorldConfig):
    """The trees of ``cfg`` (a sae-lens ``Hierarchy``; deterministic: features are assigned breadth-first and
    every sibling group is mutually exclusive). For a flat world, the pairs its hierarchy scores look at."""
    return generate_hierarchy(cfg.n_features, _hierarchy_config(cfg), seed=0)


def make_world(cfg: WorldConfig):
    """The sae-lens ``SyntheticModel`` of ``cfg`` (CPU), seeded by ``hashed_seed(WORLD_TAG, seed=cfg.seed)``;
    ``world.structure`` is ``structure(cfg)``, scored by ``absorption`` and ``hierarchy_recovery``."""
    max_prob = calibrate_max_prob(cfg)
    world = SyntheticModel(_model_config(cfg, max_prob), device="cpu")
    world.structure = structure(cfg)
    if not cfg.hierarchical:  # each feature as often as in the hierarchical world, independently
        gen = world.activation_generator
        probs = zipfian_firing_probabilities(cfg.n_features, cfg.zipf_exponent, max_prob, cfg.min_prob)
        gen.firing_probabilities = torch.as_tensor(marginals(world.structure, probs), dtype=gen.firing_probabilities.dtype)
    return world


@torch.no_grad()
def sample(world, n_tokens: int, seed: int, split: str = "train", features: bool = True):
    """(acts [n, d_in] float32, feats [n, n_features] float32 or None without ``features``): the same for the
    same (seed, split); the stream is ``hashed_seed(SAMPLE_TAG, seed, split)``, drawn in fixed chunks."""
    acts, feats = [], []
    with temporary_seed(hashed_seed(SAMPLE_TAG, seed=seed, split=split)):
        for i in range(0, n_tokens, CHUNK):
            f = world.activation_generator.sample(min(CHUNK, n_tokens - i))
            acts.append(world.feature_dict(f).float())
            if features:
                feats.append(f.float())
    return torch.cat(acts), (torch.cat(feats) if features else None)


def match(W_dec: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Hungarian matching of SAE decoder rows to true features by |cos|: LongTensor [n_features], the latent
    matched to each feature (-1 where none is, when the SAE is narrower than the world)."""
    cos = (torch.nn.functional.normalize(W_dec.detach().float(), dim=1)
           @ torch.nn.functional.normalize(features.detach().float(), dim=1).T).abs()
    rows, cols = linear_sum_assignment(-cos.numpy())
    out = torch.full((features.shape[0],), -1, dtype=torch.long)
    out[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return out


def absorption(sae_latents: torch.Tensor, true_feats: torch.Tensor, hierarchy, assignment: torch.Tensor,
               min_count: int = 10) -> dict:
    """Feature absorption of the latents matched to parent features.

    For a parent feature p with matched latent j = assignment[p] (>= 0): recall_with_child = P(j fires |
    p active and one of its children active), recall_no_child = P(j fires | p active, no child active);
    absorption_p = max(0, recall_no_child - recall_with_child) (1: the latent goes silent whenever a child
    fires, its direction absorbed by the child's latent). Parents with fewer than ``min_count`` tokens in
    either case are skipped. Returns the means over parents (and per parent level: ``absorption_level{l}``)
    and ``n_parents``, the number averaged (NaN means when none qualifies)."""
    fires, active = sae_latents != 0, true_feats > 0
    rows = []
    for p, (level, kids) in parents(hierarchy).items():
        j = int(assignment[p])
        if j < 0:
            continue
        child = active[:, kids].any(1)
        with_c, no_c = active[:, p] & child, active[:, p] & ~child
        if with_c.sum() < min_count or no_c.sum() < min_count:
            continue
        r_with, r_no = fires[with_c, j].float().mean().item(), fires[no_c, j].float().mean().item()
        rows.append((level, max(0.0, r_no - r_with), r_with, r_no))
    if not rows:
        return dict(absorption=float("nan"), recall_with_child=float("nan"), recall_no_child=float("nan"), n_parents=0.0)
    a = np.array(rows)
    out = dict(absorption=a[:, 1].mean(), recall_with_child=a[:, 2].mean(), recall_no_child=a[:, 3].mean(),
               n_parents=float(len(a)))
    out.update({f"absorption_level{int(l)}": a[a[:, 0] == l, 1].mean() for l in np.unique(a[:, 0])})
    return {k: float(v) for k, v in out.items()}


def hierarchy_recovery(sae_latents: torch.Tensor, hierarchy, assignment: torch.Tensor, min_count: int = 10,
                       seed: int = 0) -> dict:
    """Do the latents reproduce the true trees? For each true (parent p, child c) pair whose matched latents
    j_p, j_c exist and j_c fires at least ``min_count`` times: ``implication`` = P(j_p fires | j_c fires), and
    its baseline P(j_q fires | j_c fires) for q a random other matched feature of p's level (seeded).
    ``hierarchy_recovery`` = mean implication - mean baseline: near 1 when every child's latent fires only
    with its true parent's, 0 at chance. A gate cannot pass it by construction: the gated latent pairs must be
    the true pairs, and on a flat world (independent features) every architecture scores 0."""
    fires = (sae_latents != 0).float()
    lv = levels(hierarchy, len(assignment))
    rng = np.random.default_rng([seed, 0x41E5])
    imp, base = [], []
    for p, (level, kids) in parents(hierarchy).items():
        pool = [q for q in np.nonzero(lv == level)[0] if q != p and assignment[q] >= 0]
        for c in kids:
            jp, jc = int(assignment[p]), int(assignment[c])
            if jp < 0 or jc < 0 or not pool:
                continue
            on = fires[:, jc] > 0
            if on.sum() < min_count:
                continue
            jq = int(assignment[int(rng.choice(pool))])
            imp.append(fires[on, jp].mean().item())
            base.append(fires[on, jq].mean().item())
    if not imp:
        return dict(hierarchy_recovery=float("nan"), implication=float("nan"), implication_baseline=float("nan"),
                    n_pairs=0.0)
    return dict(hierarchy_recovery=float(np.mean(imp) - np.mean(base)), implication=float(np.mean(imp)),
                implication_baseline=float(np.mean(base)), n_pairs=float(len(imp)))


def tree_precision(parent_of: torch.Tensor, hierarchy, assignment: torch.Tensor) -> dict:
    """How true is a tree SAE's own tree? Over its (child, parent) latent edges whose two latents are both
    matched to true features: ``tree_precision``, the fraction where the parent's feature is an ancestor of
    the child's, and ``tree_precision_chance``, the same fraction with every parent latent replaced by each
    matched latent in turn (what an unrelated parent scores). ``tree_edges``: the fraction of latents that
    have a parent (root-level latents and the learned rule's root children have none)."""
    feature_of = {int(j): f for f, j in enumerate(assignment.tolist()) if j >= 0}
    up = {c: p for p, (_, kids) in parents(hierarchy).items() for c in kids}

    def ancestors(f):
        out = set()
        while f in up:
            f = up[f]
            out.add(f)
        return out

    par = parent_of.long().tolist()
    edges = [(feature_of[c], feature_of[p]) for c, p in enumerate(par) if p >= 0 and c in feature_of and p in feature_of]
    out = dict(tree_edges=float(np.mean([p >= 0 for p in par])), n_edges=float(len(edges)))
    if not edges:
        return out | dict(tree_precision=float("nan"), tree_precision_chance=float("nan"))
    matched = list(feature_of.values())
    chance = np.mean([np.mean([q in ancestors(fc) for q in matched]) for fc, _ in edges])
    return out | dict(tree_precision=float(np.mean([fp in ancestors(fc) for fc, fp in edges])),
                      tree_precision_chance=float(chance))


class _Replay:
    """An activation generator for ``eval_sae_on_synthetic_data`` that hands out fixed feature rows."""

    def __init__(self, feats: torch.Tensor):
        self.feats, self.i = feats, 0

    def sample(self, n: int) -> torch.Tensor:
        self.i += n
        return self.feats[self.i - n:self.i]


@torch.no_grad()
def evaluate(sae, world, n_tokens: int, seed: int, batch_size: int = 4096, eval_data=None) -> dict:
    """Ground-truth metrics of a sae-lens SAE on ``n_tokens`` held-out tokens (``sample(..., split="eval")``,
    or ``eval_data`` = (acts, feats)): sae-lens' ``eval_sae_on_synthetic_data`` (true_l0, l0, dead_latents,
    dead_fraction, shrinkage, explained_variance, mcc, uniqueness, precision, recall, f1, accuracy),
    ``absorption`` (with the Hungarian ``match``), ``max_cos_level{l}``: mean over the features of tree
    level l (``free``: outside the trees) of their best |cos| with a decoder row, and Cao et al.'s probe test
    (``analysis.hierarchy.probe_pairs`` at its defaults, as stage 05): ``probe`` with a tree's gate lifted,
    ``probe_gated`` with it (trees), ``probe_given`` on a tree's own pairs (gated)."""
    acts, feats = eval_data if eval_data is not None else sample(world, n_tokens, seed, split="eval")
    r = eval_sae_on_synthetic_data(sae, world.feature_dict, _Replay(feats), num_samples=len(feats), batch_size=batch_size)
    out = dict(true_l0=r.true_l0, l0=r.sae_l0, dead_latents=r.dead_latents, dead_fraction=r.dead_latents / sae.W_dec.shape[0],
               shrinkage=r.shrinkage, explained_variance=r.explained_variance, mcc=r.mcc, uniqueness=r.uniqueness,
               precision=r.classification.precision, recall=r.classification.recall, f1=r.classification.f1_score,
               accuracy=r.classification.accuracy)
    latents = torch.cat([sae.encode(acts[i:i + batch_size].to(sae.W_dec.dtype)) for i in range(0, len(acts), batch_size)])
    gt = world.feature_dict.feature_vectors
    assignment = match(sae.W_dec, gt)
    out.update(absorption(latents, feats, world.structure, assignment))
    out.update(hierarchy_recovery(latents, world.structure, assignment))
    out["probe"] = probe_score(probe_pairs(codes(sae, acts, batch_size, ungated=True), acts, sae.W_dec))["score"]
    if hasattr(sae, "encode_ungated"):
        out["probe_gated"] = probe_score(probe_pairs(latents, acts, sae.W_dec))["score"]
    if getattr(sae, "parent_of", None) is not None:
        out.update(tree_precision(sae.parent_of, world.structure, assignment))
        if (sae.parent_of >= 0).any():
            out["probe_given"] = probe_score(probe_pairs(latents, acts, sae.W_dec, sae.parent_of))["score"]
    best = (torch.nn.functional.normalize(gt.float(), dim=1)
            @ torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1).T).abs().amax(1).numpy()
    lv = levels(world.structure, gt.shape[0])
    out.update({f"max_cos_level{l}" if l >= 0 else "max_cos_free": best[lv == l].mean() for l in np.unique(lv)})
    return {k: float(v) for k, v in out.items()}


def train_data(world, n_tokens: int = 65536, seed: int = 0) -> torch.Tensor:
    """The fixed training set: ``sample(world, n_tokens, seed, split="train")`` activations."""
    return sample(world, n_tokens, seed, split="train", features=False)[0]


def _finalize_sample(data: torch.Tensor, n: int = 32768) -> torch.Tensor:
    return data[torch.linspace(0, len(data) - 1, min(n, len(data))).long()]


def train_ours(architecture: str, world, d_sae: int, k: int, n_tokens: int, seed: int, *, data=None,
               train_tokens: int = 65536, batch_size: int = 1024, lr: float = 3e-3, lr_end: float = 3e-4,
               extra: dict | None = None, out_dir=None, calibrate: bool = True, **train_cfg):
    """A treesae SAE built as stage 02 builds run (architecture, "synthetic", layer 0, d_sae, k, seed) with
    ``extra`` (default ``EXTRA``) as ``train.architectures``, trained by ``train_sweep`` for ``n_tokens`` on
    ``data`` (default ``train_data(world, train_tokens)``; several epochs) with batch order seed ``seed``,
    finalized (BatchTopK threshold; ``calibrate=False`` keeps the running estimate), exported with ``save_sae`` to ``out_dir`` (a temporary directory if
    None) and returned as loaded back by ``sae_lens.SAE.load_from_disk``."""

    data = train_data(world, train_tokens) if data is None else data
    run = Run(architecture=architecture, corpus="synthetic", layer=0, d_sae=d_sae, k=k, seed=seed)
    sae = build_run(run, world.cfg.hidden_dim, EXTRA if extra is None else extra)
    cfg = TrainConfig(**{**dict(n_tokens=n_tokens, batch_size=batch_size, lr=lr, lr_end=lr_end, threads=1,
                                checkpoint_every=0, seed=seed, log_every=10 ** 9), **train_cfg})
    train_sweep({run.name: sae}, data, cfg, progress=False)
    if calibrate:
        finalize(sae, _finalize_sample(data))
    with tempfile.TemporaryDirectory() as tmp:
        path = save_sae(sae, Path(out_dir or tmp) / run.name)
        return SAE.load_from_disk(str(path))


class _Batches:
    """The batches ``train_sweep`` would draw from ``data`` with batch order seed ``seed``."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int):
        self.data, self.B, self.order, self.step = data, batch_size, ShuffledOrder(len(data), seed), 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        self.step += 1
        return get_rows(self.data, self.order.indices((self.step - 1) * self.B, self.B))


def train_reference(kind: str, world, d_sae: int, k: int, n_tokens: int, seed: int, *, data=None,
                    train_tokens: int = 65536, batch_size: int = 1024, lr: float = 3e-3, lr_end: float = 3e-4,
                    lr_decay_frac: float = 0.2, out_dir=None, **sae_cfg):
    """sae-lens' own BatchTopK (``kind="batchtopk"``) or Matryoshka BatchTopK (``"matryoshka"``, prefixes as
    ours: d_sae/16, /8, /4, /2, d_sae) with sae-lens defaults, trained by ``SAETrainer`` on the batches
    ``train_ours`` sees, Adam at ``lr``, linear decay over the last ``lr_decay_frac`` of the steps (sae-lens
    decays to 0, not ``lr_end``); ``sae_cfg`` overrides fields of sae-lens' training config (e.g.
    ``rescale_acts_by_decoder_norm``, ``decoder_init_norm``); init seeded by ``hashed_seed(REFERENCE_INIT_TAG, ...)``. Returned as the
    inference SAE (JumpReLU at sae-lens' running threshold) loaded by ``sae_lens.SAE.load_from_disk``."""
    if kind not in REFERENCES:
        raise ValueError(f"unknown sae-lens reference {kind!r}; known: {', '.join(REFERENCES)}")
    data = train_data(world, train_tokens) if data is None else data
    common = dict(d_in=world.cfg.hidden_dim, d_sae=d_sae, k=k, dtype="float32", device="cpu", **sae_cfg)
    if kind == "matryoshka":
        widths = MatryoshkaConfig(d_in=1, d_sae=d_sae, k=min(k, d_sae)).prefix_sizes
        cls, cfg = MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig(**common, matryoshka_widths=widths)
    else:
        cls, cfg = BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig(**common)
    steps = n_tokens // batch_size
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with temporary_seed(hashed_seed(REFERENCE_INIT_TAG, kind=kind, d_sae=d_sae, k=k, seed=seed)):
            sae = cls(cfg)
        tcfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr,
                                lr_end=lr_end, lr_scheduler_name="constant", lr_decay_steps=round(lr_decay_frac * steps),
                                device="cpu", dead_feature_window=max(1, n_tokens // 10 // batch_size),
                                feature_sampling_window=max(1, steps), logger=LoggingConfig(log_to_wandb=False))
        SAETrainer(cfg=tcfg, sae=sae, data_provider=_Batches(data, batch_size, seed)).fit()
    finally:
        torch.set_num_threads(prev)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out_dir or tmp) / f"saelens-{kind}-d{d_sae}-k{k}-s{seed}"
        sae.save_inference_model(path)
        return SAE.load_from_disk(str(path))
