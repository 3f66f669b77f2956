"""Fixtures for the feature-browser tests: a tiny random HookedTransformer with a word-level tokenizer
stub, held-out activations of one layer, and tiny SAEs of several architectures (treesae.saes.build)."""
import numpy as np
import pandas as pd
import pytest
import torch

from browser_support import D, LAYER, N_CTX, T, WORDS, make_model


@pytest.fixture(scope="session")
def model():
    return make_model()


@pytest.fixture(scope="session")
def corpus(model):
    """tokens [N_CTX, T] (word 0 first, like a BOS), residual stream at LAYER [N_CTX, T, D], split (every 4th held out)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, len(WORDS), (N_CTX, T), generator=g)
    tokens[:, 0] = 0
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{LAYER}.hook_resid_pre")
    acts = cache[f"blocks.{LAYER}.hook_resid_pre"].float()
    split = (np.arange(N_CTX) % 4 == 1).astype(np.int8)
    return tokens.numpy().astype(np.int32), acts, split


@pytest.fixture(scope="session")
def heldout(corpus):
    tokens, acts, split = corpus
    rows = np.flatnonzero(split == 1)
    return acts[torch.from_numpy(rows)], tokens[rows], rows


@pytest.fixture(scope="session")
def saes():
    from treesae.saes import build
    out = {
        "topk_s0": build("topk", d_in=D, d_sae=48, k=4, seed=0),
        "topk s1/k=4": build("topk", d_in=D, d_sae=48, k=4, seed=1),  # a name that needs URL and path escaping
        "relu": build("relu", d_in=D, d_sae=40, seed=2),
        "tree": build("tree", d_in=D, widths=[6, 12, 24], k=3, seed=3),
    }
    with torch.no_grad():
        out["relu"].b_enc.fill_(-0.12)  # sparser ReLU codes
        out["tree"].parent_index[6:].copy_(torch.arange(6, 42).sub(6) // 2)  # a planted tree: two children each
    return {name: sae.eval() for name, sae in out.items()}  # as load_sae returns them


@pytest.fixture(scope="session")
def meta(saes):
    return pd.DataFrame({"layer": [LAYER] * 4, "corpus": ["toy"] * 4,
                         "architecture": ["topk", "topk", "relu", "tree"],
                         "nmse": [0.1234567, 0.2, np.nan, 0.15], "l0": [4.0, 4.0, 9.5, 9.0], "seed": [0, 1, 2, 3]},
                        index=list(saes))


@pytest.fixture(scope="session")
def data(saes, meta, heldout, model):
    from treesae import browser
    acts, tokens, rows = heldout
    return browser.extract(saes, meta, lambda name, row: browser.Source(acts, tokens, rows), model,
                           n_top_contexts=6, batch_size=3 * T, window=(8, 4))


@pytest.fixture(scope="session")
def site(data, tmp_path_factory):
    from treesae import browser
    return browser.write_site(data, tmp_path_factory.mktemp("site") / "browser", shard_size=16)
