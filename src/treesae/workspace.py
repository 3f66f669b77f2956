"""A profile's workspace: a directory with its own params.yaml, DVC state and data/.

``python -m treesae.workspace smoke build/smoke`` copies dvc.yaml, notebooks/, src/ and the paper template into
``build/smoke``, writes the merged params.yaml and runs DVC there with ``TREESAE_ROOT`` set, so the
smoke pipeline never touches the paper's data.
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


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m treesae.workspace PROFILE DEST")
    print(make(sys.argv[1], sys.argv[2]))
