"""Parameters: ``params.yaml`` (the paper profile) with one section per stage, and profiles.

A profile (``profiles/<name>.yaml``) overrides some values of ``params.yaml``; ``write_profile``
merges them into a workspace's own ``params.yaml``, so every stage always reads one plain file.
"""
import copy
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from . import paths


def read_params(root: Path | None = None) -> dict:
    f = Path(root or paths.root()) / "params.yaml"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: run from a checkout of the repository (or set TREESAE_ROOT).")
    return yaml.safe_load(f.read_text())


def section(name: str) -> dict:
    """One stage's section of params.yaml (the default of every notebook's parameters cell)."""
    params = read_params()
    if name not in params:
        raise KeyError(f"params.yaml has no section {name!r} (sections: {sorted(params)}).")
    return params[name]


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def profile_params(profile: str) -> dict:
    params = read_params(paths.REPO)
    if profile == "default":
        return params
    f = paths.REPO / "profiles" / f"{profile}.yaml"
    if not f.exists():
        known = ["default"] + sorted(p.stem for p in (paths.REPO / "profiles").glob("*.yaml"))
        raise ValueError(f"Unknown profile {profile!r}; known profiles: {known}.")
    unknown = _unknown_keys(params, yaml.safe_load(f.read_text()) or {})
    if unknown:
        raise ValueError(f"{f} overrides keys that params.yaml does not have: {unknown}. Fix the spelling.")
    return merge(params, yaml.safe_load(f.read_text()) or {})


def _unknown_keys(base, over, prefix="", depth=2):
    """Keys of a profile that params.yaml lacks, down to stage fields (deeper maps are data, e.g. grids)."""
    bad = []
    for k, v in over.items():
        if k not in base:
            bad.append(f"{prefix}{k}")
        elif depth > 1 and isinstance(v, dict) and isinstance(base[k], dict):
            bad += _unknown_keys(base[k], v, f"{prefix}{k}.", depth - 1)
    return bad


def write_profile(profile: str, dest: Path):
    params = profile_params(profile)
    params["profile"] = profile
    text = f"# Generated from params.yaml + profiles/{profile}.yaml by treesae.config; edit those instead.\n"
    Path(dest).write_text(text + yaml.safe_dump(params, sort_keys=False))


def pin_threads(n: int):
    """Pinned thread counts: torch's default threading collapses when the other core is busy."""
    import torch
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def runtime(model: dict) -> "ModelParams":
    """Validate the model section, pin threads, and stay offline unless a hub model is asked for."""
    from .model import LOCAL_MODELS, set_offline
    mp = parse(ModelParams, model)
    pin_threads(mp.threads)
    if mp.name in LOCAL_MODELS:
        set_offline()
    return mp


def _check(cond, msg):
    if not cond:
        raise ValueError(msg)


@dataclass
class ModelParams:
    name: str = "smollm2-135m"
    device: str = "cpu"
    threads: int = 2

    def __post_init__(self):
        _check(self.threads >= 1, f"model.threads must be >= 1, got {self.threads}")
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"model.device must be 'cpu' or 'cuda[:N]', got {self.device!r}")


@dataclass
class HarvestParams:
    corpora: list = field(default_factory=lambda: ["brown", "pydocs"])
    layers: list = field(default_factory=lambda: [3, 9, 15, 21])
    context_len: int = 128
    max_contexts: int | None = 4096
    heldout_fraction: float = 0.1
    dtype: str = "float16"
    batch_size: int = 32
    shard_contexts: int = 512
    summary_contexts: int = 64
    seed: int = 0

    def __post_init__(self):
        _check(len(self.corpora) > 0, "harvest.corpora is empty: name at least one corpus (brown, pydocs or hf:<dataset>)")
        _check(len(self.layers) > 0 and all(isinstance(L, int) and L >= 0 for L in self.layers),
               f"harvest.layers must be a non-empty list of layer indices >= 0, got {self.layers}")
        _check(self.context_len >= 2, f"harvest.context_len must be >= 2, got {self.context_len}")
        _check(self.max_contexts is None or self.max_contexts >= 1, f"harvest.max_contexts must be >= 1 or null, got {self.max_contexts}")
        _check(0 < self.heldout_fraction < 1, f"harvest.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        _check(self.dtype in ("float16", "float32"), f"harvest.dtype must be float16 or float32, got {self.dtype!r}")
        for k in ("batch_size", "shard_contexts", "summary_contexts"):
            _check(getattr(self, k) >= 1, f"harvest.{k} must be >= 1, got {getattr(self, k)}")


def parse(cls, values: dict | None):
    """Build a params dataclass, naming unknown keys (typos) instead of ignoring them."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown} for {cls.__name__}; known: {sorted(known)}. Check params.yaml.")
    return cls(**values)
