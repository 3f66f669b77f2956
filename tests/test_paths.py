"""treesae.paths.root(): $TREESAE_ROOT, else the workspace the working directory is in, else the repository;
another checkout is refused; a stage notebook run by hand in the repository warns, in a workspace it runs silently."""
import os
import re

import nbformat
import pytest

from treesae import config, paths
from treesae.paths import REPO


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("TREESAE_ROOT", raising=False)
    monkeypatch.setattr(paths, "_warned", False)
    return monkeypatch


@pytest.fixture
def workspace(tmp_path):
    """A workspace as treesae.workspace makes it: params.yaml from config.write_profile."""
    ws = tmp_path / "build" / "smoke"
    (ws / "notebooks").mkdir(parents=True)
    (ws / "src" / "treesae").mkdir(parents=True)
    config.write_profile("smoke", ws / "params.yaml")
    return ws


def test_the_repository_from_inside_it_or_anywhere_else(env, tmp_path):
    for cwd in (REPO, REPO / "notebooks", REPO / "src" / "treesae", tmp_path):
        env.chdir(cwd)
        assert paths.root() == REPO


def test_a_workspace_from_inside_it(env, workspace):
    for cwd in (workspace, workspace / "notebooks"):
        env.chdir(cwd)
        assert paths.root() == workspace.resolve()
        assert paths.data("saes") == workspace.resolve() / "data" / "saes"
        assert config.read_params()["profile"] == "smoke"


def test_treesae_root_wins(env, workspace, tmp_path):
    env.chdir(workspace)
    env.setenv("TREESAE_ROOT", str(tmp_path))
    assert paths.root() == tmp_path.resolve()


def test_another_checkout_is_refused(env, tmp_path):
    other = tmp_path / "checkout"
    (other / "src" / "treesae").mkdir(parents=True)
    (other / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env.chdir(other / "src")
    with pytest.raises(RuntimeError, match=re.escape(f"TREESAE_ROOT={other}")):
        paths.root()
    env.setenv("TREESAE_ROOT", str(other))
    assert paths.root() == other.resolve()


def test_an_unrelated_params_yaml_is_not_a_root(env, tmp_path):
    (tmp_path / "params.yaml").write_text("lr: 1\n")
    env.chdir(tmp_path)
    assert paths.root() == REPO


def test_by_hand_in_jupyter_warns_in_the_repository_only(env, workspace, recwarn):
    env.setattr(paths, "_in_kernel", lambda: True)
    env.chdir(workspace / "notebooks")
    assert paths.root() == workspace.resolve() and not recwarn.list
    env.chdir(REPO / "notebooks")
    with pytest.warns(UserWarning, match="rewrite the published run's DVC-tracked outputs"):
        assert paths.root() == REPO
    paths.root()  # once per kernel, not once per call
    assert not recwarn.list


def _notebook(path, source):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)
    return path


def test_a_real_kernel_in_a_workspace_notebook(env, workspace):
    """In an actual Jupyter kernel started in build/<profile>/notebooks (as JupyterLab, VS Code and nbval start
    it): the workspace's root, with no warning and no opt-in."""
    from nbclient import NotebookClient
    env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    src = "import warnings\nwarnings.simplefilter('error')\nfrom treesae import paths\nprint(paths.root())"
    nb = nbformat.read(_notebook(workspace / "notebooks" / "t.ipynb", src), 4)
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(workspace / "notebooks")}}).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == str(workspace.resolve())


def test_a_workspace_made_by_treesae_workspace_is_found(env, tmp_path):
    from treesae import workspace
    ws = workspace.make("smoke", tmp_path / "ws")
    assert paths.find_root(ws / "notebooks") == ws
