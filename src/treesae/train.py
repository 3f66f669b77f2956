"""Train many SAEs in one pass over the same batches (nanoGPT-style loop).

    curves = train_sweep({"topk_k32": sae_a, "batchtopk_k32": sae_b}, acts, TrainConfig(n_tokens=10_000_000),
                         out_dir="data/train/sweep")

One shuffled order per sweep (a fixed permutation of the rows of ``data`` per epoch, from ``cfg.seed``);
every SAE sees the same batches, has its own Adam, and is trained through its own
``training_loss(x, dead_mask)`` / ``before_optimizer_step()`` / ``after_optimizer_step()``.

Dead latents: a latent is dead once it has not fired (code > 0) for ``cfg.dead_after_tokens`` tokens.
The same mask feeds AuxK and the ``dead_fraction`` curve. Early in training (fewer tokens seen than the
window) nothing counts as dead.

Checkpoints (``out_dir/checkpoint.pt``, written atomically) hold every SAE and optimizer state, the
tokens-since-fired counters, the RNG state, the step and the curves so far. A run restarted with the
same config, SAE configs and data resumes from it and ends bit-identical to an uninterrupted run
(same thread count); a checkpoint from another config is ignored (with a warning) and overwritten.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .distributed import DataParallel, rank_world
from .seeds import DATA_TAG, hashed_seed
from .tensors import dense, fired, get_rows

SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    """Training hyper-parameters shared by all SAEs of a sweep (token counts are in tokens, not steps).

    lr schedule: linear warm-up over ``lr_warm_up_steps``, constant, then decay to ``lr_end`` over the
    last ``lr_decay_frac`` of the steps ("linear" or "cosine"; "constant" never decays).
    dead_after_tokens: None -> min(10M, max(n_tokens // 10, batch_size)). OpenAI's 10M tokens is for
    runs of billions of tokens; our CPU runs see a few million, so the window is scaled to 10% of
    the run (a latent firing less often than once per 10% of training counts as dead).
    checkpoint_every: tokens between checkpoints (0: only the final one); needs ``out_dir``.
    init_sample_tokens: rows (from the start of the shuffled order) passed to ``sae.init_from_sample``
    on a fresh start (geometric-median b_dec etc.); 0 skips it.
    threads: torch intra-op threads during training (pinned, then restored). deterministic: enable
    ``torch.use_deterministic_algorithms`` during training.
    """
    n_tokens: int = 10_000_000
    batch_size: int = 4096
    lr: float = 3e-4
    lr_end: float = 0.0
    lr_schedule: str = "linear"
    lr_warm_up_steps: int = 0
    lr_decay_frac: float = 0.2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad_norm: float | None = 1.0
    seed: int = 0
    dead_after_tokens: int | None = None
    log_every: int = 50
    checkpoint_every: int = 2_000_000
    init_sample_tokens: int = 16_384
    threads: int = 1
    deterministic: bool = True

    def determining(self) -> dict:
        """The fields that determine the trained SAEs (all but how the run executes: threads, checkpoints)."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "threads")}

    def __post_init__(self):
        for f in ("n_tokens", "batch_size", "log_every", "threads"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"TrainConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.n_tokens < self.batch_size:
            raise ValueError(f"TrainConfig.n_tokens ({self.n_tokens}) < batch_size ({self.batch_size}): no step")
        if not self.lr > 0 or not 0 <= self.lr_end <= self.lr:
            raise ValueError(f"need lr > 0 and 0 <= lr_end <= lr, got lr={self.lr}, lr_end={self.lr_end}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.lr_decay_frac <= 1 or self.lr_warm_up_steps < 0:
            raise ValueError("need 0 <= lr_decay_frac <= 1 and lr_warm_up_steps >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1 and self.adam_eps > 0):
            raise ValueError(f"bad Adam betas/eps: {self.adam_beta1}, {self.adam_beta2}, {self.adam_eps}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError("clip_grad_norm must be > 0 or None")
        if self.dead_after_tokens is None:
            self.dead_after_tokens = min(10_000_000, max(self.n_tokens // 10, self.batch_size))
        if self.dead_after_tokens < 1 or self.checkpoint_every < 0 or self.init_sample_tokens < 0:
            raise ValueError("need dead_after_tokens >= 1, checkpoint_every >= 0, init_sample_tokens >= 0")

    @property
    def n_steps(self) -> int:
        return self.n_tokens // self.batch_size


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate at (0-based) step: warm-up, constant, then decay to lr_end over the last lr_decay_frac."""
    if step < cfg.lr_warm_up_steps:
        return cfg.lr * (step + 1) / cfg.lr_warm_up_steps
    decay_start = max(cfg.lr_warm_up_steps, cfg.n_steps - int(round(cfg.lr_decay_frac * cfg.n_steps)))
    if cfg.lr_schedule == "constant" or step < decay_start:
        return cfg.lr
    t = (step - decay_start + 1) / max(1, cfg.n_steps - decay_start)
    if cfg.lr_schedule == "linear":
        return cfg.lr + (cfg.lr_end - cfg.lr) * t
    return cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- data

class ShuffledOrder:
    """Row indices of each batch: epoch e is a fixed permutation of range(n) seeded by a hash of (seed, e)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._perms = n, seed, {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(hashed_seed(DATA_TAG, seed=self.seed, epoch=epoch))
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Row indices of global token positions [start, start + count), sorted (memmap locality)."""
        pos = torch.arange(start, start + count)
        epoch = pos // self.n
        out = torch.empty(count, dtype=torch.long)
        for e in epoch.unique().tolist():
            m = epoch == e
            out[m] = self.perm(e)[pos[m] % self.n]
        return out.sort().values


class CachedBatches:
    """``train_sweep``'s batches from a tensor (or memmap) of activations: ``ShuffledOrder`` over its rows.
    A source of batches with the same two methods (``treesae.stream.ActivationStream``) can stand in for it."""

    def __init__(self, data, seed: int):
        self.data, self.order = data, ShuffledOrder(data.shape[0], seed)

    def batch(self, step: int, size: int) -> torch.Tensor:
        return get_rows(self.data, self.order.indices(step * size, size))

    def sample(self, n: int) -> torch.Tensor:
        """The first ``n`` tokens of the order (the init sample)."""
        return get_rows(self.data, self.order.indices(0, min(n, self.data.shape[0])))


def _chunks(data, chunk: int = 1 << 14):
    for i in range(0, data.shape[0], chunk):
        c = data[i:i + chunk]
        yield i, (c if torch.is_tensor(c) else torch.from_numpy(np.array(c)))


def sae_dims(sae) -> tuple[int, int]:
    """(d_in, d_sae) of an SAE (from its config when it has one, else from its weights/levels)."""
    cfg = getattr(sae, "cfg", None)
    d_in = getattr(cfg, "d_in", None)
    d_in = int(d_in) if d_in is not None else int(sae.b_dec.shape[-1])
    return d_in, int(sae.levels[-1].stop)


def _k_pairs(sae):
    """(k, width, what) triples to check: the flat k against d_sae, per-level ks against level widths."""
    cfg, (_, d_sae) = getattr(sae, "cfg", None), sae_dims(sae)
    widths = [sl.stop - sl.start for sl in sae.levels]
    out = []
    for name in ("k", "ks", "k_per_level", "level_ks"):
        k = getattr(cfg, name, None)
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            out.append((int(k), d_sae, f"{name}={int(k)} > d_sae={d_sae}"))
        elif isinstance(k, (list, tuple)) and len(k) == len(widths):
            out += [(int(ki), w, f"{name}[{i}]={int(ki)} > width of level {i} ({w})")
                    for i, (ki, w) in enumerate(zip(k, widths))]
    return out


def validate(saes: dict, data) -> None:
    """Fail before any step: SAE shapes vs data, k <= d_sae, and every value of data finite."""
    if not saes:
        raise ValueError("train_sweep: no SAEs given")
    stream = hasattr(data, "batch")  # a stream: its width here, its values checked as they are made
    if not stream and len(data.shape) != 2:
        raise ValueError(f"data must be 2-D [n_tokens, d_in], got shape {tuple(data.shape)}")
    n, width = (None, data.d_in) if stream else data.shape
    devices = {str(next(s.parameters()).device) for s in saes.values()}
    if len(devices) > 1:
        raise ValueError(f"train_sweep: the SAEs are on different devices ({sorted(devices)}); move them to one")
    for name, sae in saes.items():
        d_in, _ = sae_dims(sae)
        if d_in != width:
            raise ValueError(f"SAE {name!r} has d_in={d_in} but the data has width {width} "
                             f"(activations of another model/hook?); build it with d_in={width}")
        for k, w, what in _k_pairs(sae):
            if k > w:
                raise ValueError(f"SAE {name!r}: {what}; a TopK SAE needs k <= the number of latents")
    n_bad, first = 0, None
    for i, c in [] if stream else _chunks(data):
        bad = ~torch.isfinite(c).all(dim=1)
        if bad.any():
            first = i + int(bad.nonzero()[0]) if first is None else first
            n_bad += int(bad.sum())
    if n_bad:
        raise ValueError(f"data has {n_bad} of {n} rows with NaN/Inf values (first: row {first}); the "
                         "activation cache is corrupt (or overflowed float16). Re-harvest it "
                         "(delete it and rerun the harvest stage) instead of training on it.")


# ----------------------------------------------------------------------------- checkpoints

def _jsonable(obj):
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def config_hash(saes: dict, data, cfg: TrainConfig) -> str:
    """Hash of what determines the result: cfg (less checkpoint_every/threads), SAE classes+configs+shapes, data."""
    c = cfg.determining()
    s = {n: [type(m).__name__, _jsonable(getattr(m, "cfg", None)),
             {k: list(v.shape) for k, v in m.state_dict().items()}] for n, m in saes.items()}
    if hasattr(data, "batch"):
        return hashlib.sha256(json.dumps([c, s, data.fingerprint()], sort_keys=True).encode()).hexdigest()[:16]
    h = hashlib.sha256(json.dumps([c, s, list(data.shape), str(data.dtype)], sort_keys=True).encode())
    n = data.shape[0]
    for i in sorted({0, n // 2, n - 1}):
        h.update(get_rows(data, torch.tensor([i])).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic torch.save: write a temporary file next to path, then os.replace."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def _log_row(sae, x, z, loss, logs, step, tokens, lr) -> dict:
    """Curve row of one step, from the batch the loss was computed on (before the update).

    mse / nmse / l0 (and l0_level{i}) come from the SAE's logs when it reports them (BaseSAE does,
    with these definitions); otherwise they are computed from z. SAE log keys ``level{i}/name`` become
    ``name_level{i}``; other SAE logs are kept under their own names.
    """
    logs = {k: float(v) for k, v in (logs or {}).items()}
    for k in list(logs):
        if k.startswith("level") and "/" in k:
            lvl, name = k.split("/", 1)
            logs[f"{name}_{lvl}"] = logs.pop(k)
    row = {"step": step, "tokens": tokens, "lr": lr, "loss": float(loss)}
    need = ["mse", "nmse", "l0"] + [f"l0_level{i}" for i in range(len(sae.levels)) if len(sae.levels) > 1]
    if any(k not in logs for k in need):
        z = dense(z)
        err, active = (x - sae.decode(z)).pow(2).sum(), z != 0
        row.update(mse=float(err / x.shape[0]), nmse=float(err / x.pow(2).sum()), l0=float(active.sum(1).float().mean()))
        if len(sae.levels) > 1:
            row.update({f"l0_level{i}": float(active[:, sl].sum(1).float().mean()) for i, sl in enumerate(sae.levels)})
    for k in need:
        row[k] = logs.pop(k, row.get(k))
    return {**row, **{k: v for k, v in logs.items() if k not in row}}


def _dead_fields(sae, dead) -> dict:
    row = {"dead_fraction": float(dead.float().mean())}
    if len(sae.levels) > 1:
        row.update({f"dead_fraction_level{i}": float(dead[sl].float().mean()) for i, sl in enumerate(sae.levels)})
    return row


def optimizer_step(sae, opt, loss, lr: float, clip_grad_norm: float | None, sync=None) -> None:
    """backward, ``sync()`` (data parallel: reduce over ranks), the SAE's gradient hook, optional grad-norm
    clipping, Adam at ``lr``, the SAE's weight hook."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sync is not None:
        sync()
    sae.before_optimizer_step()
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), clip_grad_norm)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    sae.after_optimizer_step()


@contextlib.contextmanager
def pinned_torch(threads: int, deterministic: bool):
    """torch's thread count and deterministic algorithms for the duration of a run; the caller's are restored."""
    det = torch.utils.deterministic
    prev = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), det.fill_uninitialized_memory)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    det.fill_uninitialized_memory = False  # else every torch.empty is NaN-filled: ~30% slower, nothing gained
    try:
        yield
    finally:
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1], warn_only=prev[2])
        det.fill_uninitialized_memory = prev[3]


def _resume(ckpt_path: Path | None, chash: str, saes: dict, opts: dict):
    """(since_fired, rows, step) from a checkpoint of this config and data, with the SAEs, optimizers and torch's
    RNG restored; None without one (a checkpoint of another config is ignored, with a warning)."""
    if ckpt_path is None or not ckpt_path.exists():
        return None
    ck = torch.load(ckpt_path, weights_only=False)
    if ck.get("config_hash") != chash:
        warnings.warn(f"{ckpt_path} is from another config/data ({ck.get('config_hash')} != "
                      f"{chash}); starting from scratch and overwriting it")
        return None
    for name, sae in saes.items():
        sae.load_state_dict(ck["saes"][name])
        opts[name].load_state_dict(ck["optimizers"][name])
    torch.set_rng_state(ck["rng"])
    return ck["since_fired"], ck["rows"], ck["step"]


def train_sweep(saes: dict, data, cfg: TrainConfig, out_dir=None, progress: bool = True,
                callback=None, data_parallel: bool = False) -> dict[str, pd.DataFrame]:
    """Train every SAE in ``saes`` (in place) on the same shuffled batches of ``data`` [N, d_in] (or of a stream,
    ``treesae.stream.ActivationStream``, that serves them).

    Returns one curve DataFrame per SAE (columns: step, tokens, lr, loss, mse, nmse, l0, l0_level{i},
    then the SAE's other logs, then dead_fraction and dead_fraction_level{i}), logged every
    ``cfg.log_every`` steps and at the last step. Per batch, before that step's update:
    mse = mean over tokens of ||x - x_hat||^2, nmse = sum ||x - x_hat||^2 / sum ||x||^2, l0 = mean
    number of non-zero codes per token; dead_fraction after the step (window cfg.dead_after_tokens).
    With ``out_dir``: checkpoints and resume (see module doc) and ``out_dir/curves/<name>.csv``. ``callback(step, tokens, saes)`` runs after
    every step (after any checkpoint); an exception from it aborts the run (used to test resume).
    ``data_parallel`` under torchrun: every rank trains every SAE on its share of each batch
    (``treesae.distributed.DataParallel``); curves are averaged over ranks; only rank 0 writes files.
    """
    validate(saes, data)
    dp = DataParallel() if data_parallel and rank_world()[1] > 1 else None
    if dp is not None and cfg.batch_size % dp.world:
        raise ValueError(f"data parallel: batch_size {cfg.batch_size} does not split over {dp.world} ranks; "
                         f"make it a multiple of {dp.world}")
    writer = dp is None or dp.rank == 0
    B, n_steps = cfg.batch_size, cfg.n_steps
    out_dir = Path(out_dir) if out_dir is not None else None
    ckpt_path = out_dir / "checkpoint.pt" if out_dir is not None else None
    chash = config_hash(saes, data, cfg) + (f"-dp{dp.world}" if dp else "")
    batches = data if hasattr(data, "batch") else CachedBatches(data, cfg.seed)
    opts = {name: torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                   eps=cfg.adam_eps, fused=True) for name, sae in saes.items()}
    dev = next(next(iter(saes.values())).parameters()).device
    since = {name: torch.zeros(sae_dims(sae)[1], dtype=torch.long, device=dev) for name, sae in saes.items()}
    # codes come back as a sparse COO tensor when the SAE offers it (no [B, d_sae] allocation per step)
    sparse_z = {name: {"dense_z": False} if "dense_z" in inspect.signature(sae.training_loss).parameters else {}
                for name, sae in saes.items()}
    rows, start = {name: [] for name in saes}, 0
    with pinned_torch(cfg.threads, cfg.deterministic), torch.random.fork_rng(devices=[]):
        torch.manual_seed(hashed_seed(DATA_TAG, seed=cfg.seed, stream="torch"))
        resumed = _resume(ckpt_path, chash, saes, opts)
        if resumed is not None:
            since, rows, start = resumed
        if start == 0 and cfg.init_sample_tokens:
            sample = batches.sample(cfg.init_sample_tokens).to(dev)
            for sae in saes.values():
                if hasattr(sae, "init_from_sample"):
                    sae.init_from_sample(sample)
        for sae in saes.values():
            sae.train()

        def checkpoint(step):
            save_checkpoint(ckpt_path, {
                "config_hash": chash, "config": asdict(cfg), "step": step, "rng": torch.get_rng_state(),
                "saes": {k: s.state_dict() for k, s in saes.items()},
                "optimizers": {k: o.state_dict() for k, o in opts.items()},
                "since_fired": since, "rows": rows})

        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        with tqdm(total=n_steps * B, initial=start * B, unit="tok", unit_scale=True, disable=not progress,
                  desc="train_sweep", smoothing=0.1, mininterval=10) as pbar:
            for step in range(start, n_steps):
                x = batches.batch(step, B).to(dev, non_blocking=True)
                x = dp.shard(x) if dp else x
                lr, tokens = get_lr(step, cfg), (step + 1) * B
                log_now = (step + 1) % cfg.log_every == 0 or step + 1 == n_steps
                for name, sae in saes.items():
                    before = dp.counts(sae) if dp else None
                    loss, logs, z = sae.training_loss(x, since[name] >= cfg.dead_after_tokens, **sparse_z[name])
                    z = z.detach()
                    if log_now:  # from the codes and weights the loss saw
                        row = _log_row(sae, x, z, loss.detach(), logs, step + 1, tokens, lr)
                        row = dp.mean(row) if dp else row
                    optimizer_step(sae, opts[name], loss, lr, cfg.clip_grad_norm,
                                   sync=(lambda: dp.reduce(sae, before)) if dp else None)  # called at once
                    since[name] += B
                    since[name][dp.fired(fired(z)) if dp else fired(z)] = 0
                    if log_now:
                        rows[name].append({**row, **_dead_fields(sae, since[name] >= cfg.dead_after_tokens)})
                pbar.update(B)
                if ckpt_path is not None and writer and cfg.checkpoint_every and \
                        tokens // cfg.checkpoint_every > (tokens - B) // cfg.checkpoint_every:
                    checkpoint(step + 1)
                if callback is not None:
                    callback(step + 1, tokens, saes)
        if ckpt_path is not None and writer and start < n_steps:
            checkpoint(n_steps)
    for sae in saes.values():
        sae.eval()
    curves = {name: pd.DataFrame(r) for name, r in rows.items()}
    if out_dir is not None and writer:
        (out_dir / "curves").mkdir(parents=True, exist_ok=True)
        for name, df in curves.items():
            df.to_csv(out_dir / "curves" / f"{name}.csv", index=False)
    return curves
