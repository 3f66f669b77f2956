import json
import math

import numpy as np
import pandas as pd
import pytest

from treesae.stages import common

from synthetic_runs import metrics_table


def test_grids_base_and_pick():
    m = metrics_table()
    assert common.base_run(m).name == "topk-brown-L15-d4608-k32-s0"
    assert common.grid_sets(m)["topk-brown-L15-d4608-k32-s0"] == {"base", "frontier"}
    assert len(common.pick(m, ["frontier"])) == 21
    assert set(common.pick(m, ["seed"]).seed) == {1, 2}
    assert list(common.pick(m, ["frontier"], architecture="tree").k) == [16, 32, 64]
    with pytest.raises(ValueError, match="exactly one"):
        common.base_run(m.drop(common.base_run(m).name))


def test_layer_runs_one_per_layer():
    m = metrics_table()
    r = common.layer_runs(m)
    assert list(r.layer) == [3, 9, 15, 21] and (r.architecture == "topk").all() and (r.corpus == "brown").all()
    assert "topk-brown-L15-d4608-k32-s0" in r.index  # the base run serves layer 15
    with pytest.raises(ValueError, match="no relu SAE"):
        common.layer_runs(m, "relu")


def test_tidy_rounds_and_cleans():
    t = common.tidy({"a": np.float32(0.1234567891), "b": float("nan"), "c": np.int64(3), "d": [np.float64(1 / 3), np.inf],
                     "e": np.bool_(True), "f": "x", 7: None})
    assert t == {"a": 0.123457, "b": None, "c": 3, "d": [0.333333, None], "e": True, "f": "x", "7": None}
    assert isinstance(t["c"], int) and isinstance(t["e"], bool)
    json.dumps(t, allow_nan=False)
    assert common.tidy(123456789.0) == 123457000.0 and math.isclose(common.tidy(-1.5e-12), -1.5e-12)


def test_write_table_is_deterministic(tmp_path):
    df = pd.DataFrame({"x": [1 / 3, 2.0, np.nan], "y": ["a", "b", "c"]})
    a, b = common.write_table(df, tmp_path / "a.csv"), common.write_table(df.copy(), tmp_path / "b.csv")
    assert a.read_bytes() == b.read_bytes() == b"x,y\n0.333333,a\n2,b\n,c\n"
    v = common.write_metrics(tmp_path / "m.json", {"b": np.float64(2 / 3), "a": 1})
    assert v == {"a": 1, "b": 0.666667} and (tmp_path / "m.json").read_text().startswith('{\n  "a": 1')
