"""Static, offline HTML explorer of trained SAEs (the feature browser).

    from treesae import browser
    data = browser.extract(saes, meta, caches, model)      # encode held-out activations once per SAE
    browser.write_site(data, "build/browser")               # index.html + app.js + sharded data/*.js

Open ``build/browser/index.html`` from disk (file://) or serve the folder with any static server; it
needs no network. ``matches(saes)`` (decoder-cosine matches across SAEs) runs inside ``extract`` unless a
precomputed result is passed as ``matched=``. See ``extract.py`` for what is computed and ``site.py``
for the file layout.
"""
from .cli import load_inputs
from .extract import HIST_EDGES, LOGIT_CHOICE, Source, extract, feature_stats, logit_effect, matches, parent_stats
from .site import SHARD_SIZE, write_site

__all__ = ["extract", "matches", "write_site", "load_inputs", "feature_stats", "logit_effect", "parent_stats", "Source", "HIST_EDGES",
           "LOGIT_CHOICE", "SHARD_SIZE"]
