"""One plotting function per paper figure, named after its slug.

Each takes the stage tables (DataFrames) and an output path, writes one file (.png, .svg or .pdf by
the suffix) and returns the path. Output is deterministic: fixed size and dpi, no timestamps or
software tags in the file, a fixed SVG hash salt, no bootstrapped error bars. ``style()`` sets the
one look used everywhere; ``FIGURES`` maps slug -> function. Each docstring names the metric shown
and the table columns it needs (definitions: ``treesae.metrics``; position 0 excluded unless stated).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

DPI = 150
ARCH_ORDER = ["relu", "topk", "batchtopk", "matryoshka", "stacked", "residual", "tree"]
METADATA = {".png": {"Software": None}, ".svg": {"Date": None, "Creator": None},
            ".pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}}


def style():
    """The paper's one seaborn style (called by every figure function)."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "svg.hashsalt": "treesae", "svg.fonttype": "path",
                         "axes.titlesize": "medium", "legend.frameon": False, "pdf.compression": 6})


def _order(values, preferred=ARCH_ORDER):
    vals = list(dict.fromkeys(values))
    first = [v for v in preferred if v in vals]
    return first + sorted((v for v in vals if v not in first), key=str)


def _palette(order):
    return dict(zip(order, sns.color_palette("colorblind", max(len(order), 1))))


def _need(df: pd.DataFrame, *cols, name="table"):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{name} lacks columns {missing}; has {list(df.columns)}")


def _fig(w, h, ncols=1, nrows=1, **kw):
    style()
    return plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False, **kw)


