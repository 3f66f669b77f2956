"""One plotting function per paper figure, named after its slug.

Each takes the stage tables (DataFrames) and an output path, writes one file (.png, .svg or .pdf by
the suffix) and returns the path. Output is deterministic: fixed size and dpi, no timestamps or
software tags in the file, a fixed SVG hash salt, no bootstrapped error bars. ``style()`` sets the
one look used everywhere; ``treesae.stages.figures.SPECS`` says which tables each one draws. Each docstring names the metric shown
and the table columns it needs (definitions: ``treesae.metrics``; position 0 excluded unless stated).

Legibility rules every figure follows: an architecture has one colour and one marker everywhere
(the ``COLORS`` and ``MARKERS`` entry at its rank in display order, ``treesae.registry.names()``); other series are told apart by shade, line style and marker, never by an
architecture's colour; a figure is at most ``WIDTH`` inches wide, the column the HTML and PDF show it
at, so its text (at least ``MIN_PT`` points) is never shrunk below that; legends sit outside the data.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.animation import FuncAnimation, PillowWriter  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from .io import fsync_replace, write_bytes_atomic, write_error  # noqa: E402
from .registry import names  # noqa: E402

DPI = 150
WIDTH, MIN_PT = 7.0, 8  # inches: the column width (the PDF prints 7.4, the HTML 8.1); points: the smallest text
# Paul Tol's "bright" scheme (yellow -> Okabe-Ito orange, grey -> Tol indigo) and Tol's sand, free for the next
# architecture: colour-blind safe, no two alike. The i-th architecture in display order takes the i-th colour and marker.
COLORS = ("#332288", "#4477AA", "#E69F00", "#228833", "#AA3377", "#66CCEE", "#EE6677", "#DDCC77")
MARKERS = ("v", "o", "s", "D", "^", "P", "X", "*")
DARK, LIGHT, BACK = "#222222", "#8C8C8C", "#D9D9D9"  # series that are not architectures; background points
STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]  # (line style, marker) of the i-th such series
METADATA = {".png": {"Software": None}, ".svg": {"Date": None, "Creator": None},
            ".pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}}


def style():
    """The paper's one look (called by every figure function)."""
    sns.set_theme(context="paper", style="whitegrid")
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "svg.hashsalt": "treesae", "svg.fonttype": "path",
                         "pdf.compression": 6, "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9,
                         "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "legend.fontsize": 8.5,
                         "legend.title_fontsize": 8.5, "figure.titlesize": 10, "legend.frameon": False,
                         "lines.linewidth": 1.6, "lines.markersize": 5, "axes.prop_cycle": plt.cycler(color=[DARK])})


def _rank(arch) -> int | None:
    """Position of an architecture ("tree (given)" and "tree-..." are the tree) in display order."""
    a, order = str(arch).split(" ")[0].split("-")[0], names()
    return order.index(a) if a in order else None


def color(arch) -> str:
    """An architecture's colour; grey for anything else."""
    r = _rank(arch)
    return "0.5" if r is None else COLORS[r % len(COLORS)]


def marker(arch) -> str:
    r = _rank(arch)
    return "o" if r is None else MARKERS[r % len(MARKERS)]


def _layers(values) -> list:
    return sorted(set(values), key=lambda v: (isinstance(v, str), v))


def layer_colors(layers) -> dict:
    """Layers are ordered: a sequential map, stopped before viridis' pale yellow."""
    cmap = plt.get_cmap("viridis")
    return {L: cmap(0.8 * i / max(len(layers) - 1, 1)) for i, L in enumerate(layers)}


def _order(values, preferred=None):
    """``values`` once each: ``preferred`` first (architectures in display order by default), then the rest sorted."""
    preferred = names() if preferred is None else preferred
    vals = list(dict.fromkeys(values))
    first = [v for v in preferred if v in vals]
    return first + sorted((v for v in vals if v not in first), key=str)


def _need(df: pd.DataFrame, *cols, name="table"):
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{name} lacks columns {missing}; has {list(df.columns)}")


def _fig(h, ncols=1, nrows=1, w=WIDTH, **kw):
    style()
    return plt.subplots(nrows, ncols, figsize=(min(w, WIDTH), h), squeeze=False, layout="constrained", **kw)


def _legend(fig, handles, ncols=4, **kw):
    """One legend for the figure, below the panels (never over data)."""
    fig.legend(handles=handles, loc="outside lower center", ncols=min(ncols, len(handles)), **kw)


def _line(label, c=DARK, ls="-", m="o", **kw):
    return Line2D([], [], color=c, ls=ls, marker=m, label=label, **kw)


