"""Stage 01: fetch and tokenize every corpus of the harvest section, harvest its activations
(``treesae.harvest``) and summarise what was cached. One call per notebook cell."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config, corpora, paths
from ..harvest import harvest as harvest_corpus
from ..model import load_model, runtime


def setup(model: dict, harvest: dict):
    """Validate the params.yaml sections, pin threads, stay offline (unless HF_HUB_OFFLINE=0 is set)."""
    return runtime(model), config.parse(config.HarvestParams, harvest, "harvest")


def load(params):
    return load_model(params[0].name, params[0].device)


def run(lm, params, progress=True) -> dict:
    """Fetch, tokenize and harvest every corpus of the harvest section. Over ``harvest.disk_budget_gb``, the
    caches hold the held-out contexts only and stage 02 streams the train split from the model."""
    mp, hp = params
    dirs = {c: corpora.prepare(c, lm.tokenizer, hp.context_len, hp.heldout_fraction, hp.max_contexts, hp.seed,
                               out_dir=paths.data("corpora", corpora.safe_name(c))) for c in hp.corpora}
    gb = cache_gb(dirs.values(), len(hp.layers), lm.cfg.d_model, hp.dtype)
    train = hp.disk_budget_gb is None or gb <= hp.disk_budget_gb
    if not train:
        print(f"a full cache would take {gb:.1f} GB > harvest.disk_budget_gb {hp.disk_budget_gb}: caching the "
              "held-out contexts only; stage 02 streams the train split from the model")
    out = {}
    for corpus, cdir in dirs.items():
        out[corpus] = harvest_corpus(lm, cdir, paths.data("activations", corpora.safe_name(corpus)), hp.layers, hp.dtype,
                                     hp.batch_size, hp.shard_contexts, hp.summary_contexts, progress, train=train)
    keep = {corpora.safe_name(c) for c in hp.corpora}
    for d in (paths.data("activations"), paths.data("corpora")):  # outputs persist (dvc.yaml): drop other corpora's
        for stale in [x for x in d.iterdir() if x.is_dir() and x.name not in keep]:
            shutil.rmtree(stale)
    return out


def cache_gb(corpus_dirs, n_layers: int, d_model: int, dtype: str) -> float:
    """Size of the full activation caches of these corpora (every context, every layer), in GiB."""
    tokens = sum(np.load(Path(d) / "tokens.npy", mmap_mode="r").size for d in corpus_dirs)
    return tokens * n_layers * d_model * np.dtype(dtype).itemsize / 2 ** 30


def table(caches: dict) -> pd.DataFrame:
    """One row per corpus: what was harvested."""
    return pd.DataFrame([dict(corpus=c, model=k.meta["model"], layers=k.meta["layers"], contexts=k.meta["n_contexts"],
                              tokens=k.meta["n_tokens"], train_tokens=k.meta["n_train_tokens"], dtype=k.meta["dtype"],
                              shards=len(k.meta["shards"]), path=str(k.path.relative_to(k.path.parents[2])))
                         for c, k in caches.items()])


def norms(caches: dict, positions=(0, 1, 2, 8, 64)) -> pd.DataFrame:
    """Median residual norm by layer at a few positions: position 0 is the attention sink."""
    frames = []
    for c, k in caches.items():
        s = pd.read_csv(k.path / "summary.csv")
        s = s[(s.layer >= 0) & s.position.isin(positions)]
        frames.append(s.pivot(index="layer", columns="position", values="norm_median").add_prefix("pos").assign(corpus=c))
    return pd.concat(frames).round(1)
