import numpy as np
import pandas as pd
import pytest

from treesae import figures as F

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
    factors = pd.DataFrame({"factor": ["dataset", "seed", "k"], "n_pairs": [2, 3, 4], "dec_shared": [0.1, 0.5, 0.3],
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


def test_registry_covers_every_slug():
    assert set(F.FIGURES) == set(tables()) and len(F.FIGURES) == 16
    assert all(f.__doc__ and "Columns" in f.__doc__ for f in F.FIGURES.values())


@pytest.mark.parametrize("slug", sorted(tables()))
def test_figure_writes_deterministic_file(slug, tmp_path):
    args = tables()[slug]
    a = F.FIGURES[slug](*args, tmp_path / f"a/{slug}.png")
    b = F.FIGURES[slug](*args, tmp_path / f"b/{slug}.png")
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
