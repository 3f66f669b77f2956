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
    assert pip == ["--extra-index-url https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu",
                   "-r requirements.lock.txt", "-e ."]  # the CPU build: PyPI's Linux torch is the CUDA one
    make = (REPO / "Makefile").read_text()
    assert "pip install -q torch==2.13.0" in make and "-r requirements.lock.txt" in make


def test_this_environment_is_the_locked_one():
    assert version("torch").startswith("2.13.0")
    drift = [f"{r.name}: locked {r.specifier}, installed {version(r.name)}" for r in lock() if version(r.name) not in r.specifier]
    assert not drift, "requirements.lock.txt and the venv disagree (rerun `make setup`):\n" + "\n".join(drift)


def test_pyproject_declares_every_package_the_library_imports():
    """``pip install .`` alone must give a working library: every third-party module imported anywhere in
    src/treesae belongs to a distribution named in pyproject's dependencies, or vendored by requirements.vendor.txt
    (installed without its dependencies by make setup: SAEBench, whose pins the lock cannot hold)."""
    import ast
    import sys
    import tomllib
    from importlib.metadata import packages_distributions
    from packaging.utils import canonicalize_name
    declared = {canonicalize_name(Requirement(d).name)
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    declared |= {canonicalize_name(Requirement(line.split()[0]).name)
                 for line in (REPO / "requirements.vendor.txt").read_text().splitlines() if line.strip()}
    dists = {**packages_distributions(), "sae_bench": ["sae-bench"]}  # vendored: not in the venv's metadata
    missing = {}
    for f in (REPO / "src" / "treesae").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"treesae"}:
                if not {canonicalize_name(d) for d in dists.get(top, [top])} & declared:
                    missing.setdefault(top, f.relative_to(REPO).as_posix())
    assert not missing, f"imported but not in pyproject.toml's dependencies (module: first file): {missing}"
