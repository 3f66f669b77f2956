"""Experiments: named runs of the language-model design, each one profile that fits one working session, published
as small outputs that the paper is assembled from.

An experiment is ``profiles/<name>.yaml`` run in its workspace ``build/<name>`` (``treesae.workspace``; the harvest
and stage 08 are taken from the repository when their sections are the default's). ``publish`` copies the run's
small outputs to ``experiments/<name>/``: ``numbers.json``, ``runs.csv``, ``training_curves.csv``, ``figures/``
and the ``dvc.lock`` and ``params.yaml`` that produced them. The paper stage
(``treesae.stages.paper``) renders one paper from the default run and every experiment in ``paper.experiments``,
each section naming the experiment its numbers come from. ``status`` says which experiments the current code and
params would change: it builds the experiment's workspace from the repository as it is now, puts the published
lock in it and asks ``dvc status`` which stages' code or params differ (data are not needed for that); the stages
of ``IGNORED`` do not count, so editing the paper's template or another stage's params reruns no experiment.

    python -m treesae.experiments status [NAME ...]       # exit 1 when any is stale or unpublished
    python -m treesae.experiments stale                    # the names of paper.experiments that are stale
    python -m treesae.experiments publish NAME [WORKSPACE]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import config, paths, workspace
from .io import atomic_dir

DIR = "experiments"  # the paper stage reads experiments/<name>/ (treesae.stages.paper.EXPERIMENTS)
FILES = {"paper/numbers.json": "numbers.json", "paper/runs.csv": "runs.csv",
         "paper/training_curves.csv": "training_curves.csv", "dvc.lock": "dvc.lock", "params.yaml": "params.yaml"}
# stages that do not count: validate writes the same marker whatever passes (each stage's own params are checked in
# its own entry); the paper takes stage 08 (synthetic) from the default run only; paper and browser publish nothing
IGNORED = ("validate", "synthetic", "paper", "browser")
# a stage is stale when one of these deps changed; data deps are missing in status' scratch workspace by design
CODE_DEPS = ("src/", "notebooks/", "paper/template.md")


def folder(name: str, root: Path | None = None) -> Path:
    return Path(root or paths.REPO) / DIR / name


def publish(name: str, ws=None, dest_root: Path | None = None, require_clean: bool = True) -> Path:
    """Copy experiment ``name``'s small outputs from its workspace (default ``build/<name>``) to
    ``experiments/<name>/``, replacing what was there; refuses a workspace whose pipeline is not up to date
    (``require_clean``)."""
    ws = Path(ws or paths.REPO / "build" / name).resolve()
    params = config.load_yaml((ws / "params.yaml").read_text()) if (ws / "params.yaml").exists() else None
    if params is None or params.get("profile") != name:
        raise ValueError(f"{ws} is not the workspace of experiment {name!r} (its params.yaml names profile "
                         f"{(params or {}).get('profile')!r}); make it with `make experiment EXP={name}`")
    missing = [f for f in FILES if not (ws / f).exists()] + ([] if (ws / "figures").is_dir() else ["figures/"])
    if missing:
        raise FileNotFoundError(f"{ws} has no {', '.join(missing)}: run its pipeline first (`make experiment EXP={name}`)")
    st = subprocess.run(["dvc", "status", "--json"], cwd=ws, capture_output=True, text=True,
                        env={**os.environ, "TREESAE_ROOT": str(ws)}) if require_clean else None
    if st is not None and (st.returncode or json.loads(st.stdout or "{}")):
        raise ValueError(f"{ws}: `dvc status` is not clean ({(st.stdout or st.stderr).strip()[:300]}); "
                         f"finish the run (`cd {ws} && dvc repro`) before publishing it")
    dest = folder(name, dest_root)
    with atomic_dir(dest) as tmp:  # the folder is replaced whole: nothing of an earlier publication stays
        for src, dst in FILES.items():
            shutil.copyfile(ws / src, tmp / dst)
        (tmp / "figures").mkdir()
        for f in sorted((ws / "figures").glob("*.png")):
            shutil.copyfile(f, tmp / "figures" / f.name)
    return dest


def status(name: str, root: Path | None = None) -> dict:
    """``{"state": "up to date" | "stale" | "not published", "stages": {stage: [what changed]}}``: the published
    lock of ``name`` against the code and params the repository would run it with now."""
    lock = folder(name, root) / "dvc.lock"
    if not lock.exists():
        return {"state": "not published", "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ws = workspace.make(name, Path(tmp) / name)
        shutil.copy2(lock, ws / "dvc.lock")
        out = subprocess.run(["dvc", "status", "--json"], cwd=ws, capture_output=True, text=True, check=True,
                             env={**os.environ, "TREESAE_ROOT": str(ws)}).stdout
    changed = {}
    for stage, items in json.loads(out or "{}").items():
        if stage in IGNORED:
            continue
        why = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                why.append(str(item))  # "changed command", "always changed"
                continue
            why += [f"{p}: {s}" for p, s in item.get("changed deps", {}).items()
                    if p.startswith(CODE_DEPS + ("params",)) and s != "deleted"]  # deleted: data not made here
        if why:
            changed[stage] = sorted(set(why))
    return {"state": "stale" if changed else "up to date", "stages": changed}


def main(argv: list[str]) -> int:
    if argv[:1] == ["publish"] and len(argv) in (2, 3):
        print(publish(*argv[1:]))
        return 0
    if argv == ["stale"]:  # the experiments of paper.experiments that `make paper` reruns
        names = (config.read_params(paths.REPO).get("paper") or {}).get("experiments") or []
        print("\n".join(n for n in names if status(n)["state"] != "up to date"))
        return 0
    if argv[:1] == ["status"]:
        names = argv[1:] or sorted(p.name for p in (paths.REPO / DIR).iterdir() if p.is_dir())
        bad = 0
        for n in names:
            s = status(n)
            bad += s["state"] != "up to date"
            print(f"{n}: {s['state']}" + "".join(f"\n  {st}: {', '.join(w)}" for st, w in s["stages"].items()))
        return 1 if bad else 0
    print("usage:\n" + "\n".join(line for line in __doc__.splitlines() if line.startswith("    python -m")), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
