"""The smoke workspace that `make test` builds first (`make smoke`): DVC state and real activations."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from treesae import harvest as H, paths
from treesae.cache import ActivationCache

ROOT = paths.root()


@pytest.fixture(scope="module", autouse=True)
def workspace():
    if not (ROOT / "dvc.lock").exists() or ROOT == paths.REPO:
        pytest.fail(f"No smoke workspace at TREESAE_ROOT={os.environ.get('TREESAE_ROOT')}: run `make test` "
                    "(or `make smoke` and set TREESAE_ROOT=build/smoke).")


def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_second_repro_does_nothing():
    out = subprocess.run(["dvc", "repro"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "Running stage" not in out and "up to date" in out, out


def test_caches_are_complete_and_intact():
    p = params()
    for corpus in p["harvest"]["corpora"]:
        cache = ActivationCache.open(ROOT / "data/activations" / corpus, verify=True,
                                     expect={"model": p["model"]["name"], "layers": p["harvest"]["layers"]})
        assert cache.meta["n_contexts"] == p["harvest"]["max_contexts"]
        assert cache.activations(p["harvest"]["layers"][0], "heldout").shape[1] == 576


def test_harvest_reproduces_bit_identical_activations(real_model):
    p = params()
    cache = ActivationCache.open(ROOT / "data/activations/brown")
    toks = torch.from_numpy(np.asarray(cache.tokens[: p["harvest"]["batch_size"]])).long()
    again = H.forward_layers(real_model, toks, cache.meta["layers"])
    for L, acts in again.items():
        assert np.array_equal(acts.to(torch.float16).numpy(), cache.layer(L)[: len(toks)])


def test_position_zero_is_the_attention_sink():
    s = pd.read_csv(ROOT / "data/activations/brown/summary.csv")
    layer6 = s[s.layer == 6].set_index("position").norm_median
    assert layer6[0] > 3 * layer6.iloc[1:].median()
