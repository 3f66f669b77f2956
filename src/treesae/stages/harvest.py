"""Stage 01: fetch and tokenize every corpus of the harvest section, harvest its activations
(``treesae.harvest``) and summarise what was cached. One call per notebook cell."""
import shutil

import pandas as pd

from .. import config, corpora, paths
from ..harvest import harvest as harvest_corpus
from ..model import load_model


def setup(model: dict, harvest: dict):
    """Validate the params.yaml sections, pin threads, stay offline (unless HF_HUB_OFFLINE=0 is set)."""
    return config.runtime(model), config.parse(config.HarvestParams, harvest, "harvest")


def load(params):
    return load_model(params[0].name, params[0].device)


def run(lm, params, progress=True) -> dict:
    """Fetch, tokenize and harvest every corpus of the harvest section."""
    mp, hp = params
    out = {}
    for corpus in hp.corpora:
        name = corpora.safe_name(corpus)
        cdir = corpora.prepare(corpus, lm.tokenizer, hp.context_len, hp.heldout_fraction, hp.max_contexts, hp.seed,
                               out_dir=paths.data("corpora", name))
        out[corpus] = harvest_corpus(lm, cdir, paths.data("activations", name), hp.layers, hp.dtype, hp.batch_size,
                                     hp.shard_contexts, hp.summary_contexts, progress)
    keep = {corpora.safe_name(c) for c in hp.corpora}
    for d in (paths.data("activations"), paths.data("corpora")):  # outputs persist (dvc.yaml): drop other corpora's
        for stale in [x for x in d.iterdir() if x.is_dir() and x.name not in keep]:
            shutil.rmtree(stale)
    return out


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
