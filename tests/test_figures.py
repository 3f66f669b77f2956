from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from treesae import figures as F
from treesae.registry import names
from treesae.stages.figures import SPECS

ARCHS = ["topk", "batchtopk", "relu", "tree"]


def tables():
    rng = np.random.default_rng(0)
    metrics = pd.DataFrame([dict(architecture=a, l0=l0, d_sae=4608, nmse=0.3 / np.sqrt(l0) * (1 + i / 10),
                                 ce_increase=1 / l0 * (1 + i / 5)) for i, a in enumerate(ARCHS) for l0 in (16, 32, 64)])
    curves = pd.DataFrame([dict(variant=v, tokens=t, dead_fraction=np.exp(-t / 1e5) * f)
                           for v, f in [("AuxK + tied", 0.1), ("no AuxK", 0.6)] for t in range(0, 400_001, 50_000)])
    levels = pd.DataFrame([dict(variant=v, level=l, width=128 * 2 ** l, l0=8 * 2 ** l, dead_fraction=0.01 * l,
                                nmse_cumulative=0.5 / (l + 1) if v != "stacked" else np.nan)
                           for v in ["stacked", "residual", "tree"] for l in range(3)])
    coact = pd.DataFrame({"variant": np.repeat(["tree", "topk"], 50), "p_parent_given_child": rng.random(100),
                          "p_parent_given_child_shuffled": rng.random(100) * 0.2})
    cosine = pd.DataFrame({"variant": np.repeat(["tree", "topk"], 50), "cos": rng.random(100),
                           "cos_shuffled": rng.normal(0, 0.1, 100)})
    profile = pd.DataFrame([dict(layer=L, position=p, mean_act=1 + (p == 0) * 20, l0=30 + p % 3, nmse=0.2 + 0.01 * L,
                                 resid_norm=10 * (1 + 5 * (p == 0)) + L) for L in (3, 6, 9) for p in range(16)])
    dec = []
    for L in (3, 6):
        for inc in (True, False):
            q = np.sort(rng.random((20, 9)) * (3 if inc else 1), axis=1)
            dec.append(pd.DataFrame(q, columns=[f"q{i}" for i in range(10, 100, 10)]).assign(
                feature=np.arange(20), include_first=inc, layer=L))
    deciles = pd.concat(dec, ignore_index=True)
    interv = pd.DataFrame([dict(layer=L, condition=c, resid_norm=10 + L + k, sae_nmse=0.1 + 0.05 * k,
                                lm_loss=3.8 + k, lm_loss_spliced=4.0 + k + 0.01 * L)
                           for k, c in enumerate(["clean", "permute"]) for L in range(0, 30, 6)])
    feats = pd.DataFrame({"cos_dec": np.clip(rng.normal(0.6, 0.25, 400), -0.2, 1),
                          "cos_enc": np.clip(rng.normal(0.5, 0.25, 400), -0.2, 1)})
    factors = pd.DataFrame({"factor": ["corpus", "seed", "k"], "n_pairs": [2, 3, 4], "dec_shared": [0.1, 0.5, 0.3],
                            "dec_shared_min": [0.05, 0.4, 0.2], "dec_shared_max": [0.15, 0.6, 0.4],
                            "enc_shared": [0.08, 0.4, np.nan], "dec_mean_cos": [0.3, 0.7, 0.5]})
    layers = pd.DataFrame({"layer": range(8), "dec_shared": np.linspace(0.2, 0.5, 8),
                           "enc_shared": np.linspace(0.1, 0.4, 8), "dec_mean_cos": np.linspace(0.4, 0.7, 8)})
    emb = pd.DataFrame({"x": rng.normal(size=300), "y": rng.normal(size=300), "sae": np.repeat(["a", "b", "c"], 100),
                        "layer": np.tile([3, 6], 150)})
    names = [f"{a}-k{k}" for a in ("topk", "relu", "tree") for k in (16, 32)]
    allp = pd.DataFrame([dict(a=a, b=b, architecture_a=a.split("-")[0], architecture_b=b.split("-")[0],
                              dec_shared=rng.random(), enc_shared=np.nan if "tree" in a + b else rng.random())
                         for i, a in enumerate(names) for b in names[i + 1:] if (a, b) != ("topk-k16", "relu-k32")])
    toks = pd.DataFrame({"layer": np.repeat([3, 6, 9], 200), "sae_nmse": rng.random(600) * 0.5,
                         "ce_increase": rng.normal(0.1, 0.2, 600)})
    l0 = pd.DataFrame({"architecture": np.repeat(["topk", "batchtopk", "relu"], 300),
                       "l0": np.concatenate([np.full(300, 32), rng.poisson(32, 300), rng.poisson(40, 300)])})
    synth = pd.DataFrame([dict(source=s, architecture=a, seed=sd, f1=rng.random(), mcc=rng.random(),
                               explained_variance=rng.random(), absorption=rng.random() * 0.2)
                          for s, archs in (("ours", ARCHS), ("saelens", ["batchtopk"])) for a in archs for sd in (0, 1)])
    return {"synthetic_benchmark": (synth,), "frontier_nmse_l0": (metrics,), "frontier_ce_l0": (metrics,), "dead_latents_training": (curves,),
            "treesae_levels": (levels,), "hierarchy_correlation": (coact, cosine),
            "position_activation_layers": (profile,), "position_deciles": (deciles,),
            "position_intervention": (interv,), "matching_enc_vs_dec": (feats,), "matching_by_factor": (factors,),
            "matching_layers": (layers,), "matching_all_pairs": (allp,), "decoder_umap": (emb,), "lm_vs_sae_loss": (toks,), "l0_distribution": (l0,)}


