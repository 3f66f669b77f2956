"""Stage 02's evaluation resumes: rows kept per SAE (``eval_key``), an interrupted run recomputes only
the missing ones and writes the same metrics table."""
from types import SimpleNamespace

import pytest

from treesae import config, harvest as H, metrics
from treesae.saes import build_run
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
    saes = {r.name: build_run(r, 32, s["train"].architectures) for r in s["runs"]}
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


def test_a_streamed_train_split_trains_the_saes_of_the_full_cache(tiny_model, tiny_corpus, tmp_path, monkeypatch):
    """Over harvest.disk_budget_gb the cache holds the held-out contexts only and stage 02 streams the train
    split from the model; with one buffer (train.stream_buffer_contexts: null) it trains the same SAEs, with the
    same diagnostics and curves, as the full cache does."""
    import shutil

    from treesae import paths
    from treesae.stages import harvest as harvesting

    train = {**TRAIN, "optim": {"n_tokens": 1024, "batch_size": 32}, "stream_buffer_contexts": None}
    hp = SimpleNamespace(corpora=["tiny"], layers=[3], batch_size=5, shard_contexts=12)
    monkeypatch.setattr(sweep, "load_model", lambda name, device: tiny_model)
    out = {}
    for name, full in (("cached", True), ("streamed", False)):
        root = tmp_path / name
        monkeypatch.setenv("TREESAE_ROOT", str(root))
        shutil.copytree(tiny_corpus, paths.data("corpora", "tiny"))
        cache = H.harvest(tiny_model, tiny_corpus, paths.data("activations", "tiny"), [3], shard_contexts=12,
                          batch_size=5, summary_contexts=4, progress=False, train=full)
        assert len(cache.contexts("train")) == (32 if full else 0) and len(cache.contexts("heldout")) == 8
        model = config.ModelParams(name="tiny-rotary", threads=1)
        s = dict(model=model, harvest=hp, **sweep.check(model, hp, train))
        sweep.train_all(s, progress=False)
        d = root / "data"
        out[name] = {str(p.relative_to(d)): p.read_bytes() for p in sorted((d / "saes").rglob("*")) if p.is_file()}
        out[name] |= {str(p.relative_to(d)): p.read_bytes() for p in sorted((d / "train").rglob("*.csv"))}
    assert sorted(out["cached"]) == sorted(out["streamed"]) and len(out["cached"]) > 4
    assert [k for k in out["cached"] if out["cached"][k] != out["streamed"][k]] == []
    # the budget decides: 40 contexts x 16 tokens x 1 layer x 32 dims x 2 bytes
    assert harvesting.cache_gb([tiny_corpus], 1, 32, "float16") * 2 ** 30 == 40 * 16 * 32 * 2


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for d in ("saes", "train/curves")
            for p in sorted((root / "data" / d).rglob("*")) if p.is_file()}


def test_a_rerun_loads_what_this_code_trained_and_trains_only_what_changed(stage, monkeypatch):
    """Stage 02 reruns (an eval setting, an added run, a deleted metrics.csv) train only runs whose key changed or whose
    files are not those it recorded; what it retrains comes back byte for byte."""
    s, _, _ = stage
    root = sweep.paths.root()
    sweep.train_all(s, progress=False)
    ref = _files(root)
    real, trained = sweep._train, []
    monkeypatch.setattr(sweep, "_train", lambda setup, progress: trained.append([r.name for r in setup["runs"]])
                        or real(setup, progress))
    sweep.train_all(s, progress=False)
    assert trained == [] and _files(root) == ref
    victim = s["runs"][1].name
    (root / "data" / "saes" / victim / "sae_weights.safetensors").write_bytes(b"truncated")  # damaged: retrained
    import shutil
    shutil.rmtree(root / "data" / "saes" / s["runs"][2].name)  # deleted: retrained
    sweep.train_all(s, progress=False)
    assert trained == [[victim, s["runs"][2].name]] and _files(root) == ref
    s["optim"] = sweep.dataclasses.replace(s["optim"], lr=s["optim"].lr / 2)  # a setting that changes every SAE
    sweep.train_all(s, progress=False)
    assert len(trained[-1]) == 4 and _files(root) != ref


def test_the_train_key_covers_the_code_the_stage_runs(stage, monkeypatch):
    s, _, _ = stage
    run, meta = s["runs"][0], sweep.ActivationCache.open(sweep.paths.data("activations", "tiny")).meta
    key = sweep.train_key(s, run, meta)
    assert key == sweep.train_key(s, s["runs"][0], meta) != sweep.train_key(s, s["runs"][1], meta)
    assert sweep.train_key(s, run, {**meta, "fingerprint": "another harvest"}) != key
    monkeypatch.setattr(sweep.imports, "digest", lambda module: "edited")
    assert sweep.train_key(s, run, meta) != key
    assert "treesae/saes/topk.py" in {p.relative_to(sweep.imports.SRC).as_posix()
                                      for p in sweep.imports.closure({sweep.__name__})}


def test_evaluation_prints_a_count_and_the_time_left(stage, capsys):
    s, saes, _ = stage
    sweep.evaluate(s, saes, progress=True)
    lines = [l for l in capsys.readouterr().out.splitlines() if "nmse" in l]
    assert [l.split("]")[0].split(",")[0] for l in lines] == [f"[{i}/4" for i in range(1, 5)]
    assert all("min left]" in l for l in lines)
