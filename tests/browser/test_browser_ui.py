"""The site in a real browser: headless Chromium opens it from file:// and navigates it.

Artefacts (gitignored): build/test-artifacts/browser_*.png screenshots and browser_perf.json (the
16,384-feature list's load time). Needs Debian's ``chromium``; skipped without it unless
TREESAE_REQUIRE_BROWSER=1 (then missing Chromium is a failure).
"""
import json
import os
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import torch

from treesae import browser

from cdp import Chromium, find_chromium
from browser_support import WORDS

OTHER = "topk s1/k=4"  # the second TopK SAE of the fixtures: its name needs escaping in URLs and paths
ART = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"

if find_chromium() is None and os.environ.get("TREESAE_REQUIRE_BROWSER", "0") in ("", "0"):
    pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver)", allow_module_level=True)


@pytest.fixture(scope="module")
def chrome():
    with Chromium(width=1360, height=1000) as b:
        yield b
        b.drain(0.1)
        assert b.errors == [], b.errors
        outside = [u for u in b.requests if not u.startswith(("file://", "data:", "about:", "http://127.0.0.1:"))]
        assert outside == [], f"the site requested non-local URLs: {outside}"


def url(site: Path, route: str) -> str:
    return site.as_uri() + "/index.html#" + route


def visible(s: str) -> str:
    """A token as the app shows it in a context (newline and tab made visible)."""
    return s.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def go(b, route_or_click, view, **check):
    b.eval("document.body.dataset.view = 'waiting'")
    if route_or_click.startswith("#/"):  # a route; anything else is a CSS selector to click
        b.eval(f"location.hash = {json.dumps(route_or_click)}")
    else:
        b.click(route_or_click)
    b.wait(f"document.body.dataset.view === '{view}'")


def test_navigate_index_list_feature_match(chrome, site, data):
    b = chrome
    b.open(url(site, "/"))
    b.wait("document.body.dataset.view === 'index'")
    assert b.eval("[...document.querySelectorAll('#saes tbody a.saelink')].map(a => a.textContent)") == list(data["saes"])
    assert b.eval("location.protocol") == "file:"
    # index -> SAE
    go(b, 'a.saelink[href="#/sae/topk_s0"]', "list")
    assert b.eval("document.getElementById('count').textContent") == "48 features"
    st = data["saes"]["topk_s0"]["stats"]
    n_ctx = (st["top_val"] > 0).sum(1)
    f = int(np.flatnonzero(n_ctx >= 3)[-1])
    # search narrows the list to the feature id; its row opens the feature page
    b.eval(f"(function(q){{q.value='{f}';q.dispatchEvent(new Event('input'))}})(document.getElementById('q'))")
    b.wait(f"document.querySelector('.vbody .vrow[data-f=\"{f}\"]') !== null")
    go(b, f'.vbody .vrow[data-f="{f}"]', "feature")  # a click on the row (not its link)
    assert b.eval("document.querySelector('.ftitle h1').textContent") == f"#{f}"
    assert b.eval("location.hash") == f"#/sae/topk_s0/feature/{f}"
    # top contexts: one row per context, the peak token highlighted and underlined
    src = data["sources"][0]
    vocab = data["vocab"]
    rows = b.eval("[...document.querySelectorAll('.ctx')].map(r => ({v: r.querySelector('.cval').textContent, "
                  "peak: r.querySelector('.ct.peak').textContent, on: r.querySelectorAll('.ct.on').length, "
                  "bg: getComputedStyle(r.querySelector('.ct.peak')).backgroundColor}))")
    assert len(rows) == n_ctx[f]
    for j, r in enumerate(rows):
        c, p = st["top_ctx"][f, j], st["top_pos"][f, j]
        assert r["peak"] == visible(vocab[int(src["tokens"][c, p])])
        assert r["on"] == int((st["top_win"][f, j] > 0).sum())
        assert float(r["v"]) == pytest.approx(float(st["top_val"][f, j]), rel=5e-3)
        assert r["bg"].startswith("rgba(255, 138, 0")
    assert b.eval("document.querySelectorAll('.chart rect.bar').length") > 0
    assert b.eval("document.querySelectorAll('.logits .tok.up').length") == 10
    # the best match in the other TopK SAE, with its cosine, links to that feature
    m = data["matches"]["topk_s0"][OTHER]
    j, cos = int(m["idx"][f, 0]), float(m["cos"][f, 0])
    sel = f'a.match[href="#/sae/{quote(OTHER, safe="")}/feature/{j}"]'
    assert b.eval(f"document.querySelector('{sel} .cos').textContent") == f"{round(cos * 1000) / 1000:.2f}"
    ART.mkdir(parents=True, exist_ok=True)
    b.screenshot(ART / "browser_feature.png")
    go(b, sel, "feature")
    assert b.eval("document.querySelector('.ftitle h1').textContent") == f"#{j}"
    assert b.eval("document.querySelector('#crumbs').textContent").startswith(f"SAEs/{OTHER}/")
    # keyboard: right arrow goes to the next feature
    if j + 1 < 48:
        b.eval("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight'}))")
        b.wait(f"document.body.dataset.view === 'feature' && document.querySelector('.ftitle h1').textContent === '#{j + 1}'")


