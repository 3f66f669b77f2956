"""Each DVC stage lists exactly the treesae code its command runs: editing a module reruns the stages
that import it and no other. The code a stage runs is its entry module (``treesae.notebook`` and the
notebook's code cells, or ``python -m treesae.X``) and what these import (``treesae.imports.closure``). Only
.py files are compared: other files under src/ (the browser's static app, read through importlib.resources)
are data.
"""
import ast
import json
from pathlib import Path

import pytest
import yaml

from treesae.imports import closure as _closure, imported

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def closure(roots: set[str], stop: set[str]) -> set[Path]:
    return {p.relative_to(ROOT) for p in _closure(roots, frozenset(stop))}


def py_files(path: Path) -> set[Path]:
    return {p.relative_to(ROOT) for p in (path.rglob("*.py") if path.is_dir() else [path]) if p.suffix == ".py"}


def runs(stage: dict) -> set[Path]:
    """The treesae files that the stage's command executes."""
    module, *args = stage["cmd"].removeprefix("python -m ").split()
    roots = imported(ast.Module([ast.Import([ast.alias(module)])], []))
    for nb in args:  # the notebook's code cells, without IPython's magics
        cells = [c["source"] for c in json.loads((ROOT / nb).read_text())["cells"] if c["cell_type"] == "code"]
        code = "\n".join(l for c in cells for l in "".join(c).splitlines() if not l.lstrip().startswith(("%", "!")))
        roots |= imported(ast.parse(code))
    # The runner's params check (treesae.stages.validate) only passes or raises; build/params.ok, the output of the
    # validate stage that depends on its code, stands for it. Else every stage would import every stage's params.
    return closure(roots, {"treesae.stages.validate"} if "build/params.ok" in stage["deps"] else set())


def fingerprinted(name: str) -> set[Path]:
    """Files stage 08 reads as data: it hashes ``stages.synthetic.CODE`` to tell whether a saved score is current."""
    if name != "synthetic":
        return set()
    code = next(n.value for n in ast.parse((SRC / "treesae/stages/synthetic.py").read_text()).body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CODE")
    return set().union(*(py_files(SRC / "treesae" / f) for f in ast.literal_eval(code)))


@pytest.mark.parametrize("name", STAGES)
def test_stage_lists_exactly_the_code_it_runs(name):
    stage = STAGES[name]
    listed = set().union(*(py_files(ROOT / d) for d in stage["deps"] if d.startswith("src/")))
    need = runs(stage) | fingerprinted(name)
    assert listed == need, (f"stage {name}: dvc.yaml misses {sorted(map(str, need - listed))}; "
                            f"lists {sorted(map(str, listed - need))}, which it does not run")


def test_library_never_imports_a_stage():
    """Stage code lives in ``treesae.stages``; the library (architectures, trainer, analyses, cache, model,
    corpora, metrics, plotting) never imports it. ``treesae.notebook``, every stage's runner, is the exception."""
    offenders = {}
    for f in (SRC / "treesae").rglob("*.py"):
        module = ".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        if module.startswith("treesae.stages") or module == "treesae.notebook":
            continue
        bad = sorted(n for n in imported(ast.parse(f.read_text()), module) if n.startswith("treesae.stages"))
        if bad:
            offenders[module] = bad
    assert not offenders, f"library modules import stage code: {offenders}"


@pytest.mark.parametrize("name", ["numbers", "figures", "paper"])
def test_table_reading_stages_run_no_torch_no_sae_code_no_trainer(name):
    """The numbers, figures and paper stages read tables only: editing an SAE, the trainer or an analysis they do
    not call leaves them up to date, and they start without torch."""
    files = {str(p) for p in runs(STAGES[name])}
    banned = [f for f in files if f.startswith(("src/treesae/saes/", "src/treesae/stages/train"))
              or f in ("src/treesae/train.py", "src/treesae/model.py", "src/treesae/metrics.py")
              or f.startswith("src/treesae/analysis/") and f not in ("src/treesae/analysis/__init__.py",
                                                                        "src/treesae/analysis/factors.py")]
    assert not banned, banned


def test_table_reading_stages_import_no_torch():
    import subprocess
    import sys
    code = ("import sys, treesae.stages.numbers, treesae.stages.figures, treesae.stages.paper; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformer_lens', 'sae_lens')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
