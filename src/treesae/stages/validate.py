"""One validation pass over every section of params.yaml, before any stage does work.

``python -m treesae.stages.validate`` is DVC's first stage: every other stage depends on its output
(``build/params.ok``, the same bytes whenever it passes), so a typo anywhere in params.yaml fails in
seconds, before DVC has cleared any stage's outputs. ``treesae.notebook`` (the command of every
notebook stage) runs the same pass first. Messages name the section, key, bad value and what is
allowed. Nothing is loaded: no model, no cache, no SAE weights.
"""
import json
import math
import sys

from .. import config, paths
from ..saes import ARCHITECTURES
from .browser import BrowserParams
from .figures import FiguresParams
from .hierarchy import HierarchyParams
from ..runs import FACTORS
from .matching import MatchingParams
from .position import PositionParams
from .synthetic import SyntheticParams
from .train import check

DEPTHS = {"smollm2-135m": 30}  # transformer blocks of the offline model (its GGUF); other models: their cached HF config

SECTIONS = ("profile", "model", "harvest", "train", "position", "matching", "hierarchy", "synthetic", "saebench", "figures",
            "browser", "paper")


def _subset(where: str, values, allowed, what: str):
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"params.yaml: {where} names unknown {what} {bad}; allowed: {', '.join(map(str, allowed))}.")