def test_position_figure_drops_an_l0_row_that_is_constant_by_construction(tmp_path):
    """TopK's L0 is k at every position: the figure shows three rows, not a flat L0 line; a varying L0 keeps its row."""
    from PIL import Image
    profile = tables()["position_activation_layers"][0]
    varying = Image.open(F.position_activation_layers(profile, tmp_path / "v.png")).size
    fixed = Image.open(F.position_activation_layers(profile.assign(l0=32.0), tmp_path / "f.png")).size
    assert fixed[0] == varying[0] and 0.65 < fixed[1] / varying[1] < 0.85, (fixed, varying)


def test_registry_covers_every_slug():
    own = [s for s, sp in SPECS.items() if sp.draw.__name__ == s]  # a spec per function named after its slug
    assert set(own) == set(tables()) and len(own) == 16
    assert all(SPECS[s].draw.__doc__ and "Columns" in SPECS[s].draw.__doc__ for s in own)


@pytest.mark.parametrize("slug", sorted(tables()))
def test_figure_writes_deterministic_file(slug, tmp_path):
    args = tables()[slug]
    a = SPECS[slug].draw(*args, tmp_path / f"a/{slug}.png")
    b = SPECS[slug].draw(*args, tmp_path / f"b/{slug}.png")
    assert a.exists() and a.stat().st_size > 1000
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("suffix", [".svg", ".pdf"])
def test_vector_formats_deterministic(suffix, tmp_path):
    (metrics,) = tables()["frontier_nmse_l0"]
    a = F.frontier_nmse_l0(metrics, tmp_path / f"a{suffix}")
    b = F.frontier_nmse_l0(metrics, tmp_path / f"b{suffix}")
    assert a.stat().st_size > 1000 and a.read_bytes() == b.read_bytes()


def test_animation_and_missing_columns(tmp_path):
    (emb,) = tables()["decoder_umap"]
    a = F.decoder_umap_animation(emb, tmp_path / "a.gif")
    b = F.decoder_umap_animation(emb, tmp_path / "b.gif")
    assert a.read_bytes() == b.read_bytes() and a.read_bytes()[:3] == b"GIF"
    with pytest.raises(KeyError, match="nmse"):
        F.frontier_nmse_l0(pd.DataFrame({"architecture": ["topk"], "l0": [3]}), tmp_path / "x.png")


@pytest.mark.parametrize("slug, suffix", [("frontier_nmse_l0", ".png"), ("decoder_umap_animation", ".gif")])
def test_a_full_disk_names_the_figure_and_keeps_the_old_one(slug, suffix, tmp_path, monkeypatch):
    import errno
    import os
    args = tables()["decoder_umap" if slug == "decoder_umap_animation" else slug]
    draw = getattr(F, slug)
    out = draw(*args, tmp_path / f"{slug}{suffix}")
    old = out.read_bytes()
    real = os.fsync

    def full(fd):  # the disk fills while the new figure is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=rf"Could not write {tmp_path}/{slug}\{suffix} \(No space left on device\).*Free disk space"):
        draw(*args, out)
    monkeypatch.setattr(os, "fsync", real)
    assert out.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def _lab(hex_color, sim=np.eye(3)):
    """CIELAB (D65) of an sRGB colour, optionally through a colour-vision simulation on linear RGB."""
    c = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    c = np.clip(sim @ np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4), 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    f = np.cbrt(xyz / [0.95047, 1.0, 1.08883])
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


