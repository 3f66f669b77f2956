"""The numbers stage: the paper's numbers and verdicts from the runs table and the stage metrics."""
import json

import numpy as np
import pandas as pd
import pytest

from treesae.stages import common, numbers as S

from synthetic_runs import metrics_table


def tables():
    m = metrics_table()
    curves = pd.concat([pd.DataFrame({"tokens": [409600, 819200, 1_000_000], "dead_fraction": [0.1, d, d]}).assign(
        run=n, variant=v, architecture="topk") for n, v, d in [("base", "default", 0.01), ("na", "no_aux_k", 0.4)]])
    corpora = pd.DataFrame([dict(corpus=c, model="smollm2-135m", n_layers=30, d_model=576, layers="3,9,15,21",
                                 context_len=128, n_contexts=4096, n_tokens=524288, n_train_tokens=471040,
                                 n_heldout_tokens=53248, n_documents=n) for c, n in (("brown", 500), ("pydocs", 5141))])
    config = {"optim": {"n_tokens": 1_000_000, "batch_size": 4096, "lr": 3e-4, "lr_end": 3e-5, "dead_after_tokens": 100_000}}
    return {"metrics": m, "curves": curves, "position.corpora": corpora, "train.config": config,
            "position.metrics": {"sink_norm_ratio_layer9": 6.5, "layers": [3, 9, 15, 21]},
            "matching.metrics": {"factor.seed.dec_shared": 0.31, "most_changing_factor": "corpus"},
            "hierarchy.metrics": {"tree.score": 0.7, "topk.score": 0.1},
            "architectures": {"tree": {"n_levels": 3, "parent_loss_coef": 10.0}, "relu": {"l1_coef_by_k": {16: 0.6}}}}


def test_numbers_keys_and_values():
    n = S.numbers(tables(), "default")
    m = metrics_table()
    top32 = m.loc["topk-brown-L15-d4608-k32-s0"]
    assert n["frontier.topk.k32.nmse"] == pytest.approx(top32.nmse) and n["base.nmse"] == n["frontier.topk.k32.nmse"]
    assert n["frontier.topk.k32.nmse_vs_topk"] == 1.0
    assert n["dead.topk.default"] == pytest.approx(top32.dead_fraction) and n["dead.topk.no_aux_k"] == 0.5
    assert {"dead.topk.no_tied_init", "dead.topk.no_geometric_median_init", "recipe.no_aux_k.nmse"} <= set(n)
    assert n["recipe.default.nmse"] == n["base.nmse"]
    assert n["dead_training.topk.no_aux_k.final"] == 0.4 and n["dead_training.topk.default.max"] == 0.1
    assert n["n_saes"] == len(m) == 32 and n["n_architectures"] == 7
    assert n["n_tokens_harvested"] == 2 * 524288 and n["model"] == "smollm2-135m"
    assert n["harvest.layers"] == [3, 9, 15, 21] and n["harvest.layers_text"] == "3, 9, 15, 21"
    assert n["harvest.pydocs.n_documents"] == 5141 and n["profile"] == "default"
    assert n["train.dead_window_tokens"] == 100_000 and n["train.tokens_per_sae"] == 1_000_000
    assert n["frontier.ks"] == [16, 32, 64] and n["frontier.architectures"][:2] == ["relu", "topk"]
    assert n["frontier.best_nmse.k32"] in m.architecture.values and n["treesae.best_variant"] in ("stacked", "residual", "tree")
    assert "levels.tree.k32.level2.nmse_cumulative" in n and "levels.stacked.k32.level2.nmse_cumulative" not in n
    assert {"seed.s0.nmse", "seed.s2.nmse", "seed.nmse_std", "corpus.pydocs.nmse", "corpus.brown.nmse",
            "size.d9216.nmse", "layer.L3.ce_increase"} <= set(n)
    assert n["position.sink_norm_ratio_layer9"] == 6.5 and n["matching.factor.seed.dec_shared"] == 0.31
    assert n["hierarchy.tree.score"] == 0.7
    assert n["arch.tree.parent_loss_coef"] == 10.0 and n["arch.tree.n_levels"] == 3 and "arch.relu.l1_coef_by_k" not in n
    assert f"run.{top32.name}.kl_score" in n
    t = common.tidy(n)
    assert json.dumps(t, sort_keys=True, allow_nan=False) == json.dumps(common.tidy(S.numbers(tables(), "default")),
                                                                        sort_keys=True)


