"""Experiments: publishing a workspace's small outputs and telling which published experiments are stale."""
import json
import shutil

import pytest
import yaml

from treesae import experiments, paths


def _smoke_workspace():
    ws = paths.root()
    params = ws / "params.yaml"
    if ws == paths.REPO or not (ws / "dvc.lock").exists() or yaml.safe_load(params.read_text()).get("profile") != "smoke":
        pytest.skip("needs the smoke workspace (TREESAE_ROOT=build/smoke after `make smoke`)")
    return ws


def test_publish_copies_the_small_outputs_and_refuses_another_profile(tmp_path):
    ws = _smoke_workspace()  # other tests may have left it mid-run: its cleanliness is the next test's
    dest = experiments.publish("smoke", ws, tmp_path, require_clean=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*experiments.FILES.values(), "figures"])
    assert (dest / "dvc.lock").read_bytes() == (ws / "dvc.lock").read_bytes()
    assert {f.name for f in (dest / "figures").iterdir()} == {f.name for f in (ws / "figures").glob("*.png")}
    with pytest.raises(ValueError, match="is not the workspace of experiment 'treesae'"):
        experiments.publish("treesae", ws, tmp_path)


def test_publish_refuses_a_workspace_dvc_finds_stale(tmp_path):
    import subprocess
    ws = tmp_path / "ws"
    (ws / "paper").mkdir(parents=True)
    for f in experiments.FILES:
        (ws / f).write_text("profile: x\n" if f == "params.yaml" else "{}")
    (ws / "figures").mkdir()
    (ws / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    deps: [missing.txt]\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    with pytest.raises(ValueError, match="`dvc status` is not clean"):
        experiments.publish("x", ws, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_status_names_the_stages_a_code_or_params_change_makes_stale(tmp_path):
    """The smoke workspace was made from this code (make test), so its lock is up to date; a lock that recorded
    another version of a file stage 02 runs, or another value of one of its params, is stale there, and nowhere
    else it need not be."""
    ws = _smoke_workspace()
    folder = experiments.folder("smoke", tmp_path)
    folder.mkdir(parents=True)
    shutil.copy2(ws / "dvc.lock", folder / "dvc.lock")
    assert experiments.status("smoke", tmp_path) == {"state": "up to date", "stages": {}}
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    dep = next(d for d in lock["stages"]["train"]["deps"] if d["path"] == "src/treesae/stages/train.py")
    dep["md5"] = "0" * 32
    lock["stages"]["analysis_matching"]["params"]["params.yaml"]["matching"]["threshold"] = 0.5
    tpl = next(d for d in lock["stages"]["paper"]["deps"] if d["path"] == "paper/template.md")
    tpl["md5"] = "0" * 32  # the run's own post is not published: no experiment reruns for the template
    (folder / "dvc.lock").write_text(yaml.safe_dump(lock))
    got = experiments.status("smoke", tmp_path)
    assert got["state"] == "stale" and set(got["stages"]) == {"train", "analysis_matching"}, got
    assert got["stages"]["train"] == ["src/treesae/stages/train.py: modified"]
    assert experiments.status("nothing", tmp_path) == {"state": "not published", "stages": {}}


def test_the_paper_stage_reads_the_folder_experiments_publish_to():
    from treesae.stages import paper
    assert paper.EXPERIMENTS == experiments.DIR


def test_the_published_frontier_shows_every_flat_architecture_at_three_l0s():
    """Figure 1's caption claims a frontier: the experiment the paper takes it from has >= 3 distinct L0s for each of
    >= 3 flat architectures (the default alone has 2 architectures at one k, so this fails without one)."""
    import pandas as pd

    from treesae import config
    from treesae.registry import names
    from treesae.stages import paper
    exps = [e for e in paper.listed(config.read_params(paths.REPO))
            if len(json.loads((experiments.folder(e) / "numbers.json").read_text())["frontier.ks"]) > 1]
    assert exps, "no experiment of paper.experiments trained several k: Figure 1 would be the default's single k"
    runs = pd.read_csv(experiments.folder(exps[0]) / "runs.csv")
    flat = runs[runs.architecture.isin(names(hierarchical=False))]
    l0s = flat.groupby("architecture").l0.agg(lambda s: s.round(1).nunique())
    assert len(l0s) >= 3 and (l0s >= 3).all(), l0s.to_dict()
