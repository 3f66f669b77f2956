"""Execute one stage notebook: ``python -m treesae.notebook notebooks/02_train.ipynb`` (every DVC stage's cmd).

It reads params.yaml as DVC does (YAML 1.2, ``treesae.config``), validates every section
(``treesae.stages.validate``), then runs the notebook with papermill into ``build/notebooks/``, injecting the
sections its parameters cell names (papermill's own ``-f`` would read the file as YAML 1.1, where
``1e-3`` is a string). The executed notebook replaces the last one only on success; a failed run is
kept beside it as ``<name>.failed.ipynb``. The kernel is this interpreter's, whatever kernel the notebook names.

``python -m treesae.notebook --install-kernel`` (``make setup``) registers this interpreter as the Jupyter kernel
``treesae`` in its own prefix (the .venv), the kernel the notebooks name.
"""
import logging
import os
import sys
from pathlib import Path

import papermill

from . import config, paths
from .stages.validate import validate

KERNEL = "treesae"


def run(notebook) -> Path:
    root = paths.root()
    dvc_root = os.environ.get("DVC_ROOT")  # set by `dvc repro` for every stage command: the dvc.yaml's project
    if dvc_root and Path(dvc_root).resolve() != root:
        why = f"TREESAE_ROOT={os.environ['TREESAE_ROOT']}" if "TREESAE_ROOT" in os.environ else "the working directory"
        raise ValueError(f"`dvc repro` runs this stage for {Path(dvc_root).resolve()}, but {why} points at {root}: the "
                         f"stage would read and write the other project's data while {dvc_root}'s dvc.lock records it. "
                         f"Unset TREESAE_ROOT or set it to {Path(dvc_root).resolve()}.")
    nb = root / notebook
    if not nb.exists():
        raise FileNotFoundError(f"{nb} not found; stage notebooks are in {root / 'notebooks'}.")
    params = config.read_params(root)
    validate(params)
    names = papermill.inspect_notebook(str(nb))
    rank = int(os.environ.get("RANK", "0"))  # under torchrun every rank runs the notebook; rank 0's is the stage's
    out = root / "build" / "notebooks" / (nb.name if rank == 0 else f"ranks/{nb.stem}.rank{rank}.ipynb")
    running, failed = out.with_name(f".{out.stem}.running.ipynb"), out.with_name(f"{out.stem}.failed.ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    failed.unlink(missing_ok=True)
    try:
        papermill.execute_notebook(str(nb), str(running), parameters={n: params[n] for n in names if n in params},
                                   log_output=True, progress_bar=False, cwd=str(root), kernel_name="python3")
    except papermill.PapermillExecutionError:
        os.replace(running, failed)  # the last good executed notebook stays; this one shows the error
        raise
    os.replace(running, out)
    return out


def install_kernel(prefix=sys.prefix) -> Path:
    """Register this interpreter as the Jupyter kernel ``treesae`` under ``prefix``; rerunning replaces it."""
    from ipykernel.kernelspec import install  # noqa: PLC0415  (make setup only)
    return Path(install(kernel_name=KERNEL, display_name="Python (treesae)", prefix=str(prefix)))


if __name__ == "__main__":
    if sys.argv[1:] == ["--install-kernel"]:
        print(f"Jupyter kernel {KERNEL!r}: {install_kernel()}")
        sys.exit()
    if len(sys.argv) != 2:
        sys.exit("usage: python -m treesae.notebook notebooks/<stage>.ipynb | --install-kernel")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(sys.argv[1])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"{sys.argv[1]} was not run (nothing was written):\n  {e}")
    except papermill.PapermillExecutionError as e:
        sys.exit(f"{sys.argv[1]} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                 f"(the executed notebook, with the traceback, is build/notebooks/{Path(sys.argv[1]).stem}.failed.ipynb)")
