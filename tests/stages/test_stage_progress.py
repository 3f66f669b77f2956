"""Stages 03-05 show progress on stderr, every bar ends at 100% of what it counted, and the results are those
computed without it."""
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from test_matching_resume import N_PAIRS, fake_saes
from treesae.analysis import matching as M
from treesae.saes import build
from treesae.stages import hierarchy, matching, position


def last_lines(err: str) -> dict:
    """{bar description: its last state} from tqdm's stderr."""
    out = {}
    for line in re.split(r"[\r\n]+", err):
        if ": " in line:
            out[line.split(": ")[0]] = line
    return out


def assert_finished(capsys, descs):
    lines = last_lines(capsys.readouterr().err)
    assert set(lines) == set(descs), lines
    for d, line in lines.items():
        assert "100%|" in line and "/s]" in line, line  # done, with a rate


def same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    else:
        assert (a != b).nnz == 0  # sparse codes


class ReLUSAE(torch.nn.Module):
    def __init__(self, d=32, d_sae=48, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc, self.W_dec = torch.randn(d, d_sae, generator=g) / 6, torch.randn(d_sae, d, generator=g) / 8

    def encode(self, x):
        return torch.relu(x @ self.W_enc)

    def decode(self, z):
        return z @ self.W_dec


def test_position(tmp_path, tiny_model, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16, 32)).astype(np.float16)
    tok = rng.integers(0, 101, (5, 16))
    setup = dict(position=position.PositionParams(batch_contexts=7, batch_size=2), rows=np.arange(40),
                 lm_rows=np.arange(5), cache=SimpleNamespace(layer=lambda L: x, tokens=tok), out=tmp_path)
    saes = {1: ReLUSAE(), 2: ReLUSAE(seed=2)}
    for fn, args in ((position.profile, ()), (position.deciles, ()), (position.position_features, ()),
                     (position.intervention, (tiny_model,)), (position.lm_vs_sae, (tiny_model,))):
        same(fn(setup, *args, saes, progress=True), fn(setup, *args, saes, progress=False))
    assert_finished(capsys, [f"position {d}" for d in ("profile", "deciles", "features", "intervention", "lm_vs_sae")])


def test_hierarchy(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    saes = {"topk": build("topk", d_in=16, d_sae=24, k=3), "tree": build("tree", d_in=16, widths=[8, 16], k=2)}
    monkeypatch.setattr(hierarchy, "read_saes", lambda names: {n: saes[n] for n in names})
    X = torch.randn(500, 16)
    setup = dict(hierarchy=hierarchy.HierarchyParams(batch_size=128, min_count=1), out=tmp_path,
                 runs=pd.DataFrame({"architecture": list(saes)}, index=list(saes)),
                 frontier=pd.DataFrame({"architecture": list(saes), "k": [3, 2]}, index=list(saes)))
    Z = hierarchy.encode(setup, saes, X, progress=True)
    same(Z, hierarchy.encode(setup, saes, X, progress=False))
    for fn, args in ((hierarchy.parents, (saes, Z)), (hierarchy.scores, (saes, Z)),
                     (hierarchy.level_correlation, (saes, Z)), (hierarchy.levels, (saes, Z, X)),
                     (hierarchy.l0_per_token, (X,))):
        same(fn(setup, *args, progress=True), fn(setup, *args, progress=False))
    assert_finished(capsys, [f"hierarchy {d}" for d in ("encode", "parents", "scores", "level correlation", "levels",
                                                         "l0 per token")])


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_matching_counts_only_the_pairs_it_computes(tmp_path, n_jobs):
    saes, store = fake_saes(), matching.PairCache(tmp_path / "cache")
    ref = M.compare_saes(saes)
    M.compare_saes(saes, pairs=list(ref[["a", "b"]].itertuples(index=False))[:4], cache=store)  # 4 pairs cached
    bar = SimpleNamespace(total=0, n=0)
    bar.update = lambda: setattr(bar, "n", bar.n + 1)
    pd.testing.assert_frame_equal(M.compare_saes(saes, cache=matching.CountedCache(store, bar), n_jobs=n_jobs), ref)
    assert bar.total == bar.n == N_PAIRS - 4
