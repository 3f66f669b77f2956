"""The static site: layout, payloads, determinism, atomic writes."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from treesae import browser
from treesae.browser.site import CTX_SHARD, STATIC_FILES, _quantized, _sig, slugs, static_text

LOAD = re.compile(r'^window\.__load\(("(?:[^"\\]|\\.)*"),(.*)\);\n$', re.S)


def read_js(path: Path):
    """(key, payload) of a data file written as window.__load(key, payload);"""
    m = LOAD.match(path.read_text(encoding="utf-8"))
    assert m, f"{path} is not a window.__load(...) call"
    return json.loads(m.group(1)), json.loads(m.group(2))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_payloads(site, data, saes):
    for name in STATIC_FILES:
        assert (site / name).read_text() == static_text(name).replace("{{title}}", "TreeSAE feature browser")
    key, index = read_js(site / "data" / "index.js")
    assert key == "index" and [s["name"] for s in index["saes"]] == list(saes)
    by = {s["name"]: s for s in index["saes"]}
    assert by["tree"]["tree"] and not by["topk_s0"]["tree"]
    assert by["topk_s0"]["meta"]["nmse"] == pytest.approx(0.1234567) and by["relu"]["meta"]["nmse"] is None
    _, vocab = read_js(site / "data" / "vocab.js")
    assert vocab == {str(k): v for k, v in data["vocab"].items()}
    src = data["sources"][0]
    n_ctx = len(src["tokens"])
    for c0 in range(0, n_ctx, CTX_SHARD):
        key, ctx = read_js(site / "data" / "ctx" / "s0" / f"c{c0 // CTX_SHARD}.js")
        assert key == f"ctx/0/{c0 // CTX_SHARD}" and ctx["start"] == c0
        np.testing.assert_array_equal(ctx["tokens"], src["tokens"][c0:c0 + CTX_SHARD])
    for name, sae in saes.items():
        s = by[name]
        F = sae.W_dec.shape[0]
        d = site / "data" / "saes" / s["slug"]
        key, lst = read_js(d / "list.js")
        assert key == f"list/{name}" and lst["n"] == F
        st = data["saes"][name]["stats"]
        np.testing.assert_allclose(lst["cols"]["freq"], st["freq"], rtol=1e-3)
        assert ("parent" in lst["cols"]) == (name == "tree") and ("level" in lst["cols"]) == (name == "tree")
        if name == "tree":
            assert lst["cols"]["parent"] == sae.parent_of.tolist()
            for col, key in (("pgiven", "parent_given"), ("pcos", "parent_cos")):
                got, want = np.array(lst["cols"][col], dtype=float), st[key]
                np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)  # NaN (no parent, or never fires) as null
        seen = []
        for k in range(s["n_shards"]):
            key, shard = read_js(d / f"f{k}.js")
            assert key == f"shard/{name}/{k}" and shard["start"] == k * s["shard_size"]
            seen += [f["i"] for f in shard["features"]]
            for rec in shard["features"]:
                f = rec["i"]
                n_ctx_f = int((st["top_val"][f] > 0).sum())
                assert len(rec["x"]) == n_ctx_f
                for j, (c, a, p, v, pairs) in enumerate(rec["x"]):
                    assert c == st["top_ctx"][f, j] and a == st["top_start"][f, j] and p == st["top_pos"][f, j]
                    assert v == pytest.approx(st["top_val"][f, j], rel=1e-3)
                    win = np.zeros(st["top_win"].shape[2])
                    win[pairs[0::2]] = pairs[1::2]
                    np.testing.assert_allclose(win, st["top_win"][f, j], rtol=5e-3, atol=1e-9)
                prof = np.array(rec["p"][1:]) * rec["p"][0] / 1000
                np.testing.assert_allclose(prof, st["pos_mean"][f], atol=1e-3 * st["pos_mean"][f].max() + 1e-12)
                if rec["h"]:
                    h = np.zeros_like(st["hist"][f])
                    h[rec["h"][0]:rec["h"][0] + len(rec["h"]) - 1] = rec["h"][1:]
                    np.testing.assert_array_equal(h, st["hist"][f])
                m = {row[0]: row[1:] for row in rec["m"]}
                for o, mm in data["matches"][name].items():
                    row = m[[x["name"] for x in index["saes"]].index(o)]
                    assert row[0::2] == mm["idx"][f].tolist()
                    np.testing.assert_allclose(np.array(row[1::2]) / 1000, mm["cos"][f], atol=6e-4)
                assert rec["lp"][0::2] == data["saes"][name]["logits"]["pos_ids"][f].tolist()
        assert seen == list(range(F))


def test_deterministic_and_atomic(data, tmp_path):
    a = browser.write_site(data, tmp_path / "a", shard_size=16)
    b = browser.write_site(data, tmp_path / "b", shard_size=16)
    ta, tb = tree_bytes(a), tree_bytes(b)
    assert ta == tb and len(ta) > 10
    # rewriting over an existing site replaces it whole (stale files go) and leaves no temp dirs
    (a / "stale.js").write_text("old")
    browser.write_site(data, a, shard_size=16)
    assert tree_bytes(a) == tb
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    # a failed write leaves the old site in place
    bad = dict(data, saes={"x": {"broken": True}})
    with pytest.raises(Exception):
        browser.write_site(bad, a)
    assert tree_bytes(a) == tb and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    # a killed run's temp dirs (their pid is gone) are removed by the next write; a live run's are not
    for left in (".a.tmp-999999999", ".a.old-999999999", f".a.tmp-{os.getppid()}"):
        (tmp_path / left).mkdir()
    browser.write_site(data, a, shard_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.tmp-{os.getppid()}", "a", "b"]


def test_extract_is_deterministic(saes, meta, heldout, model, data, tmp_path):
    acts, tokens, rows = heldout
    again = browser.extract(saes, meta, lambda n, r: browser.Source(acts, tokens, rows), model,
                            n_top_contexts=6, batch_size=3 * 24, window=(8, 4))
    a = browser.write_site(data, tmp_path / "a")
    b = browser.write_site(again, tmp_path / "b")
    assert tree_bytes(a) == tree_bytes(b)


def test_helpers():
    assert _sig([0.123456, 1234567.0, 0.0, 2.0, float("nan"), -1e-7]) == [0.1235, 1235000, 0, 2, None, -1e-7]
    assert _quantized([[0.0, 0.5, 2.0], [0, 0, 0]]) == [[2, 0, 250, 1000], [0, 0, 0, 0]]
    assert slugs(["a/b", "a_b", "A_b", ".."]) == {"a/b": "a_b", "a_b": "a_b_2", "A_b": "A_b_3", "..": "sae"}


def test_no_external_resources():
    """The app references nothing outside the site: no http(s) URLs, CDNs or web fonts."""
    for name in STATIC_FILES:
        text = static_text(name)
        text = text.replace("xmlns='http://www.w3.org/2000/svg'", "")  # an XML namespace name, never fetched
        assert not re.search(r"https?://|//cdn|@import|url\(", text), name


_GENERATE = r"""
import hashlib, sys, pathlib
import pandas as pd, torch
torch.set_num_threads(1)
from treesae import browser   # no treesae.saes here: it imports sae-lens, slow to start twice