# Machado et al. (2009), severity 1: deuteranopia, protanopia
CVD = [np.array([[0.367, 0.861, -0.228], [0.280, 0.673, 0.047], [-0.012, 0.043, 0.969]]),
       np.array([[0.152, 1.053, -0.205], [0.115, 0.786, 0.099], [-0.004, -0.048, 1.052]])]


def _min_distance(colors, sim=np.eye(3)):
    labs = [_lab(c, sim) for c in colors]
    return min(np.linalg.norm(a - b) for i, a in enumerate(labs) for b in labs[i + 1:])


def test_one_palette_distinct_architectures():
    """Each architecture has its own colour and marker, by its rank in display order (with one spare for the
    next architecture); any two colours differ by at least 30 CIELAB units (seaborn's colorblind
    orange/vermilion differ by 26, pink/light pink by 21) and 15 under deuteranopia and protanopia, where
    the markers tell them apart too."""
    assert len(F.COLORS) == len(F.MARKERS) > len(names())
    assert len({F.color(a) for a in names()}) == len({F.marker(a) for a in names()}) == len(names())
    assert _min_distance(["#DE8F05", "#D55E00"]) < 30 and _min_distance(["#CC78BC", "#FBAFE4"]) < 30
    assert _min_distance(F.COLORS) >= 30
    assert all(_min_distance(F.COLORS, sim) >= 15 for sim in CVD)
    assert F.color("tree (given)") == F.color("tree") != F.color("topk") == F.color("topk-brown-L15-d1152-k32-s0")
    assert F.color("position") == "0.5"


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Every figure of the test tables, kept open after it is saved (so it can be inspected)."""
    figs, save, out = {}, F._save, tmp_path_factory.mktemp("figs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "_save", lambda fig, path: figs.setdefault(Path(path).stem, fig) and save(fig, path))
        for slug, args in tables().items():
            SPECS[slug].draw(*args, out / f"{slug}.png")
    return figs


def test_figures_fit_the_column_with_legible_text(drawn):
    """At most WIDTH inches wide, so the HTML (8.1 in) and PDF (7.4 in) columns never shrink them, and no
    text under MIN_PT points."""
    import matplotlib.text
    for slug, fig in drawn.items():
        assert fig.get_size_inches()[0] <= F.WIDTH + 1e-9, slug
        small = {(t.get_text(), t.get_fontsize()) for t in fig.findobj(matplotlib.text.Text)
                 if t.get_visible() and t.get_text().strip() and t.get_fontsize() < F.MIN_PT}
        assert not small, (slug, small)


def test_no_twin_axes_no_legend_on_data_titles_in_words(drawn):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    for slug, fig in drawn.items():
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        boxes = [tuple(np.round(ax.get_position().bounds, 4)) for ax in axes]
        assert len(set(boxes)) == len(boxes), f"{slug}: two axes on one spot (a twin axis)"
        assert all(ax.get_legend() is None for ax in axes), f"{slug}: a legend inside a panel"
        FigureCanvasAgg(fig)  # saved and closed: draw it again to measure
        fig.draw_without_rendering()
        r = fig.canvas.get_renderer()
        for leg in fig.legends:
            assert not any(leg.get_window_extent(r).overlaps(ax.get_window_extent(r)) for ax in axes), slug
        words = [t for ax in axes for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]
        assert not [t for t in words if "_" in t], (slug, words)


def _rgb(c):
    import matplotlib.colors as mc
    return np.round(np.asarray(mc.to_rgba(c))[:3], 3)


def test_architecture_colours_are_the_palette_everywhere(drawn):
    """In every figure that shows architectures, each one's data is drawn in its palette colour and every
    other colour is a grey (no second palette)."""
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    shown = {"frontier_nmse_l0": ARCHS, "l0_distribution": ["topk", "batchtopk", "relu"], "synthetic_benchmark": ARCHS,
             "treesae_levels": ["stacked", "residual", "tree"], "hierarchy_correlation": ["tree", "topk"]}
    palette = {tuple(_rgb(F.color(a))) for a in names()}
    for slug, archs in shown.items():
        used = set()
        for ax in drawn[slug].axes:
            for a in ax.findobj(lambda a: isinstance(a, (Line2D, Patch, Collection))):
                cs = ([a.get_color()] if isinstance(a, Line2D) else [a.get_facecolor()] if isinstance(a, Patch)
                      else list(a.get_facecolors()))
                used |= {tuple(_rgb(c)) for c in cs if not isinstance(c, str) or c != "none"}
        assert {tuple(_rgb(F.color(a))) for a in archs} <= used, slug
        assert not [c for c in used - palette if np.ptp(c) > 0.02], f"{slug}: a colour outside the palette"
