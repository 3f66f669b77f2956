"""Stage 08 (ground truth): its parameters are validated, every SAE is scored once and an interrupted run
resumes, and the summary carries the differences with intervals that the paper's verdict reads."""
import json

import pytest

from treesae import synthetic as S
from treesae.stages import synthetic as stage

TINY = dict(world=dict(d_in=32, n_features=96, n_roots=4, target_l0=5.0), architectures=["topk", "tree"],
            references=["batchtopk"], controls=["tree"], seeds=[0, 1], d_sae=64, k=5, n_tokens=10240, train_tokens=4096,
            eval_tokens=2048, batch_size=512)


@pytest.mark.parametrize("bad, words", [
    (dict(architectures=["topkk"]), "unknown ['topkk']"),
    (dict(references=["relu"]), "sae-lens references"),
    (dict(controls=["relu"]), "not in synthetic.architectures"),
    (dict(seeds=[0]), "at least 2 distinct seeds"),
    (dict(k=64), "must be below d_sae"),
    (dict(n_tokens=100), "at least one batch"),
    (dict(world=dict(n_roots=99)), "lower n_roots"),
    (dict(recipes=dict(flat=dict(architectures=["topk"], config={}))), "reserved"),
    (dict(recipes=dict(free=dict(normalize_decoder=False))), "must be {architectures"),
    (dict(recipes=dict(free=dict(architectures=["relu"], config={}))), "['relu'] not in synthetic.architectures"),
    (dict(recipes=dict(fold=dict(architectures=["tree"], config=dict(rescale_acts_by_decoder_norm=True)))),
     "synthetic.recipes.fold.config for tree: TreeConfig has no field(s) ['rescale_acts_by_decoder_norm']"),
    (dict(recipes=dict(fold=dict(architectures=["topk"], config=dict(rescale_acts_by_decoder_norm=True)))),
     "rescale_acts_by_decoder_norm needs normalize_decoder=False"),
])
def test_bad_parameters_name_the_problem(bad, words):
    with pytest.raises(ValueError, match=None) as e:
        stage.SyntheticParams(**{**TINY, **bad})
    assert words in str(e.value)


def test_scores_each_sae_once_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TREESAE_ROOT", str(tmp_path))
    s = stage.setup(dict(threads=1), TINY)
    first = stage.train(s, progress=False)
    assert len(first) == 2 * 2 + 2 + 2 and set(first.source) == {"ours", "saelens", "flat"}
    assert first[["f1", "mcc", "explained_variance", "absorption"]].notna().all().all()

    done = sorted((s["out"] / "runs").glob("*.json"))
    (done[0]).unlink()  # as if interrupted before the last SAE was scored
    trained = []
    real = S.train_ours
    monkeypatch.setattr(S, "train_ours", lambda *a, **k: trained.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(S, "train_reference", lambda *a, **k: trained.append(a[0]) or pytest.fail("retrained"))
    again = stage.train(s, progress=False)
    assert len(trained) == 1  # only the missing SAE
    assert again.equals(first)  # and it comes back identical (same seeds, same batches)
    capsys.readouterr()
    stage.train(s, progress=True)
    out, err = capsys.readouterr()
    assert "synthetic SAEs" in err and "8/8" in err and "sae/s" in err  # a bar with count and rate on stderr
    assert out.count(" f1 ") == 8  # one line per SAE, with its scores

    out = stage.summarize(s, again)
    saved = json.loads((s["out"] / "metrics.json").read_text())
    assert saved["tree.vs_topk.f1.lo"] <= saved["tree.vs_topk.f1"] <= saved["tree.vs_topk.f1.hi"]
    assert {"topk.f1", "topk.f1.sd", "saelens.batchtopk.mcc", "flat.tree.hierarchy_recovery", "world.depth",
            "true_l0"} <= set(out)
    assert abs(out["flat.tree.hierarchy_recovery"]) < 0.1  # the flat control is at chance
    assert "seconds" not in stage.summary(again).columns  # outputs hold no timings (determinism)


def test_a_recipe_trains_its_architectures_again_with_its_fields(tmp_path, monkeypatch):
    """The recipe factor: a recipe's SAEs differ from the default's only in the recipe's config fields, and the
    summary reports them beside the default with the difference's interval; a null recipe is dropped."""
    monkeypatch.setenv("TREESAE_ROOT", str(tmp_path))
    fields = dict(normalize_decoder=False, rescale_acts_by_decoder_norm=True, decoder_init_norm=0.1, geometric_median_init=False)
    p = {**TINY, "references": [], "controls": [], "recipes": {"fold": dict(architectures=["topk"], config=fields), "free": None}, "workers": 1}
    s = stage.setup(dict(threads=1), p)
    assert list(s["synthetic"].recipes) == ["fold"]
    seen = []
    real = S.train_ours
    monkeypatch.setattr(S, "train_ours", lambda *a, **k: seen.append((a[0], k["extra"].get(a[0]))) or real(*a, **k))
    scores = stage.train(s, progress=False)
    assert sorted(zip(scores.source, scores.architecture)) == sorted([("ours", "topk"), ("ours", "tree")] * 2 + [("fold", "topk")] * 2)
    assert sorted((e or {}).get("rescale_acts_by_decoder_norm", False) for a, e in seen if a == "topk") == [False, False, True, True]
    out = stage.summarize(s, scores)
    assert {"recipe.fold.topk.f1", "recipe.fold.topk.vs_default.f1.lo", "recipe_default.normalize_decoder"} <= set(out)
    assert out["recipe_default.normalize_decoder"] is True and out["recipes"] == {"fold": fields}
    assert out["recipe.fold.topk.f1"] != out["topk.f1"]


def test_a_scored_sae_is_reused_only_with_the_same_parameters_and_code(monkeypatch):
    p = stage.SyntheticParams(**TINY)
    before = p.fingerprint()
    assert before == stage.SyntheticParams(**TINY).fingerprint()
    assert before != stage.SyntheticParams(**{**TINY, "k": 4}).fingerprint()
    monkeypatch.setattr(stage, "CODE", stage.CODE[:-1])  # as if the code of the SAEs (saes/) were different
    assert p.fingerprint() != before


def test_workers_change_the_wall_time_not_the_scores(tmp_path, monkeypatch):
    scores = {}
    for workers in (1, 2):
        monkeypatch.setenv("TREESAE_ROOT", str(tmp_path / str(workers)))
        s = stage.setup(dict(threads=2), {**TINY, "workers": workers})
        stage.train(s, progress=False)
        scores[workers] = (s["out"] / "scores.csv").read_bytes()
    assert scores[1] == scores[2]  # each SAE trains and is scored on one thread, in whichever process