class SAE(torch.nn.Module):  # TopK codes; with parent_of, a two-level tree
    def __init__(self, d_sae, seed, tree=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, 16, generator=g))
        self.parent_of = torch.cat([torch.full((d_sae // 3,), -1), torch.arange(d_sae - d_sae // 3) // 2]) if tree else None
        self.levels = [slice(0, d_sae // 3), slice(d_sae // 3, d_sae)] if tree else [slice(0, d_sae)]

    def encode(self, x):
        pre = x @ self.W_dec.T
        top = pre.topk(3, dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, top.values.relu())


class Unembed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.W_U = torch.randn(16, 50, generator=torch.Generator().manual_seed(1))
        self.ln_final = torch.nn.Module()
        self.ln_final.w = torch.linspace(0.5, 1.5, 16)


g = torch.Generator().manual_seed(0)
acts, tokens = torch.randn(12, 20, 16, generator=g), torch.randint(0, 50, (12, 20), generator=g).numpy()
saes = {"a": SAE(40, 0), "t": SAE(24, 1, tree=True), "r": SAE(30, 2)}
meta = pd.DataFrame({"layer": 0, "corpus": "x", "score": [0.5, float("nan"), 1.0]}, index=list(saes))
data = browser.extract(saes, meta, lambda n, r: (acts, tokens), Unembed(), tokenizer=lambda i: f" w{i}\n",
                       n_top_contexts=4, window=(3, 2))
site = browser.write_site(data, pathlib.Path(sys.argv[1]), shard_size=8)
h = hashlib.sha256()
for p in sorted(site.rglob("*")):
    if p.is_file():
        h.update(str(p.relative_to(site)).encode() + b"\0" + p.read_bytes())
print(h.hexdigest())
"""


def test_deterministic_across_processes(tmp_path):
    """Two fresh interpreters (different hash seeds) write byte-identical sites."""
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-c", _GENERATE, str(tmp_path / f"site{seed}")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONHASHSEED=seed, OMP_NUM_THREADS="1"))
             for seed in ("0", "1")]
    digests = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        digests.append(out.strip().splitlines()[-1])
    assert digests[0] == digests[1] and len(digests[0]) == 64
    assert tree_bytes(tmp_path / "site0") == tree_bytes(tmp_path / "site1")
