"""Save / load SAEs in sae-lens' on-disk format, plus ``treesae.json`` to rebuild our module exactly.

``save_sae(sae, path)`` writes ``cfg.json`` + ``sae_weights.safetensors`` (via sae-lens' own
``save_model``) and ``treesae.json`` (our architecture and full config). ``sae_lens.SAE.load_from_disk``
then returns an inference SAE whose ``decode(encode(x))`` equals our eval-mode ``forward(x)``. Each
architecture declares its sae-lens equivalent (``BaseSAE.sae_lens_spec``):

============  ===========================  ==================================================
ours          sae-lens architecture        mapping
============  ===========================  ==================================================
topk          ``topk``                     same weights; apply_b_dec_to_input=True,
                                           rescale_acts_by_decoder_norm=False
batchtopk     ``jumprelu``                 same weights; threshold = our scalar on every latent
matryoshka    ``jumprelu`` / ``topk``      by ``selection`` (batchtopk / topk)
relu          ``standard``                 same weights; apply_b_dec_to_input from our config
stacked       ``treesae_stacked``          registered by its module; identical parameter names
residual      ``treesae_residual``         registered by its module; identical parameter names
tree          ``treesae_tree``             registered by its module; identical parameter names
============  ===========================  ==================================================

The three ``treesae_*`` classes reuse the variants' encoder code (``StackedCore`` etc.), so they
cannot drift from ours. Registration happens on ``import treesae.saes``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from sae_lens import SAE
from sae_lens.constants import SAE_WEIGHTS_FILENAME
from sae_lens.saes.sae import SAEMetadata

from .. import paths
from ..io import atomic_dir
from .base import BaseSAE

TREESAE_FILENAME = "treesae.json"
FORMAT_VERSION = 1
RESTORE = ("Restore the SAE: `dvc checkout data/saes` (a run whose outputs DVC cached), else `dvc repro train` "
           "(stage 02 retrains only SAEs whose files differ from what it wrote).")


def _dtype_str(sae: BaseSAE) -> str:
    return str(sae.W_dec.dtype).removeprefix("torch.")


def to_sae_lens(sae: BaseSAE, metadata: dict[str, Any] | None = None) -> SAE:
    """An equivalent sae-lens inference SAE (CPU, our dtype); ``metadata`` e.g. model_name, hook_name."""
    state = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items() if k not in sae.training_only}
    cls, cfg_cls, extra, state = sae.sae_lens_spec(state)
    cfg = cfg_cls(d_in=sae.d_in, d_sae=sae.d_sae, dtype=_dtype_str(sae), device="meta",
                  apply_b_dec_to_input=extra.pop("apply_b_dec_to_input", True),
                  metadata=SAEMetadata(**(metadata or {})), **extra)
    sl = cls(cfg)
    sl.load_state_dict(state, assign=True)
    return sl.to("cpu")


def save_sae(sae: BaseSAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``path/{cfg.json, sae_weights.safetensors, treesae.json}`` (atomically: a reader sees the old
    SAE or the new one, never a mix); returns ``path``."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        to_sae_lens(sae, metadata).save_model(tmp)
        info = {"format": FORMAT_VERSION, "architecture": sae.architecture, "config": sae.cfg.to_dict(),
                "sae_lens_architecture": json.loads((tmp / "cfg.json").read_text())["architecture"]}
        (tmp / TREESAE_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
    return path


def load_sae(path: str | Path) -> BaseSAE:
    """Rebuild our module (eval mode, CPU) from a directory written by ``save_sae``."""
    from . import build  # noqa: PLC0415  (treesae.saes imports this module: a cycle at import time)

    path = Path(path)
    if not (path / TREESAE_FILENAME).exists():
        raise FileNotFoundError(f"{path} has no {TREESAE_FILENAME}: not written by treesae.saes.save_sae "
                                "(load sae-lens SAEs with sae_lens.SAE.load_from_disk)")
    info = json.loads((path / TREESAE_FILENAME).read_text())
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / TREESAE_FILENAME}: format {info.get('format')!r}, expected {FORMAT_VERSION}")
    weights = path / SAE_WEIGHTS_FILENAME
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors' SafetensorError (truncated, damaged), OSError (missing)
        raise ValueError(f"{weights}: cannot be read ({type(e).__name__}: {e}); the file is missing, truncated or "
                         f"damaged. {RESTORE}") from None
    d_sae, d_in = state["W_dec"].shape
    cfg = json.loads((path / "cfg.json").read_text()) if (path / "cfg.json").exists() else {}
    for file, c in (("cfg.json", cfg), (TREESAE_FILENAME, info["config"])):
        bad = {f: c[f] for f, want in (("d_in", d_in), ("d_sae", d_sae)) if f in c and c[f] != want}
        if bad:  # what sae-lens users load (cfg.json) must describe these weights
            raise ValueError(f"{path / file} says {bad}, but {SAE_WEIGHTS_FILENAME} holds W_dec of shape "
                             f"[d_sae={d_sae}, d_in={d_in}]: the file was edited or mixed with another SAE's. {RESTORE}")
    sae = build(info["architecture"], **info["config"]).to(state["W_dec"].dtype)
    if "threshold" in state:
        if state["threshold"].ndim == 1:  # jumprelu: our scalar threshold, repeated on every latent
            state["threshold"] = state["threshold"][0]
    elif "threshold" in sae.state_dict():  # matryoshka with topk selection: the threshold is unused
        state["threshold"] = sae.threshold
    state |= {k: v for k, v in sae.state_dict().items() if k in sae.training_only}  # counters, not exported
    sae.load_state_dict(state, strict=True)
    return sae.eval()


def load_saes(names) -> dict:
    """{run name: SAE} from stage 02's data/saes/<run>/ (eval mode, CPU)."""
    out = {}
    for n in names:
        p = paths.data("saes", n)
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: metrics.csv lists run {n} but its SAE is missing; rerun `dvc repro train`.")
        out[n] = sae = load_sae(p)
        hook = json.loads((p / "cfg.json").read_text()).get("metadata", {}).get("hook_name", "")
        layer = hook.split(".")[1] if hook.startswith("blocks.") else "?"
        if not n.startswith(f"{sae.architecture}-") or f"-L{layer}-" not in n:  # the fields of runs.Run.name
            raise ValueError(f"{p} holds a {sae.architecture} SAE at {hook or 'no hook'}, not run {n}'s (another run's "
                             f"files copied in?). {RESTORE}")
    return out