def _no_minor_labels(ax):
    """Log axes: label major ticks only, in plain numbers."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata=METADATA.get(path.suffix.lower(), {}))
    plt.close(fig)
    return path


def _frontier(metrics, y, ylabel, title, path, logy):
    _need(metrics, "architecture", "l0", y, name="metrics")
    order = _order(metrics.architecture)
    fig, axs = _fig(6.4, 4.2)
    ax = axs[0, 0]
    style_col = "d_sae" if "d_sae" in metrics.columns and metrics.d_sae.nunique() > 1 else None
    keys = ["architecture", "_config"] + ([style_col] if style_col else [])
    # the seeds of one configuration: their mean point and a +-1 SD bar
    g = metrics.assign(_config=metrics["k"] if "k" in metrics.columns else metrics.index).groupby(keys, sort=False)
    d = g[["l0", y]].mean().join(g[y].std().rename("sd")).join(g.size().rename("n_seeds")).reset_index()
    d = d.sort_values(["architecture", "l0"])
    marks = dict(style=style_col, markers=True, dashes=False) if style_col else dict(marker="o")
    sns.lineplot(d, x="l0", y=y, hue="architecture", hue_order=order, palette=_palette(order), errorbar=None,
                 sort=True, ax=ax, **marks)
    pal, rep = _palette(order), d[d.n_seeds > 1]
    for a, r in rep.groupby("architecture"):
        ax.errorbar(r.l0, r[y], yerr=r.sd, fmt="none", ecolor=pal[a], capsize=3, lw=1)
    ax.set(xscale="log", yscale="log" if logy else "linear", xlabel="L0 (mean active latents per token)",
           ylabel=ylabel, title=title)
    _no_minor_labels(ax)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # off the data
    return _save(fig, path)


def frontier_nmse_l0(metrics: pd.DataFrame, path) -> Path:
    """Reconstruction frontier: nMSE (OpenAI, sum (x - x_hat)^2 / sum x^2, held-out tokens, first
    token excluded) against L0, one line per architecture; several seeds of one (architecture, k) give
    their mean and a +-1 SD bar. Columns: architecture, l0, nmse [, k, d_sae: marker style when several sizes]."""
    return _frontier(metrics, "nmse", "nMSE", "Reconstruction vs sparsity", path, logy=True)


def frontier_ce_l0(metrics: pd.DataFrame, path) -> Path:
    """Downstream frontier: CE increase (nats; LM cross-entropy with the reconstruction spliced in minus
    clean CE, first token excluded) against L0. Columns: architecture, l0, ce_increase [, d_sae]."""
    return _frontier(metrics, "ce_increase", "CE increase (nats)", "Downstream loss vs sparsity", path, logy=False)


def dead_latents_training(curves: pd.DataFrame, path) -> Path:
    """Dead fraction over training (fraction of latents that did not fire in the trainer's window of
    N tokens, stated by the stage) for each variant (e.g. AuxK on/off, tied init on/off).
    Columns: variant, tokens, dead_fraction [, architecture: one panel each]."""
    _need(curves, "variant", "tokens", "dead_fraction", name="curves")
    panels = _order(curves.architecture) if "architecture" in curves.columns else [None]
    order = _order(curves.variant, [])
    fig, axs = _fig(4.2 * len(panels), 3.8, ncols=len(panels), sharey=True)
    for ax, arch in zip(axs[0], panels):
        d = curves if arch is None else curves[curves.architecture == arch]
        sns.lineplot(d.sort_values("tokens"), x="tokens", y="dead_fraction", hue="variant", hue_order=order,
                     palette=_palette(order), errorbar=None, ax=ax, legend=ax is axs[0, -1], marker="o", markersize=3)
        ax.set(xlabel="training tokens", ylabel="dead fraction", title=arch or "dead latents")
    return _save(fig, path)


def treesae_levels(levels: pd.DataFrame, path) -> Path:
    """Per-level statistics of each TreeSAE variant: width, L0 of the level, dead fraction of the level
    (never fired on the held-out tokens) and nMSE of the cumulative reconstruction from levels 0..l.
    Columns: variant, level, width, l0, dead_fraction, nmse_cumulative (NaN where undefined)."""
    _need(levels, "variant", "level", "width", "l0", "dead_fraction", "nmse_cumulative", name="levels")
    order = _order(levels.variant)
    pal = _palette(order)
    fig, axs = _fig(14, 3.6, ncols=4)
    panels = [("width", "latents"), ("l0", "L0 of level"), ("dead_fraction", "dead fraction"),
              ("nmse_cumulative", "cumulative nMSE")]
    for ax, (col, label) in zip(axs[0], panels):
        sns.lineplot(levels.sort_values("level"), x="level", y=col, hue="variant", hue_order=order, palette=pal,
                     marker="o", errorbar=None, ax=ax, legend=col == "width")
        ax.set(ylabel=label, title=label)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axs[0, 0].set_yscale("log", base=2)
    return _save(fig, path)


def hierarchy_correlation(coact: pd.DataFrame, cosine: pd.DataFrame, path) -> Path:
    """Hierarchy: left, co-activation P(parent active | child active) of parent-child pairs against the
    shuffled-parent baseline; right, decoder cosine of parent and child against shuffled pairs.
    Columns: coact: variant, p_parent_given_child, p_parent_given_child_shuffled (``coactivation``);
    cosine: variant, cos, cos_shuffled (``cross_level_decoder_cosine``)."""
    _need(coact, "variant", "p_parent_given_child", "p_parent_given_child_shuffled", name="coact")
    _need(cosine, "variant", "cos", "cos_shuffled", name="cosine")
    order = _order(list(coact.variant) + list(cosine.variant))
    fig, axs = _fig(11, 4, ncols=2)
    for ax, df, real, shuf, label in [(axs[0, 0], coact, "p_parent_given_child", "p_parent_given_child_shuffled",
                                       "P(parent | child)"), (axs[0, 1], cosine, "cos", "cos_shuffled",
                                                              "decoder cosine (parent, child)")]:
        long = df.melt(id_vars="variant", value_vars=[real, shuf], var_name="pairs", value_name=label)
        long["pairs"] = np.where(long.pairs == real, "parent-child", "shuffled")
        sns.boxplot(long.dropna(), x="variant", y=label, hue="pairs", hue_order=["parent-child", "shuffled"],
                    order=[v for v in order if v in set(df.variant)], showfliers=False, ax=ax)
        ax.set(xlabel="", title=label)
    return _save(fig, path)


def position_activation_layers(profile: pd.DataFrame, path) -> Path:
    """SAE activations by token position and layer: mean non-zero activation, L0, nMSE (per position,
    OpenAI) and residual norm; top row all positions (position 0, the attention sink, included), bottom
    row from position 1. Columns: layer, position, mean_act, l0, nmse, resid_norm."""
    cols = ["mean_act", "l0", "nmse", "resid_norm"]
    _need(profile, "layer", "position", *cols, name="profile")
    layers = sorted(profile.layer.unique())
    pal = dict(zip(layers, sns.color_palette("viridis", len(layers))))
    fig, axs = _fig(15, 6.4, ncols=4, nrows=2)
    for r, first in enumerate([0, 1]):
        d = profile[profile.position >= first].sort_values("position")
        for ax, col in zip(axs[r], cols):
            sns.lineplot(d, x="position", y=col, hue="layer", hue_order=layers, palette=pal, errorbar=None, ax=ax,
                         legend=(r == 0 and col == cols[-1]))
            ax.set(title=f"{col} ({'all positions' if first == 0 else 'position >= 1'})")
            if first == 0 and col in ("mean_act", "resid_norm", "nmse"):
                ax.set_yscale("log")
                _no_minor_labels(ax)
    return _save(fig, path)


def position_deciles(deciles: pd.DataFrame, path) -> Path:
    """Per-latent activation deciles (quantiles 0.1..0.9 of a latent's non-zero values) with and without
    the first token: left, the median over latents of each decile; right, each latent's q90 with vs
    without position 0. Columns: feature, include_first, q10..q90 [, layer: one line per layer]."""
    qs = [f"q{q}" for q in range(10, 100, 10)]
    _need(deciles, "feature", "include_first", *qs, name="deciles")
    d = deciles.copy()
    if "layer" not in d.columns:
        d["layer"] = "all"
    layers = sorted(d.layer.unique(), key=str)
    fig, axs = _fig(11, 4.2, ncols=2)
    med = d.groupby(["layer", "include_first"])[qs].median().reset_index().melt(
        id_vars=["layer", "include_first"], value_vars=qs, var_name="decile", value_name="activation")
    med["decile"] = med.decile.str[1:].astype(int)
    med["first token"] = np.where(med.include_first, "included", "excluded")
    sns.lineplot(med.sort_values("decile"), x="decile", y="activation", hue="layer" if len(layers) > 1 else None,
                 style="first token", style_order=["included", "excluded"], markers=True, errorbar=None,
                 palette="viridis" if len(layers) > 1 else None, ax=axs[0, 0])
    axs[0, 0].set(xlabel="decile (%)", ylabel="median over latents", title="activation deciles")
    wide = d.pivot_table(index=["layer", "feature"], columns="include_first", values="q90").dropna()
    if True in wide.columns and False in wide.columns:
        ax = axs[0, 1]
        ax.scatter(wide[False], wide[True], s=4, alpha=0.4, color=sns.color_palette("colorblind")[0], rasterized=True)
        hi = float(np.nanmax(wide.to_numpy())) if len(wide) else 1.0
        ax.plot([0, hi], [0, hi], color="0.5", lw=0.8, ls="--")
        ax.set(xlabel="q90 without position 0", ylabel="q90 with position 0", title="per-latent q90")
    return _save(fig, path)


def position_intervention(df: pd.DataFrame, path) -> Path:
    """Position intervention by layer, clean vs intervened (rotary: permuted / frozen position ids;
    learned: zeroed / shuffled position embeddings): residual norm, SAE nMSE (OpenAI) and CE increase
    when the layer's SAE is spliced in (lm_loss_spliced - lm_loss of the same condition); the LM's own
    loss per condition in the legend. Columns: layer, condition, resid_norm, sae_nmse, lm_loss,
    lm_loss_spliced."""
    _need(df, "layer", "condition", "resid_norm", "sae_nmse", "lm_loss", "lm_loss_spliced", name="intervention")
    d = df.copy()
    d["ce_increase"] = d.lm_loss_spliced - d.lm_loss
    loss = d.groupby("condition", sort=False).lm_loss.first()
    d["condition"] = [f"{c} (LM loss {loss[c]:.2f})" for c in d.condition]
    order = list(dict.fromkeys(d.condition))
    fig, axs = _fig(13, 3.8, ncols=3)
    for ax, (col, label) in zip(axs[0], [("resid_norm", "residual norm"), ("sae_nmse", "SAE nMSE"),
                                         ("ce_increase", "CE increase, SAE spliced (nats)")]):
        sns.lineplot(d.sort_values("layer"), x="layer", y=col, hue="condition", hue_order=order, marker="o",
                     errorbar=None, ax=ax, legend=col == "resid_norm")
        ax.set(title=label, ylabel=label)
    return _save(fig, path)


def matching_enc_vs_dec(features: pd.DataFrame, path, threshold: float = 0.7) -> Path:
    """Encoder vs decoder matching: histograms of the Hungarian-matched cosine by decoder rows and by
    encoder columns (shared above ``threshold``), and per latent the decoder cosine of its
    decoder match against its encoder match. Columns: cos_dec, cos_enc [, pair: one colour each]."""
    _need(features, "cos_dec", "cos_enc", name="features")
    d = features.dropna(subset=["cos_enc"])
    fig, axs = _fig(11, 4.2, ncols=2)
    bins = np.linspace(min(-0.2, float(d[["cos_dec", "cos_enc"]].min().min())), 1, 49)
    pal = sns.color_palette("colorblind")
    for col, c, lab in [("cos_dec", pal[0], "decoder"), ("cos_enc", pal[1], "encoder")]:
        axs[0, 0].hist(d[col], bins=bins, histtype="step", lw=1.5, color=c,
                       label=f"{lab}: {(d[col] > threshold).mean():.0%} shared")
    axs[0, 0].axvline(threshold, color="0.4", ls="--", lw=0.8)
    axs[0, 0].set(xlabel="matched cosine", ylabel="latents", title="Hungarian matches")
    axs[0, 0].legend()
    ax = axs[0, 1]
    ax.hexbin(d.cos_dec, d.cos_enc, gridsize=40, extent=(bins[0], 1, bins[0], 1), mincnt=1, bins="log", cmap="viridis")
    ax.axvline(threshold, color="0.4", ls="--", lw=0.8)
    ax.axhline(threshold, color="0.4", ls="--", lw=0.8)
    ax.set(xlabel="decoder-matched cosine", ylabel="encoder-matched cosine", title="per latent")
    return _save(fig, path)


def matching_by_factor(factors: pd.DataFrame, path) -> Path:
    """Shared ratio (fraction of Hungarian-matched latents with cosine > 0.7) by the single training
    factor that differs between two SAEs, by decoder and by encoder matching; whiskers span the pairs'
    min..max. Columns: factor, dec_shared, enc_shared [, dec_shared_min, dec_shared_max, n_pairs]."""
    _need(factors, "factor", "dec_shared", "enc_shared", name="factors")
    f = factors.sort_values("dec_shared", kind="stable").reset_index(drop=True)
    fig, axs = _fig(7.5, 4)
    ax = axs[0, 0]
    x = np.arange(len(f))
    pal = sns.color_palette("colorblind")
    ax.bar(x - 0.2, f.dec_shared, 0.4, color=pal[0], label="decoder")
    ax.bar(x + 0.2, f.enc_shared.fillna(0), 0.4, color=pal[1], label="encoder")
    if {"dec_shared_min", "dec_shared_max"} <= set(f.columns):
        ax.errorbar(x - 0.2, f.dec_shared, yerr=[f.dec_shared - f.dec_shared_min, f.dec_shared_max - f.dec_shared],
                    fmt="none", ecolor="0.2", lw=1, capsize=2)
    names = [a if len(a) <= 8 else "\n".join(a.rsplit("_", 1)) for a in f.factor]  # long labels wrap: no collisions
    labels = [f"{a}\n(n={int(n)})" for a, n in zip(names, f.n_pairs)] if "n_pairs" in f.columns else names
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xticks(x, labels)
    ax.set(ylabel="shared ratio (cos > 0.7)", ylim=(0, 1), title="Which factor changes the features")
    ax.legend()
    return _save(fig, path)


def matching_layers(pairs: pd.DataFrame, path) -> Path:
    """Matching along layers: shared ratio (cos > 0.7) and mean matched cosine between SAEs of adjacent
    layers (x = the lower layer), decoder and encoder. Columns: layer, dec_shared, enc_shared,
    dec_mean_cos [, series: one line style each, e.g. architecture]."""
    _need(pairs, "layer", "dec_shared", "enc_shared", "dec_mean_cos", name="pairs")
    d = pairs.copy()
    if "series" not in d.columns:
        d["series"] = "all"
    long = d.melt(id_vars=["layer", "series"], value_vars=["dec_shared", "enc_shared"], var_name="matching",
                  value_name="shared ratio")
    long["matching"] = long.matching.str.replace("_shared", "", regex=False).map({"dec": "decoder", "enc": "encoder"})
    fig, axs = _fig(10, 3.8, ncols=2)
    sns.lineplot(long.sort_values("layer"), x="layer", y="shared ratio", hue="matching", style="series",
                 marker="o", errorbar=None, ax=axs[0, 0], hue_order=["decoder", "encoder"])
    axs[0, 0].set(ylim=(0, 1), title="shared latents, layer l vs l+1")
    sns.lineplot(d.sort_values("layer"), x="layer", y="dec_mean_cos", style="series", marker="o", errorbar=None,
                 ax=axs[0, 1])
    axs[0, 1].set(ylabel="mean matched decoder cosine", title="mean matched cosine")
    return _save(fig, path)


def matching_all_pairs(pairs: pd.DataFrame, path) -> Path:
    """Shared ratio (cos > 0.7) between every matched pair of SAEs: decoder matching below the diagonal,
    encoder matching above (blank: pair not matched, or encoder directions undefined). SAEs are ordered
    by architecture, then name. Columns: a, b, dec_shared, enc_shared, architecture_a, architecture_b."""
    _need(pairs, "a", "b", "dec_shared", "enc_shared", "architecture_a", "architecture_b", name="pairs")
    arch = dict(zip(pairs.a, pairs.architecture_a)) | dict(zip(pairs.b, pairs.architecture_b))
    rank = {a: i for i, a in enumerate(_order(arch.values()))}
    names = sorted(arch, key=lambda s: (rank[arch[s]], s))
    idx = {s: i for i, s in enumerate(names)}
    M = np.full((len(names), len(names)), np.nan)
    for a, b, d, e in zip(pairs.a, pairs.b, pairs.dec_shared, pairs.enc_shared):
        lo, hi = sorted((idx[a], idx[b]))
        M[hi, lo], M[lo, hi] = d, e
    n = len(names)
    fig, axs = _fig(max(5.0, 2.5 + 0.22 * n), max(4.2, 1.8 + 0.2 * n))
    ax = axs[0, 0]
    sns.heatmap(M, vmin=0, vmax=1, cmap="viridis", square=True, ax=ax, xticklabels=names, yticklabels=names,
                cbar_kws=dict(label="shared ratio (cos > 0.7)", shrink=0.7))
    ax.tick_params(labelsize=max(4, 9 - n // 8))
    ax.grid(False)
    ax.set(title="Shared features, every pair (below: decoder, above: encoder)")
    return _save(fig, path)


def decoder_umap(emb: pd.DataFrame, path, title: str = "Decoder directions (UMAP, cosine)") -> Path:
    """2-D map (UMAP or t-SNE, ``decoder_embedding``) of unit decoder rows of several SAEs, one colour per
    SAE. Columns: x, y, sae."""
    _need(emb, "x", "y", "sae", name="embedding")
    order = _order(emb.sae, [])
    fig, axs = _fig(6.6, 6)
    sns.scatterplot(emb, x="x", y="y", hue="sae", hue_order=order, s=4, linewidth=0, alpha=0.6,
                    palette=_palette(order), ax=axs[0, 0], rasterized=True)
    axs[0, 0].set(xticks=[], yticks=[], xlabel="", ylabel="", title=title)
    axs[0, 0].legend(markerscale=3, fontsize="small", loc="best")
    return _save(fig, path)


def decoder_umap_animation(emb: pd.DataFrame, path, frame: str = "layer", fps: int = 2) -> Path:
    """The layer-by-layer decoder map as a GIF: one frame per value of ``frame`` (x, y shared axes).
    Columns: x, y, sae, <frame>."""
    from matplotlib.animation import FuncAnimation, PillowWriter
    _need(emb, "x", "y", "sae", frame, name="embedding")
    frames = sorted(emb[frame].unique())
    order = _order(emb.sae, [])
    pal = _palette(order)
    fig, axs = _fig(5, 5)
    ax = axs[0, 0]
    pad = 0.05 * (emb[["x", "y"]].max() - emb[["x", "y"]].min())
    lim = (emb.x.min() - pad.x, emb.x.max() + pad.x, emb.y.min() - pad.y, emb.y.max() + pad.y)

    def draw(i):
        ax.clear()
        d = emb[emb[frame] == frames[i]]
        ax.scatter(d.x, d.y, s=3, c=[pal[s] for s in d.sae], linewidths=0)
        ax.set(xlim=lim[:2], ylim=lim[2:], xticks=[], yticks=[], title=f"{frame} {frames[i]}")

    anim = FuncAnimation(fig, draw, frames=len(frames))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=80)
    plt.close(fig)
    return path


def lm_vs_sae_loss(tokens: pd.DataFrame, path, n_bins: int = 10) -> Path:
    """LM loss vs SAE loss per token and layer: left, per layer the mean SAE nMSE (per token,
    ||x - x_hat||^2 / ||x||^2) and mean CE increase (CE with the reconstruction spliced in minus clean);
    right, mean CE increase within deciles of per-token nMSE, one line per layer.
    Columns: layer, sae_nmse, ce_increase (``position.lm_vs_sae_loss`` output)."""
    _need(tokens, "layer", "sae_nmse", "ce_increase", name="tokens")
    layers = sorted(tokens.layer.unique())
    pal = dict(zip(layers, sns.color_palette("viridis", len(layers))))
    fig, axs = _fig(11, 4.2, ncols=2)
    per = tokens.groupby("layer")[["sae_nmse", "ce_increase"]].mean().reset_index()
    ax = axs[0, 0]
    ax.plot(per.layer, per.ce_increase, "o-", color=sns.color_palette("colorblind")[0], label="CE increase (nats)")
    ax.set(xlabel="layer", ylabel="mean CE increase (nats)", title="per layer")
    ax2 = ax.twinx()
    ax2.plot(per.layer, per.sae_nmse, "s--", color=sns.color_palette("colorblind")[1], label="nMSE")
    ax2.set(ylabel="mean per-token nMSE")
    ax2.grid(False)
    ax.legend(handles=ax.get_lines() + ax2.get_lines(), loc="best")
    rows = []
    for L, g in tokens.groupby("layer"):
        q = pd.qcut(g.sae_nmse.rank(method="first"), min(n_bins, len(g)), labels=False)
        b = g.groupby(q).agg(nmse=("sae_nmse", "mean"), ce=("ce_increase", "mean"))
        rows.append(b.assign(layer=L))
    b = pd.concat(rows)
    sns.lineplot(b, x="nmse", y="ce", hue="layer", hue_order=layers, palette=pal, marker="o", errorbar=None,
                 ax=axs[0, 1])
    axs[0, 1].set(xscale="log", xlabel="per-token nMSE (decile mean)", ylabel="mean CE increase (nats)",
                  title="per token, binned by nMSE")
    _no_minor_labels(axs[0, 1])
    return _save(fig, path)


def l0_distribution(l0: pd.DataFrame, path) -> Path:
    """Distribution over tokens of the number of active latents (per-token L0), one curve per
    architecture: TopK is a spike at k, BatchTopK / ReLU-L1 spread. Columns: architecture, l0 (one row
    per token) [, count: then rows are (architecture, l0) histogram bins]."""
    _need(l0, "architecture", "l0", name="l0")
    d = l0 if "count" in l0.columns else l0.groupby(["architecture", "l0"]).size().rename("count").reset_index()
    d = d.assign(frac=d["count"] / d.groupby("architecture")["count"].transform("sum"))
    order = _order(d.architecture)
    pal = _palette(order)
    fig, axs = _fig(7.5, 4)
    ax = axs[0, 0]
    grid = np.arange(int(d.l0.min()) - 1, int(d.l0.max()) + 2)  # zero bins around each value: a spike shows
    for a in order:
        g = d[d.architecture == a].groupby("l0").frac.sum().reindex(grid, fill_value=0.0)
        ax.step(g.index, g.to_numpy(), where="mid", color=pal[a], label=a, lw=1.3)
    ax.set(xlabel="active latents per token (L0)", ylabel="fraction of tokens", title="Per-token L0")
    ax.legend()
    return _save(fig, path)


def synthetic_benchmark(scores: pd.DataFrame, path) -> Path:
    """Ground-truth scores on the synthetic world, one panel per score (F1, MCC, explained variance,
    absorption, hierarchy recovery): per SAE configuration the mean over seeds (bar) and each seed (dots);
    sae-lens' own trainers hatched, the flat control world dotted. Columns: source (ours / saelens / flat),
    architecture, seed and the scores."""
    cols = [("f1", "F1"), ("mcc", "MCC"), ("explained_variance", "explained variance"), ("absorption", "absorption"),
            ("hierarchy_recovery", "hierarchy recovery")]
    cols = [(c, t) for c, t in cols if c in scores]
    _need(scores, "source", "architecture", "f1", name="scores")
    tag = {"ours": "", "saelens": " (sae-lens)", "flat": " (flat world)"}
    d = scores.assign(label=[a + tag.get(s, f" ({s})") for s, a in zip(scores.source, scores.architecture)])
    ours = _order(d[d.source == "ours"].architecture)
    labels = ours + [lab for lab in dict.fromkeys(d.label) if lab not in ours]
    pal = _palette(ours)
    color = {lab: pal.get(lab.split(" ")[0], "0.5") for lab in labels}
    hatch = {lab: "//" if "sae-lens" in lab else ".." if "flat" in lab else "" for lab in labels}
    fig, axs = _fig(2.6 * len(cols), 0.9 + 0.28 * len(labels), ncols=len(cols))
    y = np.arange(len(labels))
    for ax, (c, title) in zip(axs[0], cols):
        mean = d.groupby("label")[c].mean()
        ax.barh(y, [mean.get(lab, np.nan) for lab in labels], color=[color[lab] for lab in labels],
                hatch=[hatch[lab] for lab in labels], edgecolor="white", alpha=0.85)
        for i, lab in enumerate(labels):
            v = d.loc[d.label == lab, c].to_numpy()
            ax.plot(v, np.full(len(v), i), "o", color="black", ms=3)
        ax.set_yticks(y, labels if ax is axs[0, 0] else [""] * len(labels))
        ax.invert_yaxis()
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set(title=title)
        if c in ("f1", "mcc", "explained_variance"):
            ax.set_xlim(0, 1)
    return _save(fig, path)


FIGURES = {f.__name__: f for f in [frontier_nmse_l0, frontier_ce_l0, dead_latents_training, treesae_levels,
                                   hierarchy_correlation, position_activation_layers, position_deciles,
                                   position_intervention, matching_enc_vs_dec, matching_by_factor, matching_layers,
                                   matching_all_pairs, decoder_umap, lm_vs_sae_loss, l0_distribution,
                                   synthetic_benchmark]}
ANIMATIONS = {"decoder_umap_layers": decoder_umap_animation}
