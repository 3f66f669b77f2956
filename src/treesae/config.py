"""Parameters: ``params.yaml`` (the paper profile) with one section per stage, and profiles.

A profile (``profiles/<name>.yaml``) overrides some values of ``params.yaml``; ``write_profile``
merges them into a workspace's own ``params.yaml``, so every stage always reads one plain file.
YAML is read as DVC reads it (YAML 1.2, ruamel.yaml): ``1e-3`` is a number, ``yes`` a string.
"""
import copy
import io
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from . import paths
from .corpora import SOURCES


def _plain(x):
    """ruamel's containers and scalars as plain dict / list / int / float / str / bool."""
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    for t in (bool, int, float, str):
        if isinstance(x, t):
            return t(x)
    return x


def load_yaml(text: str, source="params.yaml"):
    try:
        return _plain(YAML(typ="safe", pure=True).load(text))
    except YAMLError as e:
        raise ValueError(f"{source} is not valid YAML: {e}") from None


def dump_yaml(obj) -> str:
    y = YAML(typ="safe", pure=True)
    y.default_flow_style, y.sort_base_mapping_type_on_output = False, False
    buf = io.StringIO()
    y.dump(obj, buf)
    return buf.getvalue()


def read_params(root: Path | None = None) -> dict:
    f = Path(root or paths.root()) / "params.yaml"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: run from a checkout of the repository (or set TREESAE_ROOT).")
    params = load_yaml(f.read_text(), str(f))
    if not isinstance(params, dict):
        raise ValueError(f"{f} must be a mapping of sections (model, harvest, train, ...), got {type(params).__name__}.")
    return params


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
    over = load_yaml(f.read_text(), str(f)) or {}
    unknown = _unknown_keys(params, over)
    if unknown:
        raise ValueError(f"{f} overrides keys that params.yaml does not have: {unknown}. Fix the spelling.")
    return merge(params, over)


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
    Path(dest).write_text(text + dump_yaml(params))


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
    corpora: list[str] = field(default_factory=lambda: ["brown", "pydocs"])
    layers: list[int] = field(default_factory=lambda: [3, 9, 15, 21])
    context_len: int = 128
    max_contexts: int | None = 4096
    heldout_fraction: float = 0.1
    dtype: str = "float16"
    batch_size: int = 32
    shard_contexts: int = 512
    summary_contexts: int = 64
    seed: int = 0
    disk_budget_gb: float | None = None  # when every layer of every context would not fit: cache held-out only, stream train

    def __post_init__(self):
        _check(len(self.corpora) > 0, "harvest.corpora is empty: name at least one corpus (brown, pydocs or hf:<dataset>)")
        for c in self.corpora:
            _check(c in SOURCES or c.startswith("hf:") and len(c) > 3,
                   f"harvest.corpora: unknown corpus {c!r}; use one of {sorted(SOURCES)} or 'hf:<dataset>[:<split>[:<field>]]'")
        _check(len(set(self.corpora)) == len(self.corpora), f"harvest.corpora lists a corpus twice: {self.corpora}")
        _check(len(self.layers) > 0 and all(isinstance(L, int) and L >= 0 for L in self.layers),
               f"harvest.layers must be a non-empty list of layer indices >= 0, got {self.layers}")
        _check(self.context_len >= 2, f"harvest.context_len must be >= 2, got {self.context_len}")
        _check(self.max_contexts is None or self.max_contexts >= 1, f"harvest.max_contexts must be >= 1 or null, got {self.max_contexts}")
        _check(0 < self.heldout_fraction < 1, f"harvest.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        _check(self.dtype in ("float16", "float32"), f"harvest.dtype must be float16 or float32, got {self.dtype!r}")
        for k in ("batch_size", "shard_contexts", "summary_contexts"):
            _check(getattr(self, k) >= 1, f"harvest.{k} must be >= 1, got {getattr(self, k)}")
        _check(self.disk_budget_gb is None or self.disk_budget_gb > 0,
               f"harvest.disk_budget_gb must be > 0 or null (no budget), got {self.disk_budget_gb}")


def describe(hint) -> str:
    """A type hint in words: ``int | None`` -> "an integer or null"."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
             list: "a list", tuple: "a list", type(None): "null"}
    of = f" of {describe(args[0]).split(' ', 1)[-1]}s" if args and origin in (list, tuple) else ""
    return words.get(origin, getattr(origin, "__name__", str(origin))) + of


def type_ok(value, hint) -> bool:
    """YAML values against a field's type hint (bool is not an int; an int is a float)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(hint))
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is type(None):
        return value is None
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(type_ok(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    return isinstance(value, origin) if isinstance(origin, type) else True


def parse(cls, values: dict | None, section: str | None = None):
    """Build a params dataclass from a params.yaml section, naming unknown keys (typos) and values of
    the wrong type (section, key, value, expected type) instead of ignoring them or failing later."""
    section = section or cls.__name__
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"params.yaml: {section} must be a mapping of keys to values, got {values!r}.")
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"params.yaml: unknown key(s) {unknown} in {section}; known keys: {', '.join(known)}. "
                         "Fix the spelling.")
    for k, v in values.items():
        if not type_ok(v, hints.get(k, typing.Any)):
            raise ValueError(f"params.yaml: {section}.{k} must be {describe(hints[k])}, got {v!r} "
                             f"({type(v).__name__}).")
    try:
        return cls(**values)
    except ValueError as e:  # a range check of the dataclass itself: say where in params.yaml
        msg = str(e).replace(f"{cls.__name__}.", f"{section}.")
        where = "" if msg.startswith("params.yaml") else "params.yaml: " if f"{section}." in msg else f"params.yaml: {section}: "
        raise ValueError(where + msg) from None
