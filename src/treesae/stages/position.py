"""Stage 03: SAE activations across token positions and layers.

For one SAE per harvested layer (the base run and the ``layer`` grid of stage 02, TopK by default), on
held-out contexts of one corpus (``cache.layer(L)[rows]``, [n_ctx, T, d], position 0 included):

* ``profile.csv``: per layer and position (position 0 its own row): mean non-zero activation, L0,
  nMSE (OpenAI, per position over contexts), residual norm (``analysis.position.position_profile``).
* ``deciles.csv``: per layer and latent, quantiles q10..q90 of its non-zero values with and without
  position 0 (``feature_deciles``).
* ``position_features.csv`` / ``position_features_by_layer.csv``: latents ranked by eta^2 (fraction of
  the code's variance explained by position, positions >= 1) and, per layer, how many exceed
  ``eta2_threshold``.
* ``intervention.csv``: per layer (every block of the model) and condition, clean vs each position
  intervention that fits the model (rotary: permute / freeze the rotary angles; learned absolute:
  zero / shuffle the position embeddings): residual norm, SAE nMSE and L0, LM loss, LM loss with the
  layer's SAE spliced in (``position_intervention``; position 0 excluded).
* ``lm_vs_sae_tokens.csv`` / ``lm_vs_sae_by_layer.csv``: per token and layer, CE clean / with the
  reconstruction spliced in / increase, and the token's SAE nMSE, clean and with position information
  removed (freeze for rotary, zero for learned embeddings); per layer means and rank correlations.
* ``residual_norm.csv``, ``sink.csv``, ``lm_loss_by_position.csv``: residual norm by position for
  every layer of the model, the attention-sink ratio per layer and the LM loss by position, from the
  harvest's ``data/activations/<corpus>/summary.csv`` (every corpus).
* ``corpora.csv``: what was harvested (model, layers, tokens per corpus), for the numbers stage.
* ``metrics.json``: the headline numbers (keys in ``summarize``).

Every step that reads contexts shows a progress bar on stderr (contexts done, rate, ETA; ``progress=False``: none).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import config, paths
from ..analysis import position as P
from ..cache import ActivationCache
from ..corpora import safe_name
from ..model import load_model as load_lm, runtime
from ..runs import layer_runs, read_metrics
from ..saes import load_saes as read_saes
from . import common

NAME = "position"
REMOVE_MODES = ("freeze", "zero")  # the intervention that removes position information, by embedding type


@dataclass
class PositionParams:
    corpus: str = "brown"          # held-out contexts of this corpus; its SAEs (base + layer grid)
    architecture: str = "topk"     # the SAE of each layer
    max_contexts: int = 256        # held-out contexts for profile, deciles, position features
    batch_contexts: int = 16
    lm_contexts: int = 16          # held-out contexts through the whole model (intervention, LM vs SAE loss)
    batch_size: int = 8
    min_active: int = 10           # position features: latents active fewer times are dropped
    eta2_threshold: float = 0.1    # a "position feature": position explains more than this of its variance
    seed: int = 0                  # the permutation of the permute / shuffle interventions

    def __post_init__(self):
        for k in ("max_contexts", "batch_contexts", "lm_contexts", "batch_size", "min_active"):
            if getattr(self, k) < 1:
                raise ValueError(f"position.{k} must be >= 1, got {getattr(self, k)}")
        if not 0 < self.eta2_threshold < 1:
            raise ValueError(f"position.eta2_threshold must be in (0, 1), got {self.eta2_threshold}")


# --- stage 03, one call per notebook cell ---

def setup(model: dict, harvest: dict, position: dict) -> dict:
    """Validate the sections, pin threads, stay offline for the default model; pick one SAE per layer."""
    mp, hp = runtime(model), config.parse(config.HarvestParams, harvest, "harvest")
    pp = config.parse(PositionParams, position, "position")
    if pp.corpus not in hp.corpora:
        raise ValueError(f"position.corpus {pp.corpus!r} is not harvested (harvest.corpora: {hp.corpora}).")
    runs = layer_runs(read_metrics(), pp.architecture, pp.corpus)
    caches = {c: ActivationCache.open(paths.data("activations", safe_name(c)), expect={"model": mp.name})
              for c in hp.corpora}
    cache = caches[pp.corpus]
    missing = sorted(set(runs.layer) - set(cache.meta["layers"]))
    if missing:
        raise ValueError(f"SAEs exist for layers {missing} that the {pp.corpus} cache lacks; rerun the harvest.")
    rows = cache.contexts("heldout")
    return dict(model=mp, harvest=hp, position=pp, runs=runs, caches=caches, cache=cache,
                rows=rows[:pp.max_contexts], lm_rows=rows[:pp.lm_contexts], out=common.out_dir(NAME))


def runs(setup: dict) -> pd.DataFrame:
    """The SAE of each layer and its held-out metrics from stage 02."""
    cols = [c for c in ("layer", "architecture", "corpus", "d_sae", "k", "seed", "nmse", "l0", "dead_fraction",
                        "ce_increase") if c in setup["runs"]]
    return setup["runs"][cols]


def load_saes(setup: dict) -> dict:
    """{layer: SAE}."""
    saes = read_saes(setup["runs"].index)
    return {int(r.layer): saes[n] for n, r in setup["runs"].iterrows()}


def _acts(setup, layer):
    return setup["cache"].layer(layer)[setup["rows"]]


def _bar(desc: str, contexts: int, progress: bool):
    return tqdm(total=contexts, desc=f"position {desc}", unit="ctx", mininterval=10, disable=not progress)


def profile(setup: dict, saes: dict, progress: bool = True) -> pd.DataFrame:
    """Per layer and position: n, mean_act, l0, nmse, resid_norm (position 0 its own row)."""
    pp = setup["position"]
    with _bar("profile", len(saes) * len(setup["rows"]), progress) as bar:
        t = P.stack_layers({L: P.position_profile(sae, _acts(setup, L), pp.batch_contexts, progress=bar)
                            for L, sae in saes.items()})
    common.write_table(t, setup["out"] / "profile.csv")
    return t


def profile_summary(profile: pd.DataFrame) -> pd.DataFrame:
    """Position 0 against the mean over positions >= 1, per layer."""
    cols = ["mean_act", "l0", "nmse", "resid_norm"]
    first = profile[profile.position == 0].set_index("layer")[cols].add_suffix("_pos0")
    rest = profile[profile.position >= 1].groupby("layer")[cols].mean().add_suffix("_pos1plus")
    return first.join(rest)[[f"{c}_{s}" for c in cols for s in ("pos0", "pos1plus")]]


def deciles(setup: dict, saes: dict, progress: bool = True) -> pd.DataFrame:
    """Per layer and latent: n_active and q10..q90 of its non-zero values, with and without position 0."""
    pp = setup["position"]
    parts = {}
    with _bar("deciles", 2 * len(saes) * len(setup["rows"]), progress) as bar:
        for L, sae in saes.items():
            x = _acts(setup, L)
            parts[L] = pd.concat([P.feature_deciles(sae, x, include_first=inc, batch_contexts=pp.batch_contexts,
                                                    progress=bar) for inc in (True, False)], ignore_index=True)
    t = P.stack_layers(parts)
    common.write_table(t, setup["out"] / "deciles.csv")
    return t


def deciles_summary(deciles: pd.DataFrame) -> pd.DataFrame:
    """Per layer, with / without position 0: latents ever active, median over latents of q50 and q90,
    and the fraction of latents whose q90 rises by more than 10% when position 0 is included."""
    g = deciles.groupby(["layer", "include_first"])
    out = pd.DataFrame({"active_latents": g.n_active.apply(lambda s: int((s > 0).sum())),
                        "q50_median": g.q50.median(), "q90_median": g.q90.median()}).reset_index()
    w = deciles.pivot_table(index=["layer", "feature"], columns="include_first", values="q90").dropna()
    if True in w.columns and False in w.columns:
        shift = (w[True] > 1.1 * w[False]).groupby(level="layer").mean()
        out["frac_q90_up10"] = out.layer.map(shift)
    return out


def position_features(setup: dict, saes: dict, progress: bool = True) -> pd.DataFrame:
    """Per layer, latents ranked by eta^2 (positions >= 1; those active >= min_active times)."""
    pp = setup["position"]
    with _bar("features", len(saes) * len(setup["rows"]), progress) as bar:
        t = P.stack_layers({L: P.position_features(sae, _acts(setup, L), include_first=False, min_active=pp.min_active,
                                                   batch_contexts=pp.batch_contexts, progress=bar)
                            for L, sae in saes.items()})
    common.write_table(t, setup["out"] / "position_features.csv")
    return t


def position_features_by_layer(setup: dict, features: pd.DataFrame) -> pd.DataFrame:
    """Per layer: latents scored, eta2_chance (the expected eta^2 of a latent that ignores position:
    (positions - 1) / (tokens - 1), large when few contexts are scored), n_position_features
    (eta^2 > eta2_threshold), their fraction, max and mean eta^2, and the fraction of position
    features whose code rises with position (corr > 0)."""
    thr = setup["position"].eta2_threshold
    rows = []
    for L in sorted(setup["runs"].layer):
        g = features[features.layer == L]
        pos = g[g.eta2 > thr]
        n_tok = int(g.n_active.iloc[0] / g.freq.iloc[0]) if len(g) else 0  # contexts x positions scored
        n_pos = len(setup["rows"]) and n_tok // len(setup["rows"])
        rows.append(dict(layer=L, d_sae=int(setup["runs"].set_index("layer").d_sae[L]), n_scored=len(g),
                         eta2_chance=(n_pos - 1) / max(n_tok - 1, 1),
                         n_position_features=len(pos), frac_position_features=len(pos) / max(len(g), 1),
                         max_eta2=g.eta2.max() if len(g) else np.nan, mean_eta2=g.eta2.mean() if len(g) else np.nan,
                         frac_rising=(pos.corr_position > 0).mean() if len(pos) else np.nan))
    t = pd.DataFrame(rows)
    common.write_table(t, setup["out"] / "position_features_by_layer.csv")
    return t


def load_model(setup: dict):
    return load_lm(setup["model"].name, setup["model"].device)


def modes(lm) -> tuple:
    """The position interventions that fit the model (rotary: permute, freeze; learned: zero, shuffle)."""
    return P.position_modes(lm)


def _tokens(setup, rows):
    return np.asarray(setup["cache"].tokens[rows])


def intervention(setup: dict, lm, saes: dict, progress: bool = True) -> pd.DataFrame:
    """Per layer (every block's resid_pre; SAE columns where an SAE exists) and condition: clean and
    every intervention of ``modes(lm)``."""
    pp = setup["position"]
    toks = _tokens(setup, setup["lm_rows"])
    layers, modes = list(range(lm.cfg.n_layers)), P.position_modes(lm)
    parts = []
    with _bar("intervention", 2 * len(modes) * len(toks), progress) as bar:  # clean and intervened, per mode
        for i, mode in enumerate(modes):
            t = P.position_intervention(lm, toks, layers, saes, mode, seed=pp.seed, batch_size=pp.batch_size,
                                        progress=bar)
            parts.append(t if i == 0 else t[t.condition != "clean"])  # clean rows are identical for every mode
    t = pd.concat(parts, ignore_index=True)
    t["ce_increase"] = t.lm_loss_spliced - t.lm_loss
    common.write_table(t, setup["out"] / "intervention.csv")
    return t


def intervention_summary(intervention: pd.DataFrame) -> pd.DataFrame:
    """The layers with an SAE, one row per (layer, condition)."""
    return intervention.dropna(subset=["sae_nmse"]).set_index(["layer", "condition"])[
        ["resid_norm", "sae_nmse", "sae_l0", "lm_loss", "lm_loss_spliced", "ce_increase"]]


def remove_mode(lm) -> str:
    """The intervention that removes position information: freeze (rotary) or zero (learned)."""
    return next(m for m in modes(lm) if m in REMOVE_MODES)


def lm_vs_sae(setup: dict, lm, saes: dict, progress: bool = True) -> pd.DataFrame:
    """Per token and layer (positions 1..T-2): ce_clean, ce_spliced, ce_increase, sae_nmse, resid_norm,
    clean (condition "clean") and with position information removed (condition = that mode)."""
    pp = setup["position"]
    toks = _tokens(setup, setup["lm_rows"])
    with _bar("lm_vs_sae", 2 * len(toks), progress) as bar:
        parts = [P.lm_vs_sae_loss(lm, saes, toks, batch_size=pp.batch_size, position_mode=mode, seed=pp.seed,
                                  progress=bar).assign(condition=mode or "clean") for mode in (None, remove_mode(lm))]
    t = pd.concat(parts, ignore_index=True)
    common.write_table(t, setup["out"] / "lm_vs_sae_tokens.csv")
    return t


def lm_vs_sae_by_layer(setup: dict, tokens: pd.DataFrame) -> pd.DataFrame:
    """Per condition and layer: mean CE clean / spliced / increase and per-token nMSE; Spearman and
    Pearson correlation over tokens between the token's nMSE and its CE increase."""
    rows = []
    for (cond, L), g in tokens.groupby(["condition", "layer"], sort=False):
        rows.append(dict(condition=cond, layer=L, n_tokens=len(g), ce_clean=g.ce_clean.mean(),
                         ce_spliced=g.ce_spliced.mean(), ce_increase=g.ce_increase.mean(), sae_nmse=g.sae_nmse.mean(),
                         spearman_nmse_ce=g.sae_nmse.corr(g.ce_increase, method="spearman"),
                         pearson_nmse_ce=g.sae_nmse.corr(g.ce_increase)))
    t = pd.DataFrame(rows)
    common.write_table(t, setup["out"] / "lm_vs_sae_by_layer.csv")
    return t


def residual_norms(setup: dict) -> pd.DataFrame:
    """Residual norm by position for every layer of the model (layer n_layers = the final residual)
    and every corpus, from the harvest's summary.csv; ratio = norm_median / median over positions >= 1.
    Also writes sink.csv (per layer: position 0's median norm over the others') and
    lm_loss_by_position.csv."""
    norms, losses = [], []
    for c, cache in setup["caches"].items():
        s = pd.read_csv(cache.path / "summary.csv")
        r = s[s.layer >= 0][["layer", "position", "norm_mean", "norm_median", "absmax_mean"]].copy()
        rest = r[r.position >= 1].groupby("layer").norm_median.median()
        r["ratio"] = r.norm_median / r.layer.map(rest)
        norms.append(r.assign(corpus=c))
        losses.append(s[s.layer < 0][["position", "lm_loss"]].assign(corpus=c))
    t = pd.concat(norms, ignore_index=True)[["corpus", "layer", "position", "norm_mean", "norm_median", "absmax_mean",
                                             "ratio"]]
    common.write_table(t, setup["out"] / "residual_norm.csv")
    common.write_table(sink_table(t), setup["out"] / "sink.csv")
    common.write_table(pd.concat(losses, ignore_index=True)[["corpus", "position", "lm_loss"]],
                       setup["out"] / "lm_loss_by_position.csv")
    return t


def sink_table(norms: pd.DataFrame) -> pd.DataFrame:
    """Per corpus and layer: norm_pos0 (median over contexts at position 0), norm_rest (median over
    positions >= 1 of the per-position medians), sink_ratio = norm_pos0 / norm_rest."""
    p0 = norms[norms.position == 0].set_index(["corpus", "layer"]).norm_median.rename("norm_pos0")
    rest = norms[norms.position >= 1].groupby(["corpus", "layer"]).norm_median.median().rename("norm_rest")
    t = pd.concat([p0, rest], axis=1).reset_index()
    t["sink_ratio"] = t.norm_pos0 / t.norm_rest
    return t


def corpora(setup: dict) -> pd.DataFrame:
    """What was harvested, per corpus (read by the numbers stage)."""
    rows = []
    for c, k in setup["caches"].items():
        m = k.meta
        rows.append(dict(corpus=c, model=m["model"], n_layers=m["n_layers"], d_model=m["d_model"],
                         layers=",".join(str(L) for L in m["layers"]), hook=m["hook"], context_len=m["context_len"],
                         n_contexts=m["n_contexts"], n_tokens=m["n_tokens"], n_train_tokens=m["n_train_tokens"],
                         n_heldout_tokens=int(len(k.contexts("heldout")) * m["context_len"]),
                         n_documents=int(len(np.unique(np.asarray(k.doc_ids)))), dtype=m["dtype"],
                         summary_contexts=m.get("summary_contexts")))
    t = pd.DataFrame(rows)
    common.write_table(t, setup["out"] / "corpora.csv")
    return t


def summarize(setup: dict) -> dict:
    """Headline numbers from the tables above, written to metrics.json (the numbers stage prefixes "position.").

    Keys (L: a layer with an SAE; S: every layer of the summary; M: an intervention mode; C: clean or
    the position-removing mode):
      corpus, architecture, layers, n_contexts, n_lm_contexts, eta2_threshold, remove_mode, modes
      sae_layer{L}                        run name of layer L's SAE
      layer{L}.{nmse,l0,mean_act,resid_norm}_{pos0,pos1plus}   position 0 vs the mean over positions >= 1
      layer{L}.resid_norm_ratio_pos0      resid_norm_pos0 / median over positions >= 1
      layer{L}.{n,frac}_position_features, layer{L}.{max,mean}_eta2, layer{L}.eta2_chance
      layer{L}.q90_median_{with,without}_first, layer{L}.frac_q90_up10
      sink_norm_ratio_layer{S}            median norm at position 0 / median over positions >= 1 (corpus)
      sink_norm_ratio_max, sink_norm_ratio_max_layer, sink_first_layer (first layer with ratio > 3)
      lm_loss_pos0, lm_loss_pos1plus      LM next-token loss at position 0 / mean over positions >= 1
      intervention.clean.lm_loss, intervention.{M}.lm_loss
      intervention.{M|clean}.layer{L}.{sae_nmse,sae_l0,ce_increase,resid_norm}
      intervention.{M}.layer{L}.resid_norm_ratio   intervened / clean residual norm
      lm_vs_sae.{C}.layer{L}.{ce_increase,sae_nmse,spearman}
    """
    out, pp, runs = setup["out"], setup["position"], setup["runs"]
    r = lambda n: common.read_table(out / n)  # noqa: E731
    prof, dec, feats = r("profile.csv"), r("deciles.csv"), r("position_features_by_layer.csv")
    interv, lmv, sink, loss = r("intervention.csv"), r("lm_vs_sae_by_layer.csv"), r("sink.csv"), r("lm_loss_by_position.csv")
    m = dict(corpus=pp.corpus, architecture=pp.architecture, layers=sorted(int(L) for L in runs.layer),
             n_contexts=len(setup["rows"]), n_lm_contexts=len(setup["lm_rows"]), eta2_threshold=pp.eta2_threshold,
             modes=[c for c in dict.fromkeys(interv.condition) if c != "clean"],
             remove_mode=next((c for c in dict.fromkeys(lmv.condition) if c != "clean"), None))
    ps = profile_summary(prof)
    ds = deciles_summary(dec).set_index(["layer", "include_first"])
    for name, row in runs.iterrows():
        L = int(row.layer)
        m[f"sae_layer{L}"] = name
        for c in ps.columns:
            m[f"layer{L}.{c}"] = ps.at[L, c]
        p = prof[prof.layer == L]
        m[f"layer{L}.resid_norm_ratio_pos0"] = p.resid_norm[p.position == 0].iloc[0] / p.resid_norm[p.position >= 1].median()
        f = feats.set_index("layer").loc[L]
        m[f"layer{L}.n_position_features"] = int(f.n_position_features)
        for c in ("frac_position_features", "max_eta2", "mean_eta2", "eta2_chance"):
            m[f"layer{L}.{c}"] = f[c]
        for inc, tag in ((True, "with"), (False, "without")):
            if (L, inc) in ds.index:
                m[f"layer{L}.q90_median_{tag}_first"] = ds.at[(L, inc), "q90_median"]
        if "frac_q90_up10" in ds.columns and (L, False) in ds.index:
            m[f"layer{L}.frac_q90_up10"] = ds.at[(L, False), "frac_q90_up10"]
    s = sink[sink.corpus == pp.corpus].set_index("layer").sink_ratio
    for L, v in s.items():
        m[f"sink_norm_ratio_layer{int(L)}"] = v
    m["sink_norm_ratio_max"], m["sink_norm_ratio_max_layer"] = s.max(), int(s.idxmax())
    m["sink_first_layer"] = int(s[s > 3].index.min()) if (s > 3).any() else None
    lo = loss[loss.corpus == pp.corpus].set_index("position").lm_loss
    m["lm_loss_pos0"], m["lm_loss_pos1plus"] = lo.get(0, np.nan), lo[lo.index >= 1].mean()
    clean = interv[interv.condition == "clean"].set_index("layer")
    for cond, g in interv.groupby("condition", sort=False):
        m[f"intervention.{cond}.lm_loss"] = g.lm_loss.iloc[0]
        g = g.set_index("layer")
        for L in m["layers"]:
            for c in ("sae_nmse", "sae_l0", "ce_increase", "resid_norm"):
                m[f"intervention.{cond}.layer{L}.{c}"] = g.at[L, c]
            if cond != "clean":
                m[f"intervention.{cond}.layer{L}.resid_norm_ratio"] = g.at[L, "resid_norm"] / clean.at[L, "resid_norm"]
    for _, row in lmv.iterrows():
        k = f"lm_vs_sae.{row.condition}.layer{int(row.layer)}"
        m[f"{k}.ce_increase"], m[f"{k}.sae_nmse"], m[f"{k}.spearman"] = row.ce_increase, row.sae_nmse, row.spearman_nmse_ce
    return common.write_metrics(out / "metrics.json", m)
