"""Helpers shared by the feature-browser tests (a module name unique in tests/, unlike conftest):
a tiny random HookedTransformer with a word-level tokenizer stub and an on-disk activation cache writer."""
import json

import numpy as np
import torch

WORDS = ("<s>", " the", " cat", " sat", " on", " a", " mat", ".", "\n", " and", " then", " it", " ran", " to",
         " door", " of", " house", " def", " return", " self", "(", ")", ":", " import", " numpy", " as", " np",
         " for", " in", " range", " print", " value", " is", " not", " None", ",", " if", " else", " while",
         " True", " False", " class", " with", " open", " file", " read", " write", " data", " list", " dict",
         " café", " naïve", " über", "\t", " <tag>", ' "quote"', " &amp;", " 42", " 3.14", " end")
T, D, N_CTX, LAYER = 24, 32, 40, 1


class WordTokenizer:
    """Just what the browser needs from a tokenizer: ``decode([id])`` (and what HookedTransformer reads)."""

    padding_side = "right"

    def decode(self, ids):
        return "".join(WORDS[i] for i in ids)


def make_model(normalization="RMS", seed=0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    cfg = HookedTransformerConfig(n_layers=2, d_model=D, d_head=8, n_heads=4, d_mlp=64, d_vocab=len(WORDS), n_ctx=64,
                                  act_fn="gelu", normalization_type=normalization, positional_embedding_type="rotary",
                                  seed=seed, default_prepend_bos=False)
    model = HookedTransformer(cfg).eval()
    model.tokenizer = WordTokenizer()  # a stub: HookedTransformer accepts a plain attribute here
    if normalization == "RMS":
        with torch.no_grad():  # a non-trivial final-norm scale, so the logit test sees it
            model.ln_final.w.copy_(torch.linspace(0.5, 1.5, D))
    return model


def write_cache(path, tokens, acts_by_layer, split, shard_contexts=7):
    """An activation cache on disk in the layout ``treesae.cache`` reads (meta.json + shards)."""
    from treesae.io import sha256_file
    path.mkdir(parents=True)
    (path / "shards").mkdir()
    n, Tn = tokens.shape
    np.save(path / "tokens.npy", tokens)
    np.save(path / "doc_ids.npy", np.arange(n, dtype=np.int32))
    np.save(path / "split.npy", split)
    shards = []
    for i, c0 in enumerate(range(0, n, shard_contexts)):
        sh = {"index": i, "n_contexts": min(shard_contexts, n - c0), "sha256": {}}
        for layer, a in acts_by_layer.items():
            f = path / "shards" / f"layer{layer}_{i:05d}.npy"
            np.save(f, a[c0:c0 + shard_contexts].numpy().astype(np.float16))
            sh["sha256"][str(layer)] = sha256_file(f)
        shards.append(sh)
    meta = {"model": "tiny", "d_model": acts_by_layer[LAYER].shape[-1], "layers": sorted(acts_by_layer),
            "context_len": Tn, "n_contexts": n, "dtype": "float16", "shards": shards, "hook": "resid_pre"}
    (path / "meta.json").write_text(json.dumps(meta))