def _finite(node, where: str) -> None:
    """Every number anywhere in the parameters is finite (YAML reads .inf and .nan as floats)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        at = f"{where}.{k}" if isinstance(node, dict) else f"{where}[{k}]"
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"params.yaml: {at} must be a finite number, got {v}.")
        _finite(v, at)


def model_depth(name: str) -> int | None:
    """Transformer blocks of ``name`` without loading it: the offline model's known depth, else the
    ``num_hidden_layers`` / ``n_layer`` of a config.json in the local Hugging Face cache; None when unknown."""
    if name in DEPTHS:
        return DEPTHS[name]
    try:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415  (only for models other than the default)
        from transformer_lens.loading_from_pretrained import get_official_model_name  # noqa: PLC0415
        path = try_to_load_from_cache(get_official_model_name(name), "config.json")
    except Exception:  # noqa: BLE001  (an unknown name: the harvest names it)
        return None
    if not isinstance(path, str):
        return None
    cfg = json.loads(open(path).read())
    return cfg.get("num_hidden_layers", cfg.get("n_layer"))


def _ranges(params: dict) -> None:
    """Values that parse but cannot work, checked before anything runs (each names the key, value and range)."""
    _finite(params, "params")
    tr, hv = params["train"], params["harvest"]

    def need(ok: bool, where: str, value, allowed: str):
        if not ok:
            raise ValueError(f"params.yaml: {where} = {value!r} is out of range; allowed: {allowed}.")
    sink = tr.get("sink_ratio")
    need(sink is None or sink > 1, "train.sink_ratio", sink, "null (keep sinks) or a ratio > 1 to the median norm "
         "(a token at <= 1x the median norm is not a sink; 0 would drop every token)")
    held, ctx = (tr.get("eval") or {}).get("heldout_tokens"), hv.get("context_len", 128)
    need(held is None or held >= ctx, "train.eval.heldout_tokens", held,
         f"null (all) or at least one context, harvest.context_len = {ctx} tokens (the metrics need whole contexts)")
    depth = model_depth(params["model"]["name"])
    if depth is not None:
        bad = [L for L in hv.get("layers", []) if isinstance(L, int) and L >= depth]
        need(not bad, "harvest.layers", hv.get("layers"),
             f"indices 0..{depth - 1}: {params['model']['name']} has {depth} blocks ({bad} do not exist)")


def validate(params: dict | None = None) -> dict:
    """Parse and cross-check every section; returns the parsed sections (and the sweep's runs)."""
    params = config.read_params() if params is None else params
    _subset("the top level", params, SECTIONS, "section(s)")
    missing = [s for s in SECTIONS if s not in params]
    if missing:
        raise ValueError(f"params.yaml lacks section(s) {missing}; every stage reads its own (see the repository's params.yaml).")
    if not isinstance(params["profile"], str):
        raise ValueError(f"params.yaml: profile must be a string (a profile name), got {params['profile']!r}.")
    out = dict(model=config.parse(config.ModelParams, params["model"], "model"),
               harvest=config.parse(config.HarvestParams, params["harvest"], "harvest"))
    out.update(check(out["model"], out["harvest"], params["train"]))
    out["position"] = pp = config.parse(PositionParams, params["position"], "position")
    out["matching"] = mt = config.parse(MatchingParams, params["matching"], "matching")
    out["hierarchy"] = hi = config.parse(HierarchyParams, params["hierarchy"], "hierarchy")
    out["synthetic"] = config.parse(SyntheticParams, params["synthetic"], "synthetic")
    out["figures"] = config.parse(FiguresParams, params["figures"], "figures")
    out["browser"] = config.parse(BrowserParams, params["browser"], "browser")
    sb = params["saebench"]
    if not isinstance(sb, dict) or set(sb) != {"architectures"} or not (
            sb["architectures"] is None or isinstance(sb["architectures"], list) and sb["architectures"]):
        raise ValueError(f"params.yaml: saebench must be {{architectures: null or a non-empty list}}, got {sb!r}.")
    if sb["architectures"] is not None:
        _subset("saebench.architectures", sb["architectures"], list(ARCHITECTURES), "architecture(s)")
    exps = (params["paper"] or {}).get("experiments")
    if set(params["paper"] or {}) != {"experiments"} or not isinstance(exps, list) or not all(isinstance(e, str) for e in exps) \
            or len(set(exps)) < len(exps):
        raise ValueError(f"params.yaml: paper must be {{experiments: [names]}}, distinct names of folders under experiments/ "
                         f"(profiles/<name>.yaml run and published by `make experiment EXP=<name>`), got {params['paper']!r}.")
    _ranges(params)

    runs, corpora = out["runs"], out["harvest"].corpora
    if len(runs) < 2:
        raise ValueError(f"params.yaml: train expands to {len(runs)} SAE(s); the analyses compare SAEs and need at least "
                         "two (add a grid).")
    _subset("position.corpus", [pp.corpus], corpora, "corpus (not harvested)")
    _subset("position.architecture", [pp.architecture], list(ARCHITECTURES), "architecture")
    _subset("hierarchy.architectures", hi.architectures, list(ARCHITECTURES), "architecture(s)")
    _subset("matching.factors", mt.factors, FACTORS, "factor(s)")
    if "seed" not in mt.factors:  # stage 04 pairs SAEs across seeds to separate a factor's effect from a new seed's
        raise ValueError(f"params.yaml: matching.factors must include seed (pairs that differ in seed and one other "
                         f"factor give each factor's effect), got {mt.factors}; add seed to the list.")
    _subset("matching.pair_factor", [mt.pair_factor], mt.factors, "factor (not in matching.factors)")
    _subset("matching.embedding_grids", mt.embedding_grids, ["base", *(out["train"].grids or {})], "grid(s)")
    if not any(r.architecture == pp.architecture and r.corpus == pp.corpus for r in runs):
        raise ValueError(f"params.yaml: position.architecture {pp.architecture!r} has no SAE on corpus {pp.corpus!r} "
                         "in train's base run or grids.")
    return out


def main():
    try:
        validate()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"Invalid parameters, nothing was run and no output was touched:\n  {e}")
    ok = paths.root() / "build" / "params.ok"
    ok.parent.mkdir(parents=True, exist_ok=True)
    ok.write_text("params.yaml is valid\n")  # constant: a passing check never invalidates a stage
    print(f"params.yaml is valid ({paths.root() / 'params.yaml'})")


if __name__ == "__main__":
    main()
