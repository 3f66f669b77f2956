"""Feature-browser extraction: checked against brute force on a tiny model and tiny SAEs."""
import numpy as np
import pandas as pd
import pytest
import torch

from treesae import browser
from treesae.browser.extract import HIST_EDGES, N_BINS

from browser_support import LAYER, T, WORDS, make_model, write_cache


def dense_codes(sae, acts):
    with torch.no_grad():
        z = sae.encode(acts.reshape(-1, acts.shape[-1]))
    return (z.to_dense() if z.is_sparse else z).clamp_min(0).view(acts.shape[0], acts.shape[1], -1)


@pytest.mark.parametrize("drop_first", [True, False])
@pytest.mark.parametrize("batch_tokens", [1, 3 * T, 10_000])
def test_stats_match_brute_force(saes, heldout, drop_first, batch_tokens):
    acts, tokens, rows = heldout
    window = (5, 3)
    for name, sae in saes.items():
        st = browser.feature_stats(sae, browser.Source(acts, tokens, rows), n_top=5, batch_size=batch_tokens,
                                   window=window, drop_first=drop_first)
        z = dense_codes(sae, acts).numpy().astype(np.float64)          # [C, T, F]
        s = 1 if drop_first else 0
        zz = z[:, s:]
        F = z.shape[2]
        fired = (zz > 0).sum((0, 1))
        assert fired.sum() > 0, name
        np.testing.assert_allclose(st["freq"], fired / zz[..., 0].size, err_msg=name)
        mean = np.where(fired > 0, zz.sum((0, 1)) / np.maximum(fired, 1), 0)
        np.testing.assert_allclose(st["mean_act"], mean, rtol=1e-5, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(st["max_act"], zz.max((0, 1)), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(st["pos_mean"], z.mean(0).T, rtol=1e-5, atol=1e-7, err_msg=name)
        # histogram: every non-zero activation in the bin of the fixed log edges that holds it
        for f in range(F):
            v = zz[..., f][zz[..., f] > 0]
            b = np.clip(np.searchsorted(HIST_EDGES, v, side="right") - 1, 0, N_BINS - 1)
            np.testing.assert_array_equal(st["hist"][f], np.bincount(b, minlength=N_BINS), err_msg=f"{name} {f}")
        # top contexts are the contexts with the largest per-context maxima, best first, one entry per context
        cmax = zz.max(1)                                                   # [C, F]
        for f in range(F):
            want = np.sort(cmax[:, f][cmax[:, f] > 0])[::-1][:5]
            got_v = st["top_val"][f][st["top_val"][f] > 0]
            np.testing.assert_allclose(got_v, want, rtol=1e-6, err_msg=f"{name} feature {f}")
            for j, v in enumerate(got_v):
                c, p = st["top_ctx"][f, j], st["top_pos"][f, j]
                assert cmax[c, f] == pytest.approx(v, rel=1e-6)
                assert z[c, p, f] == pytest.approx(v, rel=1e-6) and p >= s
                a = st["top_start"][f, j]
                assert a == min(max(p - window[0], 0), T - sum(window) - 1)
                np.testing.assert_allclose(st["top_win"][f, j], z[c, a:a + sum(window) + 1, f], rtol=1e-6, atol=1e-7)
            assert len(set(st["top_ctx"][f][: len(got_v)])) == len(got_v)
            assert (st["top_ctx"][f][len(got_v):] == -1).all()
        mass = z.mean(0).sum(0)
        np.testing.assert_allclose(st["pos0_frac"], np.where(mass > 0, z.mean(0)[0] / np.where(mass > 0, mass, 1), 0),
                                   rtol=1e-5, atol=1e-7)


def test_logit_effect_brute_force(model):
    from treesae.saes import build
    sae = build("topk", d_in=model.cfg.d_model, d_sae=20, k=2, seed=5)
    out = browser.logit_effect(model, sae.W_dec, top=4, block=7)
    full = (sae.W_dec.detach() * model.ln_final.w.detach()) @ model.W_U.detach()
    np.testing.assert_allclose(out["pos_vals"], full.topk(4, dim=1).values.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(out["pos_ids"], full.topk(4, dim=1).indices.numpy())
    np.testing.assert_allclose(out["neg_vals"], (-full).topk(4, dim=1).values.neg().numpy(), rtol=1e-5)
    ln = make_model("LN", seed=1)  # LayerNorm: the direction is centred first
    out = browser.logit_effect(ln, sae.W_dec, top=3)
    D = sae.W_dec.detach()
    full = ((D - D.mean(1, keepdim=True)) * ln.ln_final.w.detach()) @ ln.W_U.detach()
    np.testing.assert_array_equal(out["pos_ids"], full.topk(3, dim=1).indices.numpy())
    assert browser.logit_effect(model, torch.zeros(3, model.cfg.d_model + 1)) is None


def test_matches_brute_force():
    from treesae.saes import build
    saes = {"a": build("topk", d_in=16, d_sae=30, k=2, seed=0), "b": build("topk", d_in=16, d_sae=45, k=2, seed=1),
            "c": build("tree", d_in=16, widths=[4, 8], k=2, seed=2), "other_width": build("topk", d_in=8, d_sae=10, k=2)}
    with torch.no_grad():  # a shared direction: b's feature 7 is a's feature 3, scaled
        saes["b"].W_dec[7] = saes["a"].W_dec[3] * 2.0
    m = browser.matches(saes, top=3, block=4)
    assert set(m["a"]) == {"b", "c"} and set(m["other_width"]) == set()
    U = {n: (s.W_dec / s.W_dec.norm(dim=1, keepdim=True)).detach() for n, s in saes.items()}
    for a in ("a", "b", "c"):
        for b in m[a]:
            S = U[a] @ U[b].T
            t = S.topk(3, dim=1)
            np.testing.assert_allclose(m[a][b]["cos"], t.values.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(m[a][b]["idx"], t.indices.numpy())
    assert m["a"]["b"]["idx"][3, 0] == 7 and m["a"]["b"]["cos"][3, 0] == pytest.approx(1.0)
    assert m["b"]["a"]["idx"][7, 0] == 3
    grouped = browser.matches(saes, top=2, group={"a": 0, "b": 0, "c": 1, "other_width": 0})
    assert set(grouped["a"]) == {"b"} and set(grouped["c"]) == set()


def test_extract_contents(data, saes, meta, heldout):
    acts, tokens, rows = heldout
    assert list(data["saes"]) == list(saes)
    tree = data["saes"]["tree"]
    np.testing.assert_array_equal(tree["parent_of"], saes["tree"].parent_of.numpy())
    assert tree["info"]["tree"] and tree["info"]["levels"] == [[0, 6], [6, 18], [18, 42]]
    assert data["saes"]["topk_s0"]["parent_of"] is None
    assert {"parent_given", "parent_cos"} <= set(tree["stats"]) and "parent_given" not in data["saes"]["topk_s0"]["stats"]
    # one shared source (same held-out tokens for every SAE), with the cache row ids
    assert len(data["sources"]) == 1
    np.testing.assert_array_equal(data["sources"][0]["ctx_ids"], rows)
    # the vocabulary holds the tokenizer's strings for every token shown
    for t in np.unique(tokens):
        assert data["vocab"][int(t)] == WORDS[t]
    assert data["saes"]["relu"]["info"]["meta"]["nmse"] is None  # NaN in meta -> null
    assert set(data["matches"]["topk_s0"]) == {"topk s1/k=4", "relu", "tree"}
    lg = data["saes"]["topk_s0"]["logits"]
    assert lg["pos_ids"].shape == (48, 10) and (np.diff(lg["pos_vals"], axis=1) <= 0).all()


@pytest.mark.parametrize("drop_first", [True, False])
def test_parent_stats_brute_force(saes, heldout, drop_first):
    """P(parent | child) on the codes with the gate lifted and the child/parent decoder cosine, per latent with a
    parent; with the gate on, every child that fires has its parent firing (the control: 1 by construction)."""
    acts, tokens, rows = heldout
    sae = saes["tree"]
    st = browser.parent_stats(sae, browser.Source(acts, tokens, rows), batch_size=3 * T, drop_first=drop_first)
    x = acts[:, 1:] if drop_first else acts
    with torch.no_grad():
        on = sae.encode_ungated(x.reshape(-1, x.shape[-1])) > 0
        gated = sae.encode(x.reshape(-1, x.shape[-1])) > 0
    par = sae.parent_of
    W = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    for f in range(sae.d_sae):
        p = int(par[f])
        if p < 0 or not on[:, f].any():
            assert np.isnan(st["parent_given"][f]) and (p >= 0 or np.isnan(st["parent_cos"][f]))
            continue
        assert st["parent_given"][f] == pytest.approx(float((on[:, f] & on[:, p]).sum() / on[:, f].sum()))
        assert st["parent_cos"][f] == pytest.approx(float(W[f] @ W[p]), abs=1e-6)
        assert not gated[:, f].any() or bool(gated[gated[:, f], p].all())
    assert np.nanmin(st["parent_given"]) < 1  # lifted, the gate no longer makes every pair imply its parent


def test_activation_cache_source(tmp_path, corpus, saes, meta, model):
    from treesae.cache import ActivationCache
    tokens, acts, split = corpus
    write_cache(tmp_path / "toy", tokens, {LAYER: acts}, split)
    cache = ActivationCache.open(tmp_path / "toy")
    two = {k: saes[k] for k in ("topk_s0", "tree")}
    d1 = browser.extract(two, meta, {("toy", LAYER): cache}, model, n_top_contexts=4, max_contexts=6, match_top=0)
    d2 = browser.extract(two, meta, {"toy": cache}, model, n_top_contexts=4, max_contexts=6, match_top=0)
    rows = np.flatnonzero(split == 1)[:6]
    np.testing.assert_array_equal(d1["sources"][0]["ctx_ids"], rows)
    np.testing.assert_array_equal(d1["sources"][0]["tokens"], tokens[rows])
    # the same numbers as a direct Source over the same (float16-rounded) activations
    a16 = acts[torch.from_numpy(rows)].half().float()
    st = browser.feature_stats(saes["tree"], browser.Source(a16, tokens[rows], rows), n_top=4)
    for k in ("freq", "top_val", "top_ctx", "hist"):
        np.testing.assert_array_equal(d1["saes"]["tree"]["stats"][k], st[k])
        np.testing.assert_array_equal(d2["saes"]["tree"]["stats"][k], st[k])
    with pytest.raises(KeyError, match="no activation cache"):
        browser.extract(two, meta.assign(corpus="other"), {("toy", LAYER): cache}, model)


def test_every_architecture_runs(heldout, model):
    """Every architecture of treesae.saes goes through extract (dense codes from encode, levels, parent_of)."""
    from treesae.saes import ARCHITECTURES, build
    acts, tokens, rows = heldout
    kw = {"topk": dict(d_sae=24, k=3), "batchtopk": dict(d_sae=24, k=3), "matryoshka": dict(d_sae=24, k=3),
          "relu": dict(d_sae=24), "stacked": dict(widths=[4, 8, 16], k=2), "residual": dict(widths=[4, 8, 16], k=2),
          "tree": dict(widths=[4, 8, 16], k=2)}
    assert set(kw) == set(ARCHITECTURES)
    saes = {a: build(a, d_in=acts.shape[-1], **kw[a]) for a in ARCHITECTURES}
    meta = pd.DataFrame({"layer": LAYER, "corpus": "toy", "architecture": list(saes)}, index=list(saes))
    d = browser.extract(saes, meta, lambda n, r: (acts, tokens), model, n_top_contexts=3, match_top=2)
    for a in ARCHITECTURES:
        st = d["saes"][a]["stats"]
        assert st["freq"].shape == (saes[a].W_dec.shape[0],) and (st["freq"] > 0).any(), a
    assert len(d["saes"]["stacked"]["info"]["levels"]) == 3 and not d["saes"]["stacked"]["info"]["tree"]
    assert d["saes"]["tree"]["info"]["tree"]


def test_errors(saes, meta, heldout, model):
    acts, tokens, rows = heldout
    with pytest.raises(KeyError, match="no row in meta"):
        browser.extract(saes, meta.drop(index="relu"), lambda n, r: (acts, tokens), model)
    with pytest.raises(ValueError, match="do not match tokens"):
        browser.Source(acts, tokens[:, :-1])


def test_interrupted_extract_resumes_with_the_same_site(tmp_path, corpus, saes, meta, model, monkeypatch, interrupt_on_call):
    import importlib
    E = importlib.import_module("treesae.browser.extract")
    from treesae.cache import ActivationCache
    from treesae.io import ArrayStore
    tokens, acts, split = corpus
    write_cache(tmp_path / "toy", tokens, {LAYER: acts}, split)
    cache = ActivationCache.open(tmp_path / "toy")
    run = lambda store: browser.extract(saes, meta, {"toy": cache}, model, n_top_contexts=4, store=store, salt="h")
    site = lambda data, name: browser.write_site(data, tmp_path / name)
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    ref = files(site(run(None), "ref"))
    real = E.feature_stats
    monkeypatch.setattr(E, "feature_stats", interrupt_on_call(real, 3))
    store = ArrayStore(tmp_path / "partial")
    with pytest.raises(KeyboardInterrupt):
        run(store)
    counted = []
    monkeypatch.setattr(E, "feature_stats", lambda *a, **k: counted.append(1) or real(*a, **k))
    assert files(site(run(store), "resumed")) == ref
    assert len(counted) == len(saes) - 2  # the two SAEs done before the interruption were not recomputed
    run(store)  # all cached now
    assert len(counted) == len(saes) - 2
    changed = {**saes, "relu": browser_sae_copy(saes["relu"])}
    browser.extract(changed, meta, {"toy": cache}, model, n_top_contexts=4, store=store, salt="h")
    assert len(counted) == len(saes) - 1  # new weights: that SAE alone is recomputed


def browser_sae_copy(sae):
    import copy
    out = copy.deepcopy(sae)
    with torch.no_grad():
        out.W_dec[0, 0] += 1
    return out
