"""Stage 06 glue: the paper's numbers from the runs table and the stage metrics (no figures drawn here)."""
import json

import numpy as np
import pandas as pd
import pytest

from treesae import paths
from treesae.stages import common, figures as S

from synthetic_runs import TRAIN, metrics_table


def tables():
    m = metrics_table()
    curves = pd.concat([pd.DataFrame({"tokens": [409600, 819200, 1_000_000], "dead_fraction": [0.1, d, d]}).assign(
        run=n, variant=v, architecture="topk") for n, v, d in [("base", "default", 0.01), ("na", "no_aux_k", 0.4)]])
    corpora = pd.DataFrame([dict(corpus=c, model="smollm2-135m", n_layers=30, d_model=576, layers="3,9,15,21",
                                 context_len=128, n_contexts=4096, n_tokens=524288, n_train_tokens=471040,
                                 n_heldout_tokens=53248, n_documents=n) for c, n in (("brown", 500), ("pydocs", 5141))])
    return {"metrics": m, "curves": curves, "position.corpora": corpora,
            "position.metrics": {"sink_norm_ratio_layer9": 6.5, "layers": [3, 9, 15, 21]},
            "matching.metrics": {"factor.seed.dec_shared": 0.31, "most_changing_factor": "corpus"},
            "hierarchy.metrics": {"tree.score": 0.7, "topk.score": 0.1}}


def test_option_tag_and_run_groups():
    assert S.option_tag("{}") == "default" and S.option_tag('{"aux_k": false}') == "no_aux_k"
    assert S.option_tag('{"geometric_median_init": false}') == "no_geometric_median_init"
    m = metrics_table()
    assert len(S.frontier(m)) == 21
    assert sorted(S.recipe_runs(m).variant) == ["default", "no_aux_k", "no_geometric_median_init", "no_tied_init"]


def test_numbers_keys_and_values():
    n = S.numbers(tables(), {"train": TRAIN | {"optim": {"n_tokens": 1_000_000, "batch_size": 4096, "lr": 3e-4,
                                                          "lr_end": 3e-5}}, "profile": "default"})
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
    assert f"run.{top32.name}.kl_score" in n
    t = common.tidy(n)
    assert json.dumps(t, sort_keys=True, allow_nan=False) == json.dumps(common.tidy(S.numbers(tables(), {
        "train": TRAIN | {"optim": {"n_tokens": 1_000_000, "batch_size": 4096, "lr": 3e-4, "lr_end": 3e-5}},
        "profile": "default"})), sort_keys=True)


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


def _workspace():
    root = paths.root()
    if root == paths.REPO or not (root / "paper" / "numbers.json").exists():
        pytest.skip("no built workspace (set TREESAE_ROOT to build/smoke after `make smoke`)")
    return root


def test_workspace_figures_and_numbers():
    """The smoke workspace's stage 06 outputs: every slug drawn; numbers.json is what numbers() gives."""
    import yaml
    root = _workspace()
    for slug in S.slugs():
        assert any((root / "figures" / f"{slug}{x}").stat().st_size > 1000 for x in (".png", ".gif")
                   if (root / "figures" / f"{slug}{x}").exists()), slug
    p = yaml.safe_load((root / "params.yaml").read_text())
    setup = dict(train=p["train"], profile=p["profile"])
    again = common.tidy(S.numbers(S.load_tables(setup), setup))
    assert json.loads((root / "paper" / "numbers.json").read_text()) == again
    for key in ("frontier.topk.k16.nmse", "dead.topk.default", "dead.topk.no_aux_k", "matching.factor.seed.dec_shared",
                "hierarchy.tree.score", "hierarchy.tree.score_given", "position.sink_norm_ratio_layer9", "n_saes",
                "n_tokens_harvested", "model", "harvest.layers", "synth.topk.f1", "synth.tree.vs_topk.f1.lo",
                "synth.saelens.matryoshka.mcc"):
        assert key in again, key
    assert np.isfinite(again["hierarchy.topk.score"])


def test_a_profile_without_an_architecture_draws_no_figure_of_it(tmp_path, monkeypatch):
    """No multi-level SAE trained (the default profile): treesae_levels is not drawn, listing does not ask
    for it and removes a stale copy; a figure with data is still required."""
    levels = pd.DataFrame({"variant": ["topk"], "level": [0], "width": [8], "l0": [1.0], "dead_fraction": [0.0]})
    t = {"metrics": pd.DataFrame(), "hierarchy.levels": levels, "matching.layer_pairs": pd.DataFrame()}
    assert not S.has_data(t, "treesae_levels")
    assert S.has_data({**t, "hierarchy.levels": levels.assign(variant="tree")}, "treesae_levels")
    (tmp_path / "treesae_levels.png").write_bytes(b"stale")
    monkeypatch.setattr(S, "slugs", lambda: ["treesae_levels", "matching_layers"])
    assert S.listing({"out": tmp_path}, t).empty and not (tmp_path / "treesae_levels.png").exists()
    t["matching.layer_pairs"] = pd.DataFrame({"layer": [3]})
    with pytest.raises(FileNotFoundError, match="matching_layers was not drawn"):
        S.listing({"out": tmp_path}, t)


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
    n = S.numbers(dict(t, metrics=m.assign(converged=True)), {})
    assert n["verdict.treesae_ranking"] == V.SUPPORTED and set(V.CLAIMS) == {k.split(".")[1] for k in n if k.startswith("verdict.")}


def test_notebook_06_draws_every_figure():
    """A slug added to treesae.figures without a drawing cell in notebook 06 would fail only at stage 06's
    listing, after the whole pipeline; this catches it at once."""
    import re
    nb = json.loads((paths.REPO / "notebooks" / "06_paper_figures.ipynb").read_text())
    drawn = {m for c in nb["cells"] if c["cell_type"] == "code"
             for m in re.findall(r'stage\.draw\(setup, tables, "([a-z_0-9]+)"\)', "".join(c["source"]))}
    assert drawn == set(S.slugs())


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