def _log(ax, axis="y", most=6):
    """Log axis labelled in plain numbers: the finest of 1-2-3..., 1-2-5, 1-3, 1 per decade that gives at most
    ``most`` labels (labels that do not collide), and plain ticks when a narrow range has fewer than two."""
    a = getattr(ax, f"{axis}axis")
    getattr(ax, f"set_{axis}scale")("log")
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    for subs in ((1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0), (1.0, 2.0, 5.0), (1.0, 3.0), (1.0,)):
        loc = LogLocator(base=10, subs=subs)
        if sum(lo <= t <= hi for t in loc.tick_values(lo, hi)) <= most:
            break
    if sum(lo <= t <= hi for t in loc.tick_values(lo, hi)) < 2:
        loc = MaxNLocator(4)
    a.set_major_locator(loc)
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


def _int_ticks(ax, values):
    """Integer x ticks: at the values themselves when there are a few (layers 3 and 15, not 2..16)."""
    v = sorted({int(x) for x in values})
    if len(v) <= 8:
        ax.set_xticks(v)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path) -> Path:
    """Render to memory, then write atomically (a full disk names the file and keeps the old figure)."""
    path, buf = Path(path), io.BytesIO()
    fig.savefig(buf, format=path.suffix[1:].lower(), dpi=DPI, metadata=METADATA.get(path.suffix.lower(), {}))
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def _frontier(metrics, y, ylabel, title, path, logy):
    _need(metrics, "architecture", "l0", y, name="metrics")
    m = metrics.assign(_config=metrics["k"] if "k" in metrics.columns else metrics.index,
                       _size=metrics["d_sae"] if "d_sae" in metrics.columns else 0)
    g = m.groupby(["architecture", "_size", "_config"], sort=False)  # the seeds of one configuration: mean, +-1 SD
    d = g[["l0", y]].mean().join(g[y].std().rename("sd")).reset_index()
    sizes = sorted(d._size.unique())
    fig, axs = _fig(3.6)
    ax, handles = axs[0, 0], []
    for a in _order(d.architecture):
        for s in sizes:
            r = d[(d.architecture == a) & (d._size == s)].sort_values("l0")
            if not len(r):
                continue
            ls = STYLES[sizes.index(s) % len(STYLES)][0]
            ax.plot(r.l0, r[y], color=color(a), marker=marker(a), ls=ls)
            e = r[r.sd.notna()]
            ax.errorbar(e.l0, e[y], yerr=e.sd, fmt="none", ecolor=color(a), capsize=3, lw=1)
            handles.append(_line(a if len(sizes) == 1 else f"{a}, {int(s):,} latents", color(a), ls, marker(a)))
    ax.set(xlabel="L0 (mean active latents per token)", ylabel=ylabel, title=title)
    _log(ax, "x")
    if logy:
        _log(ax, "y")
    _legend(fig, handles)
    return _save(fig, path)


def frontier_nmse_l0(metrics: pd.DataFrame, path) -> Path:
    """Reconstruction frontier: nMSE (OpenAI, sum (x - x_hat)^2 / sum x^2, held-out tokens, first
    token excluded) against L0, one line per architecture; several seeds of one (architecture, k) give
    their mean and a +-1 SD bar. Columns: architecture, l0, nmse [, k, d_sae: line style when several sizes]."""
    return _frontier(metrics, "nmse", "nMSE (log scale)", "Reconstruction error vs sparsity", path, logy=True)


def frontier_ce_l0(metrics: pd.DataFrame, path) -> Path:
    """Downstream frontier: CE increase (nats; LM cross-entropy with the reconstruction spliced in minus
    clean CE, first token excluded) against L0. Columns: architecture, l0, ce_increase [, d_sae]."""
    return _frontier(metrics, "ce_increase", "CE increase (nats)", "Downstream loss vs sparsity", path, logy=False)


