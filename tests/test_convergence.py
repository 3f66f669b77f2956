"""Convergence diagnostics and the ``converged`` verdict: false for planted undertrained SAEs (including a
short run that has stopped improving), true for a trained one; each threshold maps planted numbers."""
import math
import sys
from pathlib import Path

import pytest
import torch

from treesae.convergence import THRESHOLDS, Monitor, converged
from treesae.saes import build
from treesae.train import TrainConfig, train_sweep

sys.path.insert(0, str(Path(__file__).parent / "saes"))
from synthetic import planted_dictionary  # noqa: E402

GOOD = dict(fvu_gain_last_quarter=0.01, dec_stability=0.995, fvu_gap=0.01, init_frac_above=0.1, l0_rel_error=0.01)


@pytest.mark.parametrize("key, bad", [("fvu_gain_last_quarter", 0.03), ("dec_stability", 0.97), ("fvu_gap", 0.06),
                                      ("fvu_gap", -0.06), ("init_frac_above", 0.6), ("l0_rel_error", 0.06),
                                      ("dec_stability", math.nan), ("fvu_gain_last_quarter", None)])
def test_each_threshold_can_fail(key, bad):
    assert converged(GOOD)
    assert not converged({**GOOD, key: bad})


def test_l0_counts_only_where_k_fixes_it():
    assert converged({k: v for k, v in GOOD.items() if k != "l0_rel_error"})
    assert set(THRESHOLDS) == set(GOOD)


@pytest.fixture(scope="module")
def world():
    X, _, _ = planted_dictionary(d_in=32, n_features=64, k=4, n_samples=116_000, seed=0)
    return X[:100_000], X[100_000:]


def _train(world, n_tokens):
    X, H = world
    sae = build("topk", d_in=32, d_sae=64, k=4, seed=100)
    cfg = TrainConfig(n_tokens=n_tokens, batch_size=512, lr=3e-3, lr_schedule="constant", log_every=100,
                      checkpoint_every=0, threads=1)
    monitor = Monitor(cfg.n_steps, H)
    train_sweep({"a": sae}, X, cfg, progress=False, callback=monitor)
    return monitor.diagnostics({"a": sae}, X[::6][:16_000])["a"]


def test_a_trained_sae_converges(world):
    d = _train(world, 800_000)  # 1,562 steps; measured: gain 1.3%, stability 0.999, gap 1.9%, 2% of rows near init
    assert converged(d), d


@pytest.mark.parametrize("n_tokens", [5_000, 30_000])
def test_an_undertrained_sae_does_not(world, n_tokens):
    d = _train(world, n_tokens)
    assert not converged(d), d
    if n_tokens == 5_000:  # 10 steps: no longer improving or moving, but still at its init
        assert d["init_frac_above"] > 0.9


def test_the_snapshot_survives_a_restart(world, tmp_path):
    X, H = world
    sae = build("topk", d_in=32, d_sae=64, k=4, seed=100)
    m = Monitor(8, H, tmp_path / "monitor.pt")
    m(6, 0, {"a": sae})
    again = Monitor(8, H, tmp_path / "monitor.pt")
    assert torch.equal(again.snap["a"]["W_dec"], sae.W_dec.detach()) and "dec_stability" in again.diagnostics({"a": sae}, H)["a"]


def test_the_75_percent_fvu_uses_a_calibrated_copy(world):
    X, H = world
    sae = build("batchtopk", d_in=32, d_sae=64, k=4, seed=100)
    before = sae.threshold.clone()
    m = Monitor(4, H, train_sample=X[:4096])
    m(3, 0, {"a": sae})
    assert torch.equal(sae.threshold, before) and math.isfinite(float(m.snap["a"]["fvu"]))
