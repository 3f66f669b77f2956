"""Stage 06: each figure declared once (``SPECS``), drawn from the tables alone; the smoke workspace's outputs."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from treesae import figures as F, paths
from treesae.stages import common, figures as S, numbers as N


def _workspace():
    root = paths.root()
    if root == paths.REPO or not (root / "paper" / "numbers.json").exists():
        pytest.skip("no built workspace (set TREESAE_ROOT to build/smoke after `make smoke`)")
    return root


def test_workspace_figures_and_numbers():
    """The smoke workspace's stage 06 and numbers outputs: every slug with data drawn; numbers.json is what
    numbers() gives from the tables."""
    import yaml
    root = _workspace()
    tables = S.load_tables()
    for slug, sp in S.SPECS.items():
        f = root / "figures" / f"{slug}{sp.suffix}"
        assert f.stat().st_size > 1000 if S.has_data(tables, slug) else not f.exists(), slug
    p = yaml.safe_load((root / "params.yaml").read_text())
    again = common.tidy(N.numbers(N.load_tables(p["matching"]["factors"]), p["profile"]))
    assert json.loads((root / "paper" / "numbers.json").read_text()) == again
    for key in ("frontier.topk.k16.nmse", "dead.topk.default", "dead.topk.no_aux_k", "matching.factor.seed.dec_shared",
                "hierarchy.tree.score", "hierarchy.tree.score_given", "position.sink_norm_ratio_layer9", "n_saes",
                "n_tokens_harvested", "model", "harvest.layers", "synth.topk.f1", "synth.tree.vs_topk.f1.lo",
                "synth.saelens.matryoshka.mcc", "train.dead_window_tokens", "train.lr"):
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


def test_specs_name_real_tables_functions_and_params():
    """Every spec reads tables stage 06 loads, draws with a figures function that documents its columns, and
    passes only FiguresParams fields; a slug names its file (showyourwork: slug = file = label)."""
    loadable = {"metrics", "curves"} | set(common.TABLES)
    for slug, sp in S.SPECS.items():
        assert set(sp.tables) <= loadable, slug
        assert getattr(F, sp.draw.__name__) is sp.draw and "Columns" in sp.draw.__doc__, slug
        assert set(sp.params) <= set(S.FiguresParams.__dataclass_fields__), slug
        assert sp.suffix in (".png", ".gif") and re.fullmatch(r"[a-z0-9_]+", slug)
    assert [s for s in S.SPECS if S.SPECS[s].draw.__name__ == s] == [s for s in S.SPECS if s not in (
        "decoder_tsne", "lm_vs_sae_loss_no_position", "decoder_umap_layers")]  # the rest reuse a function


def test_the_paper_shows_exactly_the_paper_figures():
    """paper/template.md's figure(...) calls are the specs marked ``paper``, each once."""
    calls = re.findall(r'figure\("([a-z0-9_]+)"', (paths.REPO / "paper" / "template.md").read_text())
    assert sorted(calls) == sorted(S.paper_slugs()) and len(calls) == len(set(calls))


def test_dvc_lists_every_table_a_spec_reads():
    import yaml
    deps = set(yaml.safe_load((paths.REPO / "dvc.yaml").read_text())["stages"]["figures"]["deps"])
    files = {f"data/{common.TABLES[n]}" for sp in S.SPECS.values() for n in sp.tables if n in common.TABLES}
    assert files | {"data/train/metrics.csv", "data/train/curves"} <= deps


def test_numbers_stage_lists_every_table_it_reads():
    import yaml
    deps = set(yaml.safe_load((paths.REPO / "dvc.yaml").read_text())["stages"]["numbers"]["deps"])
    assert {f"data/{common.TABLES[n]}" for n in N.TABLES} | {"data/train/metrics.csv", "data/train/curves"} <= deps


def test_notebook_06_draws_every_figure():
    """A spec without a drawing cell in notebook 06 would fail only at stage 06's listing, after the whole
    pipeline; this catches it at once."""
    nb = json.loads((paths.REPO / "notebooks" / "06_paper_figures.ipynb").read_text())
    drawn = [m for c in nb["cells"] if c["cell_type"] == "code"
             for m in re.findall(r'stage\.draw\(setup, tables, "([a-z_0-9]+)"\)', "".join(c["source"]))]
    assert drawn == S.slugs()
