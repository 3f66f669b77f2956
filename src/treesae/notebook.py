"""Execute one stage notebook: ``python -m treesae.notebook notebooks/02_train.ipynb`` (every DVC stage's cmd).

It reads params.yaml as DVC does (YAML 1.2, ``treesae.config``), validates every section
(``treesae.validate``), then runs the notebook with papermill into ``build/notebooks/``, injecting the
sections its parameters cell names (papermill's own ``-f`` would read the file as YAML 1.1, where
``1e-3`` is a string). The executed notebook replaces the last one only on success; a failed run is
kept beside it as ``<name>.failed.ipynb``.
"""
import logging
import os
import sys
from pathlib import Path

import papermill

from . import config, paths
from .validate import validate


def run(notebook) -> Path:
    root = paths.root()
    nb = root / notebook
    if not nb.exists():
        raise FileNotFoundError(f"{nb} not found; stage notebooks are in {root / 'notebooks'}.")
    params = config.read_params(root)
    validate(params)
    names = papermill.inspect_notebook(str(nb))
    out = root / "build" / "notebooks" / nb.name
    running, failed = out.with_name(f".{out.stem}.running.ipynb"), out.with_name(f"{out.stem}.failed.ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    failed.unlink(missing_ok=True)
    try:
        papermill.execute_notebook(str(nb), str(running), parameters={n: params[n] for n in names if n in params},
                                   log_output=True, progress_bar=False, cwd=str(root))
    except papermill.PapermillExecutionError:
        os.replace(running, failed)  # the last good executed notebook stays; this one shows the error
        raise
    os.replace(running, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m treesae.notebook notebooks/<stage>.ipynb")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(sys.argv[1])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"Invalid parameters, the notebook was not run:\n  {e}")
    except papermill.PapermillExecutionError as e:
        sys.exit(f"{sys.argv[1]} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                 f"(the executed notebook, with the traceback, is build/notebooks/{Path(sys.argv[1]).stem}.failed.ipynb)")
