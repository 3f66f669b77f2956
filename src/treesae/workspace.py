"""A profile's workspace: a directory with its own params.yaml, DVC state and data/.

``python -m treesae.workspace smoke build/smoke`` copies dvc.yaml, notebooks/, src/ and the paper template into
``build/smoke``, writes the merged params.yaml and runs DVC there with ``TREESAE_ROOT`` set, so the
smoke pipeline never touches the paper's data. The params.yaml header (``paths.WORKSPACE_HEADER``) marks the
directory as a workspace: a notebook opened inside it uses it without ``TREESAE_ROOT``. ``python -m treesae.workspace --changed BEFORE AFTER`` lists
the stage outputs whose hash differs between two dvc.lock files (``make determinism``).
"""
import shutil
import subprocess
import sys
from pathlib import Path

from . import config, paths


def make(profile: str, dest) -> Path:
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for d in ("notebooks", "src"):
        shutil.rmtree(dest / d, ignore_errors=True)
        shutil.copytree(paths.REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints"))
    for f in ("dvc.yaml", "paper/template.md", "figures/README.md"):
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(paths.REPO / f, dest / f)
    config.write_profile(profile, dest / "params.yaml")
    if not (dest / ".dvc").exists():
        subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=dest, check=True)
        subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=dest, check=True)
    return dest


def changed_outputs(before, after, ignore=("build/notebooks/",)) -> list[str]:
    """Outputs of the stages in dvc.lock ``after`` whose hash differs from (or is missing in) dvc.lock
    ``before``; executed notebooks (timestamps, durations) are ignored."""
    import yaml

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
    if len(sys.argv) != 3:
        sys.exit("usage: python -m treesae.workspace PROFILE DEST | --changed BEFORE_LOCK AFTER_LOCK")
    print(make(sys.argv[1], sys.argv[2]))
