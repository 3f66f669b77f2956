"""Stage 07: the feature browser of every SAE of the sweep, one call per notebook cell."""
import shutil
from dataclasses import dataclass

from .. import config, paths
from ..browser import extract, load_inputs, write_site
from ..io import ArrayStore
from ..model import load_model, runtime


@dataclass
class BrowserParams:
    n_top_contexts: int = 12
    max_contexts: int | None = None
    window: tuple[int, ...] = (24, 8)
    match_top: int = 3
    match_group: str | None = None
    shard_size: int = 256
    batch_size: int = 4096
    out: str = "build/browser"

    def __post_init__(self):
        if self.n_top_contexts < 1 or self.shard_size < 1 or self.match_top < 0:
            raise ValueError("browser: need n_top_contexts >= 1, shard_size >= 1, match_top >= 0")
        self.window = tuple(self.window)


def setup(model: dict, browser: dict):
    return runtime(model), config.parse(BrowserParams, browser, "browser")


def inputs(params):
    """(saes, meta, caches) from stage 02's SAEs and metrics table and stage 01's caches."""
    return load_inputs(paths.data("saes"), paths.data("train", "metrics.csv"), paths.data("activations"))


def load(params):
    return load_model(params[0].name, params[0].device)


def build(params, inputs, lm):
    """Every SAE's page data; each SAE's statistics are kept in data/.partial/browser as soon as they are
    computed, so an interrupted stage resumes (``extract``'s ``store``)."""
    bp = params[1]
    saes, meta, caches = inputs
    salt = repr(sorted((str(c), k.meta.get("fingerprint")) for c, k in caches.items()))
    return extract(saes, meta, caches, lm, n_top_contexts=bp.n_top_contexts, max_contexts=bp.max_contexts,
                   batch_size=bp.batch_size, window=bp.window, match_top=bp.match_top, match_group=bp.match_group,
                   progress=True, store=ArrayStore(paths.data(".partial", "browser")), salt=salt)


def write(params, data):
    out = write_site(data, paths.root() / params[1].out, shard_size=params[1].shard_size)
    shutil.rmtree(paths.data(".partial", "browser"), ignore_errors=True)  # the site is written: its resume data goes
    print(f"open {out / 'index.html'}")
    return out
