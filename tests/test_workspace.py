"""``make determinism``'s comparison of two dvc.lock files."""
import yaml

from treesae.workspace import changed_outputs


def _lock(path, **md5):
    outs = [{"path": p.replace("__", "/"), "md5": h} for p, h in md5.items()]
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"s": {"cmd": "x", "outs": outs}}}))
    return path


def test_changed_outputs(tmp_path):
    a = _lock(tmp_path / "a.lock", data__t__m_csv="1", data__saes="2.dir", build__notebooks__02_ipynb="3")
    same = _lock(tmp_path / "b.lock", data__t__m_csv="1", data__saes="2.dir", build__notebooks__02_ipynb="9")
    assert changed_outputs(a, same) == []  # an executed notebook's timings do not count
    moved = _lock(tmp_path / "c.lock", data__t__m_csv="1", data__saes="4.dir", data__new="5")
    assert changed_outputs(a, moved) == ["data/new", "data/saes"]


def test_workspace_is_a_git_repo_where_dvc_compares(tmp_path):
    """A new workspace has a first commit, so `dvc params diff` reports a changed parameter (with `dvc init
    --no-scm` it failed: "Only supported for Git repositories"); remaking it keeps its history."""
    import subprocess

    from treesae.workspace import make
    ws = make("smoke", tmp_path / "ws")
    git = lambda *a: subprocess.run(["git", *a], cwd=ws, check=True, capture_output=True, text=True).stdout
    assert git("log", "--format=%s").strip() == "workspace for profile smoke"
    assert git("status", "--porcelain") == ""  # everything made is committed
    assert {"dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots/runs.json"} <= set(git("ls-files").split())
    from treesae import dvcplots, paths
    if (paths.REPO / dvcplots.PAGE).exists():  # after make setup: the plot pages render offline here too
        assert str(paths.REPO / dvcplots.PAGE) in (ws / ".dvc" / "config.local").read_text()
    (ws / "data" / "activations").mkdir(parents=True)  # a stage's data: never for git, whatever a user adds
    (ws / "data" / "activations" / "x.npy").write_bytes(b"0")
    assert git("status", "--porcelain") == ""
    (ws / "data" / "train").mkdir(parents=True)  # what runs are compared by: for git
    (ws / "data" / "train" / "metrics.json").write_text("{}")
    assert git("status", "--porcelain", "-uall").split() == ["??", "data/train/metrics.json"]
    p = ws / "params.yaml"
    p.write_text(p.read_text().replace("lr: 0.001", "lr: 0.002", 1))
    out = subprocess.run(["dvc", "params", "diff"], cwd=ws, check=True, capture_output=True, text=True).stdout
    assert "lr" in out and "0.001" in out and "0.002" in out
    make("smoke", ws)
    assert len(git("log", "--format=%s").splitlines()) == 1


def test_a_workspace_runs_the_code_it_hashes(tmp_path):
    """An edit to the workspace's copy of the code makes its stage stale (`dvc status`) and is what the stage runs;
    the repository's code (the editable install) is not."""
    import os
    import subprocess

    from treesae.workspace import make
    ws = make("smoke", tmp_path / "ws")
    env = {**os.environ, "TREESAE_ROOT": str(ws)}
    dvc = lambda *a: subprocess.run(["dvc", *a], cwd=ws, env=env, check=True, capture_output=True, text=True).stdout  # noqa: E731
    dvc("repro", "validate")
    assert "validate" not in dvc("status", "validate")
    code = ws / "src/treesae/stages/validate.py"
    code.write_text(code.read_text() + "\nprint('RAN', __file__)\n")
    assert "changed deps" in dvc("status", "validate")
    assert f"RAN {code}" in dvc("repro", "validate")


def test_a_workspace_paper_uses_no_experiments(tmp_path):
    """The repository's paper is assembled from the experiments of paper.experiments; a workspace's paper (an
    experiment's own run among them) is its run's alone."""
    from treesae.workspace import no_experiments
    p = tmp_path / "params.yaml"
    p.write_text("# Generated from params.yaml\nprofile: x\ntrain: {lr_end: 5e-05}\npaper:\n  experiments: [treesae, frontier]\n")
    no_experiments(p)
    assert p.read_text().splitlines()[0] == "# Generated from params.yaml"
    from treesae.config import load_yaml  # as DVC reads it: 5e-05 stays a number
    assert load_yaml(p.read_text()) == {"profile": "x", "train": {"lr_end": 5e-05}, "paper": {"experiments": []}}
