"""A profile's workspace: a directory with its own params.yaml, DVC state and data/.

``python -m treesae.workspace smoke build/smoke`` copies dvc.yaml, notebooks/, src/ and the paper template into
``build/smoke``, writes the merged params.yaml and runs DVC there with ``TREESAE_ROOT`` set, so the
smoke pipeline never touches the paper's data. Its stages run its own copy of src/ (``own_code``), the code its
DVC state hashes; ``make smoke`` copies the repository's code in again before each run. The params.yaml header (``paths.WORKSPACE_HEADER``) marks the
directory as a workspace: a notebook opened inside it uses it without ``TREESAE_ROOT``. A new workspace is its
own git repository with a first commit (the profile as made), so DVC's comparisons work there: ``dvc params
diff``, ``dvc metrics diff``, ``dvc exp run -S ...`` / ``dvc exp show``, ``dvc plots diff`` (DVC keeps the
cached outputs out of git; commit a finished run to compare the next one against it). ``python -m treesae.workspace --changed BEFORE AFTER`` lists
the stage outputs whose hash differs between two dvc.lock files (``make determinism``). ``--harvest-from SRC``
takes the harvest of another workspace (or the repository) whose harvest section and code are the same
(``reuse_stage``): DVC checks that before anything is kept, so a profile that changes only the later stages
skips the 26-minute harvest. ``--reuse-from SRC`` does the same for each stage of ``REUSABLE`` (the harvest and
stage 08, which no LM setting changes) where it is the same, lets the others run, and offers stage 02 the SAEs SRC
trained (``offer_trained``): it loads those whose training key is its own.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from . import config, dvcplots, paths


COPIED_DIRS = ("notebooks", "src")
COPIED_FILES = ("dvc.yaml", "paper/template.md", "figures/README.md", ".dvc/plots/runs.json", "experiments/README.md")
MADE = COPIED_DIRS + COPIED_FILES


def make(profile: str, dest) -> Path:
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    run = lambda *cmd: subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    new_repo = not (dest / ".git").exists()
    if new_repo:
        run("git", "init", "-q")
    if not (dest / ".dvc").exists():
        run("dvc", "init", "-q")
        run("dvc", "config", "core.analytics", "false")
    elif "no_scm" in (dest / ".dvc" / "config").read_text():  # made by an older version with dvc init --no-scm
        run("dvc", "config", "--unset", "core.no_scm")
        if not (dest / ".dvc" / ".gitignore").exists():  # what dvc init writes: the cache stays out of git
            (dest / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    for d in COPIED_DIRS:
        shutil.rmtree(dest / d, ignore_errors=True)
        shutil.copytree(paths.REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints"))
    for f in COPIED_FILES:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths.REPO / f, dest / f)
    own_code(dest / "dvc.yaml")
    config.write_profile(profile, dest / "params.yaml")
    no_experiments(dest / "params.yaml")
    ignore = ["__pycache__/", "*.egg-info/", ".ipynb_checkpoints/", "dvc.lock.before", "/data/.partial/", "/data/raw/",
              "/build/"]  # executed notebooks (and their scratch copies), the browser, params.ok
    for p in stage_outputs(dest / "dvc.yaml"):  # an output directory that holds a file made here keeps that file
        keep = [f for f in MADE if f.startswith(p + "/")]
        ignore += [f"/{p}/*", *(f"!/{f}" for f in keep)] if keep else [f"/{p}"]
    (dest / ".gitignore").write_text("".join(f"{line}\n" for line in ignore))
    page = paths.REPO / dvcplots.PAGE
    if page.exists():  # made by `make setup`: dvc plots show renders offline here too
        dvcplots.configure(dest, page)
    if new_repo:  # what this function wrote; the stages' outputs are gitignored above
        meta = [f for f in (".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore") if (dest / f).exists()]
        run("git", "add", "--", *meta, *MADE, "params.yaml")
        run("git", "-c", "user.name=treesae", "-c", "user.email=treesae@localhost", "commit", "-q", "--no-verify",
            "-m", f"workspace for profile {profile}")
    return dest


def no_experiments(params_yaml: Path) -> None:
    """A workspace's paper is its own run's: ``paper.experiments`` (what the repository's paper is assembled from) is
    emptied, so an experiment's workspace never renders, or depends on, published experiments."""
    text = Path(params_yaml).read_text()
    params = config.load_yaml(text, str(params_yaml))  # YAML 1.2, as DVC reads it (PyYAML reads 5e-05 as a string)
    if (params.get("paper") or {}).get("experiments"):
        params["paper"]["experiments"] = []
        Path(params_yaml).write_text(text.splitlines(keepends=True)[0] + config.dump_yaml(params))


RUN_OWN_CODE = "env PYTHONPATH=src "  # a stage's command in a workspace: its own copy of src/ comes first on sys.path


def own_code(dvc_yaml: Path) -> None:
    """Prefix every stage command with ``RUN_OWN_CODE``, so a workspace runs the code that DVC hashes there (its
    copy of src/), not the repository's editable install: an edit on either side then agrees with ``dvc status``."""
    text = Path(dvc_yaml).read_text()
    Path(dvc_yaml).write_text(text.replace("    cmd: python ", f"    cmd: {RUN_OWN_CODE}python "))


def reuse_stage(dest, src, stage: str = "harvest") -> None:
    """Give workspace ``dest`` the outputs of ``stage`` from ``src`` (a workspace or the repository) instead of
    rerunning it: the stages before it run, the outputs are copied (outputs ``dest`` has are kept), DVC hashes the
    stage's code, params and outputs in ``dest`` (``dvc commit``), and the result must equal ``src``'s lock entry.
    Any difference restores ``dest``'s lock, removes the copies and raises, naming what differs."""
    dest, src = Path(dest).resolve(), Path(src).resolve()
    entry = (yaml.safe_load((src / "dvc.lock").read_text()) or {}).get("stages", {}).get(stage)
    if entry is None:
        raise ValueError(f"{src}/dvc.lock has no '{stage}' stage: run it there first, or drop --harvest-from")
    absent = [o["path"] for o in entry.get("outs", []) if not (src / o["path"]).exists() and not (dest / o["path"]).exists()]
    if absent:  # locked (e.g. a fresh clone's committed dvc.lock) but never run on this machine
        raise ValueError(f"{src} has no {', '.join(absent)} ({stage}'s outputs): run the stage there first")
    env = {**os.environ, "TREESAE_ROOT": str(dest)}
    dvc = lambda *a: subprocess.run(["dvc", *a], cwd=dest, env=env, check=True, capture_output=True, text=True)  # noqa: E731
    stages = yaml.safe_load((dest / "dvc.yaml").read_text())["stages"]
    deps = set(stages[stage].get("deps", []))
    upstream = [n for n, st in stages.items() if n != stage and deps & {_path(o) for o in st.get("outs", [])}]
    if upstream:  # the stages whose outputs are its deps (validate)
        dvc("repro", "--single-item", *upstream)
    lock_path = dest / "dvc.lock"
    before = lock_path.read_text() if lock_path.exists() else None
    copied = []
    for o in entry.get("outs", []):
        if not (dest / o["path"]).exists():
            (dest / o["path"]).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (src / o["path"]).is_dir() else shutil.copy2)(src / o["path"], dest / o["path"])
            copied.append(o["path"])
    dvc("commit", "--force", stage)  # DVC hashes dest's code, params and outputs into dest's lock (and cache)
    got = yaml.safe_load(lock_path.read_text())["stages"][stage]
    key = lambda e: {k: sorted(e[k], key=lambda d: d["path"]) if isinstance(e[k], list) else  # noqa: E731
                     e[k].removeprefix(RUN_OWN_CODE) if k == "cmd" else e[k] for k in e}  # the repository's: no prefix
    if key(got) != key(entry):
        lock_path.write_text(before) if before is not None else lock_path.unlink()  # as it was
        for p in copied:
            shutil.rmtree(dest / p) if (dest / p).is_dir() else (dest / p).unlink()
        diff = sorted(k for k in set(got) | set(entry) if key(got).get(k) != key(entry).get(k))
        raise ValueError(f"{src}'s {stage} is not this workspace's ({', '.join(diff)} differ); run the stage here "
                         "instead (dvc repro)")


