"""treesae.notebook (every DVC stage's command): params reach the notebook as DVC reads them, and bad
params stop it before the notebook runs."""
import json
import os
import sys

import nbformat
import pytest

from treesae import config, notebook, paths

CHECK = 'assert isinstance(train["optim"]["lr"], float) and train["optim"]["lr"] == 0.001, train["optim"]\nprint("lr ok")'


@pytest.fixture
def root(tmp_path, monkeypatch):
    text = config.dump_yaml(config.profile_params("smoke"))
    (tmp_path / "params.yaml").write_text(text.replace("lr: 0.001", "lr: 1e-3"))  # as people write it
    assert "lr: 1e-3" in (tmp_path / "params.yaml").read_text()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("train = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(CHECK)]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "t.ipynb")
    monkeypatch.setenv("TREESAE_ROOT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(config.paths.REPO / "src"), os.environ.get("PYTHONPATH")])))
    return tmp_path


def test_yaml_1_2_numbers_reach_the_notebook(root):
    out = notebook.run("notebooks/t.ipynb")
    assert out == root / "build" / "notebooks" / "t.ipynb"
    assert "lr ok" in nbformat.read(out, 4).cells[-1].outputs[0]["text"]


def test_bad_params_stop_before_the_notebook_runs(root):
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("drop_first: true", "drop_first: yes"))
    with pytest.raises(ValueError, match=r"train\.drop_first must be true or false, got 'yes'"):
        notebook.run("notebooks/t.ipynb")
    assert not (root / "build" / "notebooks" / "t.ipynb").exists()


def test_a_stage_of_one_workspace_refuses_a_root_that_points_at_another(root, tmp_path_factory, monkeypatch):
    """`dvc repro` in workspace B with TREESAE_ROOT still at A would write A's outputs and record them in B's lock."""
    other = tmp_path_factory.mktemp("other_workspace")
    monkeypatch.setenv("DVC_ROOT", str(other))  # what dvc sets for a stage of B's dvc.yaml
    with pytest.raises(ValueError, match=rf"runs this stage for {other}, but TREESAE_ROOT={root} points at {root}.*Unset TREESAE_ROOT"):
        notebook.run("notebooks/t.ipynb")
    assert not (root / "build").exists() and not (other / "build").exists()
    monkeypatch.setenv("DVC_ROOT", str(root))
    assert notebook.run("notebooks/t.ipynb").exists()


def test_a_failed_run_keeps_the_last_good_notebook(root):
    import papermill
    good = notebook.run("notebooks/t.ipynb").read_bytes()
    nb = nbformat.read(root / "notebooks" / "t.ipynb", 4)
    nb.cells[-1].source = "raise RuntimeError('boom')"
    nbformat.write(nb, root / "notebooks" / "t.ipynb")
    with pytest.raises(papermill.PapermillExecutionError, match="boom"):
        notebook.run("notebooks/t.ipynb")
    out = root / "build" / "notebooks"
    assert (out / "t.ipynb").read_bytes() == good and "boom" in (out / "t.failed.ipynb").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["t.failed.ipynb", "t.ipynb"]


def test_the_runner_uses_this_interpreter_whatever_kernel_the_notebook_names(root, monkeypatch):
    """The DVC path needs no registered kernel."""
    nb = nbformat.read(root / "notebooks" / "t.ipynb", 4)
    nb.metadata.kernelspec.name = "no-such-kernel"
    nb.cells[-1].source = "import sys\nfrom treesae import paths\nprint(sys.executable, paths.root())"
    nbformat.write(nb, root / "notebooks" / "t.ipynb")
    out = nbformat.read(notebook.run("notebooks/t.ipynb"), 4).cells[-1].outputs[0]["text"]
    assert out.split() == [sys.executable, str(root.resolve())]


def test_notebooks_name_the_kernel_that_setup_installs(tmp_path):
    names = {p.stem: json.loads(p.read_text())["metadata"]["kernelspec"]["name"]
             for p in (paths.REPO / "notebooks").glob("*.ipynb")}
    assert names == dict.fromkeys(names, notebook.KERNEL) and len(names) == 8
    for _ in range(2):  # make setup may run it again
        spec = json.loads((notebook.install_kernel(tmp_path) / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == "Python (treesae)"
    assert [p.name for p in (tmp_path / "share" / "jupyter" / "kernels").iterdir()] == [notebook.KERNEL]
