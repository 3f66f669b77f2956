"""environment.yml, the Makefile and requirements.lock.txt describe one environment."""
from importlib.metadata import version

import yaml
from packaging.requirements import Requirement

from treesae.paths import REPO


def lock():
    return [Requirement(l) for l in (REPO / "requirements.lock.txt").read_text().split("\n") if l.strip() and not l.startswith("#")]


def test_conda_file_installs_what_the_makefile_installs():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    assert pip == ["torch==2.13.0", "-r requirements.lock.txt", "-e ."]
    make = (REPO / "Makefile").read_text()
    assert "pip install -q torch==2.13.0" in make and "-r requirements.lock.txt" in make


def test_this_environment_is_the_locked_one():
    assert version("torch").startswith("2.13.0")
    drift = [f"{r.name}: locked {r.specifier}, installed {version(r.name)}" for r in lock() if version(r.name) not in r.specifier]
    assert not drift, "requirements.lock.txt and the venv disagree (rerun `make setup`):\n" + "\n".join(drift)