def offer_trained(dest, src) -> int:
    """Copy into workspace ``dest`` every SAE that ``src``'s stage 02 recorded as trained (``data/.partial/trained``:
    its key and the sha256 of each file), with its curve and record, where ``dest`` has no record of that name, and
    ``src``'s evaluation rows (keyed by the SAE's weights). Stage 02 loads an offered SAE only when its key (code,
    settings, init seed, harvest) is the one it would train with (``stages.train._trained``) and trains the others,
    so an experiment pays only for the SAEs the default run has not trained. Returns how many SAEs were offered."""
    s, d = Path(src).resolve() / "data", Path(dest).resolve() / "data"
    n = 0
    for rec in sorted((s / ".partial" / "trained").glob("*.json")):
        files = json.loads(rec.read_text()).get("files", {})
        if (d / ".partial" / "trained" / rec.name).exists() or not files or not all((s / f).is_file() for f in files):
            continue
        for f in [*files, f".partial/trained/{rec.name}"]:  # the record last: a half copy has none and is retrained
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s / f, d / f)
        n += 1
    for row in sorted((s / ".partial" / "eval").glob("*.json")):
        if not (d / ".partial" / "eval" / row.name).exists():
            (d / ".partial" / "eval").mkdir(parents=True, exist_ok=True)
            shutil.copy2(row, d / ".partial" / "eval" / row.name)
    return n