def dead_latents_training(curves: pd.DataFrame, path) -> Path:
    """Dead fraction over training (fraction of latents that did not fire in the trainer's window of
    N tokens, stated by the stage) for each variant (e.g. AuxK on/off, tied init on/off): one panel per
    architecture in its colour, one line style and marker per variant (markers staggered, so equal
    curves stay visible). Columns: variant, tokens, dead_fraction [, architecture]."""
    _need(curves, "variant", "tokens", "dead_fraction", name="curves")
    panels = _order(curves.architecture) if "architecture" in curves.columns else [None]
    order = _order(curves.variant, ["default"])
    fig, axs = _fig(3.0, ncols=len(panels), w=2.6 + 2.2 * len(panels), sharey=True)
    top = max(0.05, 1.1 * float(curves.dead_fraction.max()))
    for ax, arch in zip(axs[0], panels):
        d = curves if arch is None else curves[curves.architecture == arch]
        for i, v in enumerate(order):
            g = d[d.variant == v].sort_values("tokens")
            every = max(1, len(g) // 8)
            ax.plot(g.tokens / 1e6, g.dead_fraction, color=color(arch), ls=STYLES[i % 4][0], marker=STYLES[i % 4][1],
                    ms=4.5, markevery=(i * every // len(order), every), clip_on=False, zorder=3)
        ax.set(xlabel="training tokens (millions)", ylim=(0, top), title=arch or "every run")
    axs[0, 0].set_ylabel("dead latents (fraction)")
    _legend(fig, [_line(str(v).replace("no_", "without ").replace("_", " "), DARK, *STYLES[i % 4], ms=4.5)
                  for i, v in enumerate(order)], ncols=2)
    return _save(fig, path)


def treesae_levels(levels: pd.DataFrame, path) -> Path:
    """Per-level statistics of each TreeSAE variant: width, L0 of the level, dead fraction of the level
    (never fired on the held-out tokens) and nMSE of the cumulative reconstruction from levels 0..l;
    variants are offset sideways so equal values stay visible.
    Columns: variant, level, width, l0, dead_fraction, nmse_cumulative (NaN where undefined)."""
    _need(levels, "variant", "level", "width", "l0", "dead_fraction", "nmse_cumulative", name="levels")
    order = _order(levels.variant)
    fig, axs = _fig(5.0, ncols=2, nrows=2, sharex=True)
    panels = [("width", "Latents per level", "latents (log scale)"),
              ("l0", "Active latents per token, per level", "L0 of the level"),
              ("dead_fraction", "Dead latents per level", "fraction of the level"),
              ("nmse_cumulative", "Reconstruction from levels 0 to l", "cumulative nMSE")]
    offset = 0.07 * (np.arange(len(order)) - (len(order) - 1) / 2)
    for ax, (col, title, ylabel) in zip(axs.flat, panels):
        for dx, v in zip(offset, order):
            g = levels[levels.variant == v].sort_values("level")
            ax.plot(g.level + dx, g[col], color=color(v), marker=marker(v), clip_on=False, zorder=3)
        ax.set(title=title, ylabel=ylabel)
        _int_ticks(ax, levels.level)
    axs[0, 0].set_yscale("log", base=2)
    axs[0, 0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axs[1, 0].set_ylim(bottom=0)
    for ax in axs[1]:
        ax.set_xlabel("level (0 = coarsest)")
    _legend(fig, [_line(v, color(v), m=marker(v)) for v in order])
    return _save(fig, path)


def hierarchy_correlation(coact: pd.DataFrame, cosine: pd.DataFrame, path) -> Path:
    """Hierarchy: left, co-activation P(parent active | child active) of parent-child pairs against the
    shuffled-parent baseline; right, decoder cosine of parent and child against shuffled pairs. Boxes:
    quartiles, whiskers 1.5 IQR, no outliers; parent-child in the architecture's colour, shuffled grey.
    Columns: coact: variant, p_parent_given_child, p_parent_given_child_shuffled (``coactivation``);
    cosine: variant, cos, cos_shuffled (``cross_level_decoder_cosine``)."""
    _need(coact, "variant", "p_parent_given_child", "p_parent_given_child_shuffled", name="coact")
    _need(cosine, "variant", "cos", "cos_shuffled", name="cosine")
    order = _order(list(coact.variant) + list(cosine.variant))
    wide = len(order) <= 3  # side by side; more architectures: one panel above the other, so labels fit
    fig, axs = _fig(3.0 if wide else 5.2, ncols=2 if wide else 1, nrows=1 if wide else 2)
    median = dict(color="white", lw=1.6, path_effects=[patheffects.withStroke(linewidth=3, foreground=DARK)])
    for ax, df, real, shuf, title, ylabel in [
            (axs.flat[0], coact, "p_parent_given_child", "p_parent_given_child_shuffled", "Co-activation",
             "P(parent active | child active)"),
            (axs.flat[1], cosine, "cos", "cos_shuffled", "Decoder directions", "cosine of parent and child")]:
        vs = [v for v in order if v in set(df.variant)]
        for i, v in enumerate(vs):
            for dx, col, face in ((-0.19, real, color(v)), (0.19, shuf, BACK)):
                x = df.loc[df.variant == v, col].dropna().to_numpy()
                if len(x):
                    ax.boxplot([x], positions=[i + dx], widths=0.34, patch_artist=True, showfliers=False,
                               boxprops=dict(facecolor=face, edgecolor=DARK), medianprops=median)
        ax.set_xticks(range(len(vs)), vs)
        ax.set(title=title, ylabel=ylabel, xlim=(-0.6, len(vs) - 0.4))
    _legend(fig, [Patch(facecolor=color(order[0]), edgecolor=DARK, label="parent-child pairs (architecture's colour)"),
                  Patch(facecolor=BACK, edgecolor=DARK, label="shuffled pairs (baseline)")], ncols=2)
    return _save(fig, path)


def position_activation_layers(profile: pd.DataFrame, path) -> Path:
    """SAE activations by token position and layer: mean non-zero activation, L0, nMSE (per position,
    OpenAI) and residual norm; left column all positions (position 0, the attention sink, included; log
    scale, but L0), right column from position 1. One colour and line style per layer, the first widest,
    so equal lines stay visible as dashes over a wider line. No L0 row when every layer's L0 is the same at every
    position (TopK fixes it per token: a flat line carries no data).
    Columns: layer, position, mean_act, l0, nmse, resid_norm."""
    rows = [("mean_act", "mean non-zero\nactivation"), ("l0", "active latents\n(L0)"), ("nmse", "nMSE"),
            ("resid_norm", "residual norm\n(L2)")]
    _need(profile, "layer", "position", *[c for c, _ in rows], name="profile")
    if (profile.groupby("layer").l0.agg(lambda v: v.max() - v.min()) <= 1e-6 * profile.l0.abs().max()).all():
        rows.remove(("l0", "active latents\n(L0)"))
    layers = _layers(profile.layer)
    lc = layer_colors(layers)
    fig, axs = _fig(1.85 * len(rows), ncols=2, nrows=len(rows), sharex="col")
    for j, first in enumerate([0, 1]):
        d = profile[profile.position >= first].sort_values("position")
        for i, (col, label) in enumerate(rows):
            ax = axs[i, j]
            for n, L in enumerate(layers):
                g = d[d.layer == L]
                lw = max(0.8, 1.9 - 0.45 * n)  # wider below
                ax.plot(g.position, g[col], color=lc[L], ls=STYLES[n % 4][0], lw=lw)
            if first == 0 and col != "l0":
                _log(ax)
            ax.set_ylabel(label if j == 0 else "")
        axs[0, j].set_title("All positions (log scale)" if first == 0 else "From position 1 (linear scale)")
        axs[-1, j].set_xlabel("token position")
    _legend(fig, [_line(f"layer {L}", lc[L], STYLES[n % 4][0], None) for n, L in enumerate(layers)])
    return _save(fig, path)


def position_deciles(deciles: pd.DataFrame, path) -> Path:
    """Per-latent activation deciles (quantiles 0.1..0.9 of a latent's non-zero values) with and without
    the first token: left, the median over latents of each decile (without: dots on a line; with: open
    circles, so equal values show a dot inside a circle); right, each latent's q90 with vs without
    position 0 (log-log, y = x dashed). Columns: feature, include_first, q10..q90 [, layer: one colour each]."""
    qs = [f"q{q}" for q in range(10, 100, 10)]
    _need(deciles, "feature", "include_first", *qs, name="deciles")
    d = deciles if "layer" in deciles.columns else deciles.assign(layer="all")
    layers = _layers(d.layer)
    lc = layer_colors(layers)
    fig, axs = _fig(3.4, ncols=2)
    med = d.groupby(["layer", "include_first"])[qs].median()
    ax = axs[0, 0]
    for L in layers:
        for inc, kw in ((False, dict(ls="-", ms=3.5)), (True, dict(ls="none", ms=8, mfc="none", mew=1.2))):
            if (L, inc) in med.index:
                ax.plot(range(10, 100, 10), med.loc[(L, inc)].to_numpy(), color=lc[L], marker="o", **kw)
    ax.set(xlabel="decile of a latent's non-zero activations (%)", ylabel="activation (median over latents)",
           title="Activation deciles")
    wide = d.pivot_table(index=["layer", "feature"], columns="include_first", values="q90").dropna()
    if True in wide.columns and False in wide.columns:
        ax, w = axs[0, 1], wide[(wide[True] > 0) & (wide[False] > 0)]
        for L in layers:
            g = w[w.index.get_level_values("layer") == L]
            ax.scatter(g[False], g[True], s=6, alpha=0.5, color=lc[L], lw=0, rasterized=True)
        lo, hi = float(w.min().min()), float(w.max().max())
        ax.plot([lo, hi], [lo, hi], color=LIGHT, lw=1, ls="--")
        _log(ax, "x"), _log(ax, "y")
        ax.set(xlabel="q90 without position 0", ylabel="q90 with position 0", title="Each latent's 90th percentile")
    _legend(fig, [_line(f"layer {L}", lc[L], "-", None) for L in layers]
            + [_line("first token excluded", DARK, "-", "o", ms=3.5),
               _line("first token included", DARK, "none", "o", ms=8, mfc="none")])
    return _save(fig, path)


CONDITIONS = {"clean": "clean", "permute": "rotary angles permuted", "freeze": "rotary angles frozen",
              "zero": "position embedding zeroed", "shuffle": "position embedding shuffled"}


def position_intervention(df: pd.DataFrame, path) -> Path:
    """Position intervention by layer, clean vs intervened (rotary: permuted / frozen angles; learned:
    zeroed / shuffled position embeddings): residual norm relative to the clean run's at the same layer
    (every layer), SAE nMSE (OpenAI) and CE increase when the layer's SAE is spliced in
    (lm_loss_spliced - lm_loss of the same condition; layers with an SAE); the LM's own loss per
    condition in the legend. Columns: layer, condition, resid_norm, sae_nmse, lm_loss, lm_loss_spliced."""
    _need(df, "layer", "condition", "resid_norm", "sae_nmse", "lm_loss", "lm_loss_spliced", name="intervention")
    d = df.assign(ce_increase=df.lm_loss_spliced - df.lm_loss)
    conds = _order(d.condition, list(CONDITIONS))
    ref = d[d.condition == conds[0]].set_index("layer").resid_norm  # clean, when there is one
    d["norm_ratio"] = d.resid_norm / d.layer.map(ref)
    loss = d.groupby("condition").lm_loss.first()
    shade = [DARK, "#555555", LIGHT, "#AAAAAA"]
    fig, axs = _fig(2.9, ncols=3)
    for ax, (col, title, ylabel) in zip(axs[0], [("norm_ratio", "Residual norm", f"ratio to {conds[0]}"),
                                                 ("sae_nmse", "SAE reconstruction", "nMSE"),
                                                 ("ce_increase", "SAE spliced in", "CE increase (nats)")]):
        for i, c in enumerate(conds):
            g = d[d.condition == c].dropna(subset=[col]).sort_values("layer")
            ax.plot(g.layer, g[col], color=shade[i % 4], ls=STYLES[i % 4][0], marker=STYLES[i % 4][1],
                    ms=3.5 if col == "norm_ratio" else 5 + 1.5 * i, mfc=shade[i % 4] if i == 0 else "none")
        ax.set(title=title, ylabel=ylabel, xlabel="layer")
        _int_ticks(ax, d.dropna(subset=[col]).layer)
    axs[0, 2].axhline(0, color=LIGHT, lw=0.8)
    _legend(fig, [_line(f"{CONDITIONS.get(c, c)} (LM loss {loss[c]:.2f} nats)", shade[i % 4], *STYLES[i % 4],
                        mfc=shade[i % 4] if i == 0 else "none") for i, c in enumerate(conds)], ncols=2)
    return _save(fig, path)


def matching_enc_vs_dec(features: pd.DataFrame, path, threshold: float = 0.7) -> Path:
    """Encoder vs decoder matching: histograms of the Hungarian-matched cosine by decoder rows and by
    encoder columns (shared above ``threshold``), and per latent the decoder cosine of its
    decoder match against its encoder match (hexbin counts, log colour scale). Columns: cos_dec, cos_enc."""
    _need(features, "cos_dec", "cos_enc", name="features")
    d = features.dropna(subset=["cos_enc"])
    fig, axs = _fig(3.3, ncols=2)
    bins = np.linspace(min(-0.2, float(d[["cos_dec", "cos_enc"]].min().min())), 1, 49)
    for col, c, ls, lab in [("cos_dec", DARK, "-", "decoder"), ("cos_enc", LIGHT, "--", "encoder")]:
        axs[0, 0].hist(d[col], bins=bins, histtype="step", lw=1.6, color=c, ls=ls,
                       label=f"matched by {lab}: {(d[col] > threshold).mean():.0%} above {threshold:g}")
    axs[0, 0].axvline(threshold, color=LIGHT, ls=":", lw=1)
    axs[0, 0].set(xlabel="cosine of the matched latent", ylabel="latents", title="Hungarian matches")
    ax = axs[0, 1]
    hb = ax.hexbin(d.cos_dec, d.cos_enc, gridsize=30, extent=(bins[0], 1, bins[0], 1), mincnt=1, bins="log",
                   cmap="viridis")
    fig.colorbar(hb, ax=ax, label="latents per cell")
    ax.axvline(threshold, color=LIGHT, ls=":", lw=1)
    ax.axhline(threshold, color=LIGHT, ls=":", lw=1)
    ax.set(xlabel="cosine, matched by decoder", ylabel="cosine, matched by encoder", title="Per latent")
    _legend(fig, axs[0, 0].get_legend_handles_labels()[0], ncols=2)
    return _save(fig, path)


FACTOR_WORDS = {"d_sae": "dictionary size", "options": "recipe", "aux_k": "AuxK",
                "tied_init": "tied init", "b_dec_init": "b_dec init"}


def matching_by_factor(factors: pd.DataFrame, path) -> Path:
    """Shared ratio (fraction of Hungarian-matched latents with cosine > 0.7) by the single training
    factor that differs between two SAEs, by decoder and by encoder matching; whiskers span the pairs'
    min..max. Columns: factor, dec_shared, enc_shared [, dec_shared_min, dec_shared_max, n_pairs]."""
    _need(factors, "factor", "dec_shared", "enc_shared", name="factors")
    f = factors.sort_values("dec_shared", kind="stable").reset_index(drop=True)
    fig, axs = _fig(3.2)
    ax, x = axs[0, 0], np.arange(len(f))
    ax.bar(x - 0.2, f.dec_shared, 0.4, color="#5A5A5A", label="decoder matching")
    ax.bar(x + 0.2, f.enc_shared.fillna(0), 0.4, color="#BDBDBD", label="encoder matching")
    if {"dec_shared_min", "dec_shared_max"} <= set(f.columns):
        ax.errorbar(x - 0.2, f.dec_shared, yerr=[f.dec_shared - f.dec_shared_min, f.dec_shared_max - f.dec_shared],
                    fmt="none", ecolor="black", lw=1.2, capsize=3, label="range over pairs")
    names = [FACTOR_WORDS.get(a, a.replace("_", " ")) for a in f.factor]
    if "n_pairs" in f.columns:
        names = [f"{a}\n{int(n)} pair{'s' * (n != 1)}" for a, n in zip(names, f.n_pairs)]
    ax.set_xticks(x, names)
    ax.set(ylabel="shared latents (cos > 0.7)", ylim=(0, 1),
           title="Shared latents by the one factor two SAEs differ in")
    _legend(fig, ax.get_legend_handles_labels()[0], ncols=3)
    return _save(fig, path)


def matching_layers(pairs: pd.DataFrame, path) -> Path:
    """Matching along layers: shared ratio (cos > 0.7) and mean matched cosine between SAEs of adjacent
    harvested layers (x = the lower layer), decoder (solid, small filled markers) and encoder (dashed, large
    open markers: equal values show a filled marker inside an open one).
    Columns: layer, dec_shared, enc_shared, dec_mean_cos [, series: the architecture, its colour]."""
    _need(pairs, "layer", "dec_shared", "enc_shared", "dec_mean_cos", name="pairs")
    d = pairs if "series" in pairs.columns else pairs.assign(series="all")
    order = _order(d.series)
    fig, axs = _fig(3.0, ncols=2)
    for s in order:
        g = d[d.series == s].sort_values("layer")
        axs[0, 0].plot(g.layer, g.enc_shared, color=color(s), marker=marker(s), ls="--", ms=9, mfc="none",
                       clip_on=False)
        axs[0, 0].plot(g.layer, g.dec_shared, color=color(s), marker=marker(s), ms=4.5, clip_on=False)
        axs[0, 1].plot(g.layer, g.dec_mean_cos, color=color(s), marker=marker(s), clip_on=False)
    axs[0, 0].set(ylim=(0, 1), ylabel="shared latents (cos > 0.7)", title="Shared latents, adjacent layers")
    axs[0, 1].set(ylim=(0, 1), ylabel="mean matched decoder cosine", title="Mean matched cosine")
    for ax in axs[0]:
        ax.set_xlabel("lower layer of the pair")
        _int_ticks(ax, d.layer)
    _legend(fig, [_line(s, color(s), m=marker(s)) for s in order]
            + [_line("decoder", DARK, ms=4.5), _line("encoder", DARK, "--", ms=9, mfc="none")])
    return _save(fig, path)


def matching_all_pairs(pairs: pd.DataFrame, path) -> Path:
    """Shared ratio (cos > 0.7) between every matched pair of SAEs: decoder matching below the diagonal,
    encoder matching above (blank: pair not matched, or encoder directions undefined). SAEs are ordered
    by architecture, then name; columns are numbered as the rows.
    Columns: a, b, dec_shared, enc_shared, architecture_a, architecture_b."""
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
    cell = max(0.14, min(0.32, 4.0 / n))  # inches: 8-point labels need ~0.13 per row
    fig, axs = _fig(1.2 + n * cell, w=3.4 + n * cell)  # about square cells beside 2.4 inches of names and scale
    ax = axs[0, 0]
    sns.heatmap(M, vmin=0, vmax=1, cmap="viridis", ax=ax, xticklabels=[str(i + 1) for i in range(n)],
                yticklabels=[f"{s}  {i + 1}" for i, s in enumerate(names)],
                cbar_kws=dict(label="shared latents (cos > 0.7)", shrink=0.8))
    ax.tick_params(labelsize=8, rotation=0)
    ax.tick_params(axis="x", rotation=90 if cell < 0.2 else 0)
    ax.grid(False)
    ax.set(title="Shared latents per pair of SAEs", xlabel="below the diagonal: decoder; above: encoder")
    return _save(fig, path)


def decoder_umap(emb: pd.DataFrame, path, title: str = "Decoder directions (UMAP, cosine)") -> Path:
    """2-D map (UMAP or t-SNE, ``decoder_embedding``) of unit decoder rows of several SAEs: one panel per
    SAE, its rows in its architecture's colour over every SAE's rows in light grey. Columns: x, y, sae."""
    _need(emb, "x", "y", "sae", name="embedding")
    order = _order(emb.sae, [])
    nc = min(3, len(order))
    nr = -(-len(order) // nc)
    fig, axs = _fig(0.5 + 2.2 * nr, ncols=nc, nrows=nr, sharex=True, sharey=True)
    for ax, s in zip(axs.flat, order):
        g = emb[emb.sae == s]
        ax.scatter(emb.x, emb.y, s=1.5, color=BACK, lw=0, rasterized=True)
        ax.scatter(g.x, g.y, s=3, color=color(s), lw=0, rasterized=True)
        ax.set(xticks=[], yticks=[])
        ax.set_title(s, fontsize=8.5)
    for ax in axs.flat[len(order):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)


def decoder_umap_animation(emb: pd.DataFrame, path, frame: str = "layer", fps: int = 2) -> Path:
    """The layer-by-layer decoder map as a GIF: one frame per value of ``frame`` (x, y shared axes), one
    colour per SAE. Columns: x, y, sae, <frame>."""
    _need(emb, "x", "y", "sae", frame, name="embedding")
    frames = sorted(emb[frame].unique())
    order = _order(emb.sae, [])
    pal = dict(zip(order, sns.color_palette("colorblind", len(order))))
    fig, axs = _fig(5, w=5)
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
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # Pillow takes the format from the suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        anim.save(tmp, writer=PillowWriter(fps=fps), dpi=80)
        fsync_replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    finally:
        plt.close(fig)
    return path


def lm_vs_sae_loss(tokens: pd.DataFrame, path, n_bins: int = 10) -> Path:
    """LM loss vs SAE loss per token and layer: per layer the mean CE increase (CE with the reconstruction
    spliced in minus clean) and the mean per-token nMSE (||x - x_hat||^2 / ||x||^2), each on its own axis;
    then the mean CE increase within deciles of per-token nMSE, one line per layer.
    Columns: layer, sae_nmse, ce_increase (``position.lm_vs_sae_loss`` output)."""
    _need(tokens, "layer", "sae_nmse", "ce_increase", name="tokens")
    layers = _layers(tokens.layer)
    lc = layer_colors(layers)
    per = tokens.groupby("layer")[["sae_nmse", "ce_increase"]].mean().reset_index()
    fig, axs = _fig(2.9, ncols=3)
    for ax, col, title, ylabel in [(axs[0, 0], "ce_increase", "Downstream cost", "mean CE increase (nats)"),
                                   (axs[0, 1], "sae_nmse", "Reconstruction error", "mean per-token nMSE")]:
        ax.plot(per.layer, per[col], color=LIGHT, lw=1, zorder=1)
        ax.scatter(per.layer, per[col], c=[lc[L] for L in per.layer], s=36, zorder=2)
        ax.set(title=title, ylabel=ylabel, xlabel="layer")
        _int_ticks(ax, per.layer)
    rows = []
    for L, g in tokens.groupby("layer"):
        q = pd.qcut(g.sae_nmse.rank(method="first"), min(n_bins, len(g)), labels=False)
        rows.append(g.groupby(q).agg(nmse=("sae_nmse", "mean"), ce=("ce_increase", "mean")).assign(layer=L))
    b, ax = pd.concat(rows), axs[0, 2]
    for n, L in enumerate(layers):
        g = b[b.layer == L]
        ax.plot(g.nmse, g.ce, color=lc[L], ls=STYLES[n % 4][0], marker=STYLES[n % 4][1], ms=4)
    ax.set(xlabel="per-token nMSE (bin mean)", ylabel="mean CE increase (nats)", title="Tokens by nMSE decile")
    _log(ax, "x", most=4)
    _legend(fig, [_line(f"layer {L}", lc[L], *STYLES[n % 4], ms=4) for n, L in enumerate(layers)])
    return _save(fig, path)


def l0_distribution(l0: pd.DataFrame, path) -> Path:
    """Distribution over tokens of the number of active latents (per-token L0), one panel per
    architecture (shared x, own y scale; dotted: the mean): TopK is a spike at k, BatchTopK / ReLU-L1
    spread. Columns: architecture, l0 (one row per token) [, count: then rows are (architecture, l0)
    histogram bins]."""
    _need(l0, "architecture", "l0", name="l0")
    d = l0 if "count" in l0.columns else l0.groupby(["architecture", "l0"]).size().rename("count").reset_index()
    d = d.assign(frac=d["count"] / d.groupby("architecture")["count"].transform("sum"))
    order = _order(d.architecture)
    nc = 1 if len(order) <= 3 else 2
    nr = -(-len(order) // nc)
    fig, axs = _fig(0.8 + 1.25 * nr, ncols=nc, nrows=nr, sharex=True)
    grid = np.arange(int(d.l0.min()) - 1, int(d.l0.max()) + 2)  # zero bins around each value: a spike shows
    for ax in axs.flat[len(order):]:
        ax.set_visible(False)
    for ax, a in zip(axs.flat, order):
        g = d[d.architecture == a].groupby("l0").frac.sum().reindex(grid, fill_value=0.0)
        mean = float((g.index * g).sum())
        ax.fill_between(g.index, g.to_numpy(), step="mid", color=color(a), alpha=0.3, lw=0)
        ax.step(g.index, g.to_numpy(), where="mid", color=color(a), lw=1.4)
        ax.axvline(mean, color=DARK, ls=":", lw=1)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("fraction\nof tokens" if ax in axs[:, 0] else "")
        ax.set_title(f"{a}: mean L0 {mean:.1f}", loc="left")
        ax.set_xlabel("active latents per token (L0)" if ax in axs[-1] or ax is axs.flat[len(order) - 1] else "")
        ax.xaxis.set_tick_params(labelbottom=True)
    return _save(fig, path)


def synthetic_benchmark(scores: pd.DataFrame, path) -> Path:
    """Ground-truth scores on the synthetic world, one panel per score (F1, MCC, explained variance,
    absorption, hierarchy recovery): per SAE configuration the mean over seeds (bar) and each seed (open
    dots); sae-lens' own trainers hatched, the flat control world dotted. Columns: source (ours / saelens /
    flat), architecture, seed and the scores."""
    cols = [("f1", "F1"), ("mcc", "MCC"), ("explained_variance", "explained\nvariance"), ("absorption", "absorption"),
            ("hierarchy_recovery", "hierarchy\nrecovery")]
    cols = [(c, t) for c, t in cols if c in scores]
    _need(scores, "source", "architecture", "f1", name="scores")
    tag = {"ours": "", "saelens": " (sae-lens)", "flat": " (flat world)"}
    d = scores.assign(label=[a + tag.get(s, f" ({s})") for s, a in zip(scores.source, scores.architecture)])
    ours = _order(d[d.source == "ours"].architecture)
    labels = ours + [lab for lab in dict.fromkeys(d.label) if lab not in ours]
    hatch = {lab: "///" if "sae-lens" in lab else "..." if "flat" in lab else "" for lab in labels}
    fig, axs = _fig(1.1 + 0.19 * len(labels), ncols=len(cols), sharey=True)
    y = np.arange(len(labels))
    for ax, (c, title) in zip(axs[0], cols):
        mean = d.groupby("label")[c].mean()
        ax.barh(y, [mean.get(lab, np.nan) for lab in labels], color=[color(lab) for lab in labels],
                hatch=[hatch[lab] for lab in labels], edgecolor="white", lw=0)
        for i, lab in enumerate(labels):
            v = d.loc[d.label == lab, c].to_numpy()
            ax.plot(v, np.full(len(v), i), "o", mfc="white", mec=DARK, mew=0.9, ms=3.5)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set(title=title, xlim=(0, 1) if c in ("f1", "mcc", "explained_variance") else (None, None))
        ax.xaxis.set_major_locator(MaxNLocator(3))
    axs[0, 0].set_yticks(y, labels)
    axs[0, 0].invert_yaxis()
    _legend(fig, [Patch(facecolor="0.55", label="ours: mean over seeds"),
                  _line("one seed", DARK, "none", "o", mfc="white", ms=3.5),
                  Patch(facecolor="0.55", hatch="///", edgecolor="white", label="sae-lens' trainer"),
                  Patch(facecolor="0.55", hatch="...", edgecolor="white", label="flat world (control)")])
    return _save(fig, path)
