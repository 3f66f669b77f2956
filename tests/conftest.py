import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_model():
    """The offline SmolLM2-135M (loads in seconds once its fp32 copy is cached)."""
    from treesae.model import load_model
    return load_model()


def make_tiny_model(positional="rotary", n_layers=4, seed=0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=101, n_ctx=64,
                                  act_fn="gelu", normalization_type="RMS", positional_embedding_type=positional,
                                  model_name=f"tiny-{positional}", seed=seed, default_prepend_bos=False)
    return HookedTransformer(cfg).eval()


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def tiny_corpus(tmp_path):
    """A tokenized corpus directory as corpora.prepare writes it: 40 contexts of 16 tokens."""
    rng = np.random.default_rng(0)
    d = tmp_path / "corpus"
    d.mkdir()
    np.save(d / "tokens.npy", rng.integers(0, 101, (40, 16), dtype=np.int32))
    np.save(d / "doc_ids.npy", np.repeat(np.arange(10, dtype=np.int32), 4))
    np.save(d / "split.npy", (np.arange(40) % 5 == 0).astype(np.int8))
    (d / "docs.json").write_text('{"corpus": "tiny"}')
    return d



@pytest.fixture
def interrupt_on_call():
    """``wrap(fn, n)``: ``fn`` raising KeyboardInterrupt on its n-th call (a Ctrl-C part-way through a stage)."""
    def wrap(fn, n: int):
        calls = []

        def dying(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return fn(*a, **k)
        return dying
    return wrap