def _path(out) -> str:
    """The path of a dvc.yaml ``outs`` entry (a string, or a one-key mapping to its options)."""
    return out if isinstance(out, str) else next(iter(out))


REUSABLE = ("harvest", "synthetic")  # the stages a profile often shares with the default run (--reuse-from)


def stage_outputs(dvc_yaml) -> list[str]:
    """Paths of the stages' ``outs`` (data, SAEs, executed notebooks, figures) except the small ones a run is
    compared by (paper/, every ``metrics.json``, the files dvc.yaml's top-level ``plots`` read): those stay in
    the workspace's git for ``dvc metrics diff`` / ``dvc plots diff``; the rest stay out, so ``git add -A`` is
    safe at any time."""
    spec = yaml.safe_load(Path(dvc_yaml).read_text())
    plotted = {f for p in spec.get("plots", []) for d in p.values() for f in (d.get("y") or {})}
    outs = [_path(o) for st in spec["stages"].values() for o in st.get("outs", [])]
    return [o for o in outs if o not in plotted and not o.startswith("paper/") and not o.endswith("/metrics.json")]


def changed_outputs(before, after, ignore=("build/notebooks/",)) -> list[str]:
    """Outputs of the stages in dvc.lock ``after`` whose hash differs from (or is missing in) dvc.lock
    ``before``; executed notebooks (timestamps, durations) are ignored."""

    def outs(lock):
        stages = yaml.safe_load(Path(lock).read_text())["stages"]
        return {o["path"]: o.get("md5") for st in stages.values() for o in st.get("outs", [])
                if not o["path"].startswith(tuple(ignore))}
    old, new = outs(before), outs(after)
    return sorted(p for p in new if old.get(p) != new[p])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--changed":
        diff = changed_outputs(sys.argv[2], sys.argv[3])
        print("\n".join(f"changed: {p}" for p in diff) or "every output came back bit for bit")
        sys.exit(1 if diff else 0)
    args, opts = sys.argv[1:], {}
    for flag in ("--harvest-from", "--reuse-from"):
        if flag in args[:-1]:
            opts[flag] = args[args.index(flag) + 1]
            del args[args.index(flag):args.index(flag) + 2]
    if len(args) != 2:
        sys.exit("usage: python -m treesae.workspace PROFILE DEST [--harvest-from SRC | --reuse-from SRC] "
                 "| --changed BEFORE_LOCK AFTER_LOCK")
    print(make(*args))
    if "--harvest-from" in opts:  # the harvest must be the same
        reuse_stage(args[1], opts["--harvest-from"])
        print(f"harvest taken from {opts['--harvest-from']} (dvc status: up to date)")
    for stage in REUSABLE if "--reuse-from" in opts else ():  # each where it is the same, else it runs here
        try:
            reuse_stage(args[1], opts["--reuse-from"], stage)
            print(f"{stage} taken from {opts['--reuse-from']}")
        except ValueError as e:
            print(f"{stage} runs here: {e}")
    if "--reuse-from" in opts:
        n = offer_trained(args[1], opts["--reuse-from"])
        print(f"{n} SAEs offered from {opts['--reuse-from']}: stage 02 loads those trained by the same code with the same "
              "settings on the same harvest, and trains the rest")
