import json
import math

import numpy as np
import pandas as pd

from treesae.stages import common

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