def test_served_over_http(chrome, site):
    """The same files work from any static server (here Python's http.server on localhost)."""
    import functools
    import http.server
    import threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        b = chrome
        b.open(f"http://127.0.0.1:{server.server_address[1]}/index.html#/sae/tree/feature/7")
        b.wait("document.body.dataset.view === 'feature'")
        assert b.eval("document.querySelector('.ftitle h1').textContent") == "#7"
        assert b.eval("location.protocol") == "http:"
        b.open("about:blank")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_sort_list(chrome, site, data):
    b = chrome
    b.open(url(site, "/sae/relu"))
    b.wait("document.body.dataset.view === 'list'")
    b.click('.vhead [data-key="freq"]')
    b.wait("document.querySelector('.vhead [data-key=\"freq\"]').dataset.dir === 'desc'")
    freq = data["saes"]["relu"]["stats"]["freq"]
    shown = b.eval("[...document.querySelectorAll('.vbody .vrow')].slice(0, 5).map(r => +r.dataset.f)")
    want = sorted(range(len(freq)), key=lambda i: (-float(f"{freq[i]:.4g}"), i))[:5]
    assert shown == want
    b.screenshot(ART / "browser_list.png", full_page=False)


def test_tree_navigation(chrome, site, data, saes):
    b = chrome
    parent_of = saes["tree"].parent_of.tolist()
    g = next(i for i, p in enumerate(parent_of) if p >= 0 and i in parent_of)  # has a parent and children
    kids = [i for i, p in enumerate(parent_of) if p == g]
    b.open(url(site, f"/sae/tree/feature/{g}"))
    b.wait("document.body.dataset.view === 'feature'")
    parent = b.eval("document.querySelector('#treepanel a.tlink.parent').getAttribute('href')")
    assert parent == f"#/sae/tree/feature/{parent_of[g]}"
    children = b.eval("[...document.querySelectorAll('#treepanel a.tlink.child')].map(a => a.getAttribute('href'))")
    assert children == [f"#/sae/tree/feature/{k}" for k in kids]
    edge = b.eval("document.querySelector('#treepanel a.tlink.parent .edge').textContent")
    assert edge.startswith("P(parent|child) ") and " · cos " in edge  # the edge's statistics, at the child's side
    assert b.eval("document.querySelectorAll('#treepanel a.tlink.child .edge').length") == len(kids)
    assert "level 1" in b.eval("document.querySelector('.fsub').textContent")
    b.screenshot(ART / "browser_tree_feature.png")
    go(b, "#treepanel a.tlink.parent", "feature")
    assert b.eval("document.querySelector('.ftitle h1').textContent") == f"#{parent_of[g]}"
    assert b.eval("document.querySelector('#treepanel a.tlink.parent')") is None  # a root
    # the tree view opens with the path to a feature expanded and the feature highlighted
    go(b, f"#/sae/tree/tree/{kids[0]}", "tree")
    assert b.eval("document.querySelector('#tree li.focus > .tnode a').getAttribute('href')") == f"#/sae/tree/feature/{kids[0]}"
    b.click(f'#tree button.twist[data-f="{g}"]')  # collapse g: its children disappear
    assert b.eval("document.querySelector('#tree li.focus')") is None
    # a flat SAE has no tree panel
    go(b, f"#/sae/{quote(OTHER, safe='')}/feature/0", "feature")
    assert b.eval("document.getElementById('treepanel')") is None


def test_big_list_loads_fast(chrome, tmp_path, model):
    """A 16,384-feature SAE: its feature list renders in under a second (performance.now() in the page)."""
    from treesae.saes import build
    g = torch.Generator().manual_seed(0)
    n_ctx, T, d = 192, 32, model.cfg.d_model
    acts = torch.randn(n_ctx, T, d, generator=g) * 3
    tokens = torch.randint(0, len(WORDS), (n_ctx, T), generator=g).numpy()
    sae = build("topk", d_in=d, d_sae=16_384, k=32, seed=0)
    meta = pd.DataFrame({"layer": [1], "corpus": ["random"], "architecture": ["topk"], "nmse": [0.2]}, index=["big"])
    t = time.perf_counter()
    data = browser.extract({"big": sae}, meta, lambda n, r: (acts, tokens), model, n_top_contexts=12, batch_size=2048)
    t_extract = time.perf_counter() - t
    t = time.perf_counter()
    site = browser.write_site(data, tmp_path / "big")
    t_write = time.perf_counter() - t
    list_bytes = (site / "data" / "saes" / "big" / "list.js").stat().st_size
    b = chrome
    # cold: a fresh page load straight onto the list
    b.open("about:blank")
    b.open(url(site, "/sae/big"))
    b.wait("document.body.dataset.view === 'list'")
    cold = b.eval("window.__perf.list")
    assert cold["n"] == 16_384 and b.eval("document.querySelectorAll('.vbody .vrow').length") > 10
    # warm app: index -> list by a click (the list file is loaded and parsed on this navigation)
    b.open("about:blank")  # a new document: nothing loaded yet
    b.open(url(site, "/"))
    b.wait("document.body.dataset.view === 'index'")
    go(b, 'a.saelink[href="#/sae/big"]', "list")
    warm = b.eval("window.__perf.list")
    # sorting 16k features by frequency and searching a token
    t_sort = b.eval("(function(){var t=performance.now();document.querySelector('.vhead [data-key=\"freq\"]').click();"
                    "return performance.now()-t;})()")
    b.eval("document.body.dataset.view='waiting';location.hash='#/'")
    b.wait("document.body.dataset.view === 'index'")
    result = {"features": 16_384, "list_js_bytes": list_bytes, "cold_list_ms": round(cold["ms"], 1),
              "cold_since_navigation_start_ms": round(cold["at"], 1), "warm_list_ms": round(warm["ms"], 1),
              "sort_by_frequency_ms": round(t_sort, 1), "extract_s": round(t_extract, 2), "write_site_s": round(t_write, 2),
              "chromium": b.eval("navigator.userAgent")}
    ART.mkdir(parents=True, exist_ok=True)
    (ART / "browser_perf.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    assert cold["ms"] < 1000 and warm["ms"] < 1000 and t_sort < 1000, result