def test_nmse_at_l0_interpolates_log_log_without_extrapolating():
    assert S.nmse_at_l0([10, 40], [0.4, 0.1], 20) == pytest.approx(0.2)  # nmse = 4 / l0 is a line in log-log
    assert S.nmse_at_l0([40, 10], [0.1, 0.4], 40) == pytest.approx(0.1)
    assert np.isnan(S.nmse_at_l0([10, 40], [0.4, 0.1], 64)) and np.isnan(S.nmse_at_l0([], [], 16))
    n = S.numbers(tables())
    assert n["frontier.topk.l0_32.nmse_vs_topk"] == pytest.approx(1.0)
    v = n["treesae.best_variant_at_l0"]
    ratios = [n[k] for k in n if k.startswith(f"frontier.{v}.l0_") and k.endswith("nmse_vs_topk")]
    assert len(ratios) == 3 and n["treesae.best_variant_at_l0_nmse_vs_topk"] == pytest.approx(np.mean(ratios))
    best = n["frontier.best_nmse.l0_32"]
    assert all(n[f"frontier.{best}.l0_32.nmse"] <= n[f"frontier.{a}.l0_32.nmse"] for a in n["frontier.architectures"])


def test_numbers_needs_only_the_runs_table():
    n = S.numbers({"metrics": metrics_table()})
    assert n["frontier.tree.k64.l0"] == 64 and "model" not in n and not any(k.startswith("position.") for k in n)


def test_claims_count_converged_saes_only():
    from treesae import verdicts as V
    m = metrics_table()
    rep = m[m.grids.str.contains("frontier") & (m.k == 32)].copy()  # a second seed of every architecture at k 32
    rep.index = [n.replace("-s0", "-s1") for n in rep.index]
    rep["seed"] = 1
    m = pd.concat([m, rep[~rep.index.isin(m.index)]])
    plant = {"topk": 0.10, "batchtopk": 0.11, "residual": 0.15, "tree": 0.20, "stacked": 0.25}
    for a, v in plant.items():
        m.loc[(m.architecture == a) & (m.k == 32), "fvu"] *= 0  # planted: exact per-architecture values
        m.loc[(m.architecture == a) & (m.k == 32), "fvu"] += v + 0.001 * m.seed
    t = dict(tables(), metrics=m.assign(converged=False))
    out = S.claims(t)
    assert {d["verdict"] for d in out.values()} == {V.NOT_TESTABLE}
    assert all("0 of" in d["basis"] for c, d in out.items() if c != "treesae_ranking_ground_truth")
    assert out["treesae_ranking_ground_truth"]["basis"] == "stage 08 not run"  # its SAEs are not the LM's
    out = S.claims(dict(t, metrics=m.assign(converged=True)))
    assert out["treesae_ranking"]["verdict"] == V.SUPPORTED and out["treesae_ranking"]["best_variant"] == "residual"
    flat = dict(t, metrics=m.assign(converged=m.architecture != "residual"))  # the best variant is not converged
    assert S.claims(flat)["treesae_ranking"]["best_variant"] == "tree"
    n = S.numbers(dict(t, metrics=m.assign(converged=True)))
    assert n["verdict.treesae_ranking"] == V.SUPPORTED and set(V.CLAIMS) == {k.split(".")[1] for k in n if k.startswith("verdict.")}


def test_claim_a_on_ground_truth_reads_the_synthetic_scores():
    from treesae import verdicts as V
    ev = {"topk": 0.86, "batchtopk": 0.89, "stacked": 0.40, "residual": 0.85, "tree": 0.87}  # planted, 2 seeds each
    scores = pd.DataFrame([dict(source="ours", architecture=a, seed=s, explained_variance=v + 0.001 * s)
                           for a, v in ev.items() for s in (0, 1)] +
                          [dict(source="flat", architecture="tree", seed=0, explained_variance=0.99)])
    t = dict(tables(), metrics=metrics_table().assign(converged=False), **{"synthetic.scores": scores,
                                                                          "synthetic.metrics": {"k": 12}})
    c = S.claims(t)["treesae_ranking_ground_truth"]
    assert c["verdict"] == V.SUPPORTED and c["best_variant"] == "tree" and c["best_flat"] == "batchtopk"
    scores.loc[scores.architecture == "tree", "explained_variance"] += 0.05  # now it beats BatchTopK too
    assert S.claims(t)["treesae_ranking_ground_truth"]["verdict"] == V.CONTRADICTED
