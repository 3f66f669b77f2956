"""Stage 02's evaluation resumes: rows kept per SAE (``eval_key``), an interrupted run recomputes only
the missing ones and writes the same metrics table."""
from types import SimpleNamespace

import pytest

from treesae import config, harvest as H, metrics
from treesae.runs import build
from treesae.stages import train as sweep

TRAIN = {"base": dict(architecture="topk", corpus="tiny", layer=3, d_sae=64, k=4, seed=0),
         "grids": {"seed": {"seed": [1, 2]}, "frontier": {"architecture": ["topk", "relu"]}},
         "architectures": {"relu": {"l1_coef_by_k": {4: 1.0}}},
         "optim": {"n_tokens": 64, "batch_size": 32}, "eval": {"heldout_tokens": 64}}


@pytest.fixture
def stage(tiny_model, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TREESAE_ROOT", str(tmp_path))
    H.harvest(tiny_model, tiny_corpus, tmp_path / "data" / "activations" / "tiny", [3], shard_contexts=12,
              batch_size=5, summary_contexts=4, progress=False)
    model = config.ModelParams(name="tiny-rotary", threads=1)
    s = dict(model=model, **sweep.check(model, SimpleNamespace(corpora=["tiny"], layers=[3]), TRAIN))
    saes = {r.name: build(r, 32, s["train"].architectures) for r in s["runs"]}
    (tmp_path / "data" / "train").mkdir(parents=True)
    return s, saes, tmp_path / "data" / "train" / "metrics.csv"


def test_interrupted_evaluation_resumes_with_the_same_table(stage, monkeypatch, interrupt_on_call):
    s, saes, out = stage
    ref = sweep.evaluate(s, saes, progress=False)
    ref_bytes = out.read_bytes()
    assert len(ref) == 4 and ref.nmse.notna().all()
    for f in (out.parent.parent / ".partial" / "eval").iterdir():
        f.unlink()
    real = metrics.reconstruction_metrics
    monkeypatch.setattr(metrics, "reconstruction_metrics", interrupt_on_call(real, 3))
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        sweep.evaluate(s, saes, progress=False)
    assert not out.exists()
    counted = []
    monkeypatch.setattr(metrics, "reconstruction_metrics", lambda *a, **k: counted.append(1) or real(*a, **k))
    sweep.evaluate(s, saes, progress=False)
    assert len(counted) == 2 and out.read_bytes() == ref_bytes  # the two rows kept before the interruption are reused


def test_changed_weights_or_settings_are_evaluated_again(stage, monkeypatch):
    s, saes, _ = stage
    sweep.evaluate(s, saes, progress=False)
    real, counted = metrics.reconstruction_metrics, []
    monkeypatch.setattr(metrics, "reconstruction_metrics", lambda *a, **k: counted.append(1) or real(*a, **k))
    name = s["runs"][0].name
    with __import__("torch").no_grad():
        saes[name].W_dec[0, 0] += 1
    sweep.evaluate(s, saes, progress=False)
    assert len(counted) == 1
    s["train"].eval = sweep.EvalParams(heldout_tokens=32)
    sweep.evaluate(s, saes, progress=False)
    assert len(counted) == 1 + 4
