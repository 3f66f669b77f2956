"""Building the browser from stage outputs: load_inputs over save_sae directories, a metrics table and
an on-disk activation cache; the CLI's --help."""
import numpy as np
import pandas as pd
import pytest

from treesae import browser
from treesae.saes import save_sae

from browser_support import LAYER, write_cache


def test_load_inputs_and_build(tmp_path, saes, corpus, model):
    tokens, acts, split = corpus
    write_cache(tmp_path / "activations" / "toy", tokens, {LAYER: acts}, split)
    for name in ("topk_s0", "tree"):
        save_sae(saes[name], tmp_path / "saes" / name, metadata={"hook_name": f"blocks.{LAYER}.hook_resid_pre"})
    (tmp_path / "saes" / "not_an_sae").mkdir()
    # as treesae.stages.train.evaluate writes it: index "name", a "corpus" column, no layer needed here
    pd.DataFrame({"architecture": ["tree", "topk", "topk"], "corpus": ["toy"] * 3, "nmse": [0.2, 0.1, 0.3]},
                 index=pd.Index(["tree", "topk_s0", "other"], name="name")).to_csv(tmp_path / "metrics.csv")
    loaded, meta, caches = browser.load_inputs(tmp_path / "saes", tmp_path / "metrics.csv", tmp_path / "activations")
    assert list(loaded) == ["topk_s0", "tree"] and list(meta.index) == ["topk_s0", "tree"]
    assert meta["layer"].tolist() == [LAYER, LAYER]  # from the sae-lens hook_name
    assert set(caches) == {"toy"}
    data = browser.extract(loaded, meta, caches, model, n_top_contexts=3)
    np.testing.assert_array_equal(data["saes"]["tree"]["parent_of"], saes["tree"].parent_of.numpy())
    np.testing.assert_array_equal(data["sources"][0]["ctx_ids"], np.flatnonzero(split == 1))
    assert data["sources"][0]["corpus"] == "toy"
    site = browser.write_site(data, tmp_path / "site")
    assert (site / "index.html").exists() and (site / "data" / "saes" / "tree" / "f0.js").exists()
    pd.DataFrame({"name": ["tree"], "corpus": ["toy"]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(KeyError, match="no row for SAEs"):
        browser.load_inputs(tmp_path / "saes", tmp_path / "short.csv", tmp_path / "activations")
    with pytest.raises(FileNotFoundError, match="no SAEs"):
        browser.load_inputs(tmp_path / "nothing", tmp_path / "metrics.csv", tmp_path / "activations")


def test_cli_help(capsys):
    from treesae.browser.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--match-group" in capsys.readouterr().out
