import json

import numpy as np
import pytest
import torch

from treesae import harvest as H
from treesae.cache import ActivationCache, CacheError, hook_name


def run(model, corpus, out, **kw):
    kw = dict(layers=[1, 3], shard_contexts=12, batch_size=5, summary_contexts=4, progress=False) | kw
    return H.harvest(model, corpus, out, **kw)


def test_cache_holds_the_models_residual_stream(tiny_model, tiny_corpus, tmp_path):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act", dtype="float32")
    toks = torch.from_numpy(np.load(tiny_corpus / "tokens.npy")[:7]).long()
    _, ref = tiny_model.run_with_cache(toks)
    for L in (1, 3):
        assert torch.equal(torch.from_numpy(cache.layer(L)[:7]), ref[hook_name(L)])
    assert len(cache.meta["shards"]) == 4 and cache.meta["n_tokens"] == 40 * 16
    train = cache.activations(3, "train")  # position 0 dropped, held-out contexts excluded
    assert train.shape == (32 * 15, 32)
    rows = cache.contexts("train")
    assert torch.equal(train[:15], torch.from_numpy(cache.layer(3)[rows[0], 1:]).float())


def test_summary_covers_every_layer_and_position(tiny_model, tiny_corpus, tmp_path):
    import pandas as pd
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    s = pd.read_csv(cache.path / "summary.csv")
    assert set(s.layer) == {-1, 0, 1, 2, 3, 4} and set(s[s.layer == 0].position) == set(range(16))
    assert s[s.layer >= 0].norm_mean.notna().all() and s[s.layer == -1].lm_loss.notna().all()


def test_reharvest_is_bit_identical(tiny_model, tiny_corpus, tmp_path):
    a = run(tiny_model, tiny_corpus, tmp_path / "a")
    b = run(tiny_model, tiny_corpus, tmp_path / "b")
    for L in (1, 3):
        assert np.array_equal(a.layer(L)[:], b.layer(L)[:])
    assert [s["sha256"] for s in a.meta["shards"]] == [s["sha256"] for s in b.meta["shards"]]


def test_interrupted_harvest_resumes_and_matches(tiny_model, tiny_corpus, tmp_path, monkeypatch, interrupt_on_call):
    ref = run(tiny_model, tiny_corpus, tmp_path / "ref")
    real = H.forward_layers
    monkeypatch.setattr(H, "forward_layers", interrupt_on_call(real, 7))  # first batch of the third shard (3 per shard)
    out = tmp_path / "data" / "act"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model, tiny_corpus, out)
    assert not out.exists()  # readers never see a partial cache
    with pytest.raises(CacheError, match="partial harvest"):
        ActivationCache.open(out)
    progress = json.loads((H.partial_dir(out) / "progress.json").read_text())
    assert [s["index"] for s in progress["shards"]] == [0, 1]
    counted = []
    monkeypatch.setattr(H, "forward_layers", lambda *a: counted.append(1) or real(*a))
    cache = run(tiny_model, tiny_corpus, out)
    assert len(counted) == 4  # only shards 2 and 3 (12 + 4 contexts, batches of 5) were recomputed
    assert np.array_equal(cache.layer(3)[:], ref.layer(3)[:])
    assert not H.partial_dir(out).exists()


def test_damaged_partial_shard_is_recomputed(tiny_model, tiny_corpus, tmp_path, monkeypatch, interrupt_on_call):
    ref = run(tiny_model, tiny_corpus, tmp_path / "ref")
    real = H.forward_layers
    monkeypatch.setattr(H, "forward_layers", interrupt_on_call(real, 7))  # first batch of shard 2: 0 and 1 complete
    out = tmp_path / "data" / "act"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model, tiny_corpus, out)
    shard = H.partial_dir(out) / "shards" / "layer1_00000.npy"
    shard.write_bytes(shard.read_bytes()[:-8])
    counted = []
    monkeypatch.setattr(H, "forward_layers", lambda *a: counted.append(1) or real(*a))
    cache = run(tiny_model, tiny_corpus, out)
    assert len(counted) == 3 + 3 + 1  # shards 0 (damaged), 2 and 3; intact shard 1 kept
    assert np.array_equal(cache.layer(1)[:], ref.layer(1)[:])


def _flip(f, at=-3):
    data = bytearray(f.read_bytes())
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "swapped shards", "shard of another layer"])
def test_damaged_shard_is_refused_before_use(tiny_model, tiny_corpus, tmp_path, damage):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    f = cache.shard_file(3, 1)
    if damage == "flipped byte":
        _flip(f)
    elif damage == "swapped shards":  # same shape: shards 0 and 1 both hold 12 contexts
        a, b = f.read_bytes(), cache.shard_file(3, 0).read_bytes()
        f.write_bytes(b), cache.shard_file(3, 0).write_bytes(a)
    else:
        f.write_bytes(cache.shard_file(1, 1).read_bytes())
    fresh = ActivationCache.open(cache.path)  # cheap checks (shapes) still pass
    for use in (lambda: fresh.layer(3), lambda: fresh.activations(3)):
        with pytest.raises(CacheError, match=r"layer3_0000[01]\.npy.*differs from what the harvest wrote.*Rerun the harvest"):
            use()
    fresh.layer(1)  # the other layer is intact


def test_damaged_cache_is_repaired_by_the_harvest(tiny_model, tiny_corpus, tmp_path, monkeypatch):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    ref = cache.layer(3)[:]
    _flip(cache.shard_file(3, 2))
    real, counted = H.forward_layers, []
    monkeypatch.setattr(H, "forward_layers", lambda *a: counted.append(1) or real(*a))
    repaired = run(tiny_model, tiny_corpus, tmp_path / "act")
    assert len(counted) == 3  # only shard 2 (12 contexts, batches of 5)
    assert np.array_equal(repaired.layer(3)[:], ref)
    assert not H.partial_dir(tmp_path / "act").exists()


def _rewrite(cache, layer, index, fn):
    """Replace a shard's contents and re-record its sha256, as a harvest that wrote bad data would."""
    import hashlib
    f = cache.shard_file(layer, index)
    arr = fn(np.load(f))
    np.save(f, arr)
    meta = json.loads((cache.path / "meta.json").read_text())
    meta["shards"][index]["sha256"][str(layer)] = hashlib.sha256(f.read_bytes()).hexdigest()
    (cache.path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("bad, message", [
    (lambda a: np.zeros_like(a), "is all zero"),
    (lambda a: np.concatenate([a[..., :4], np.full_like(a[..., 4:5], 0.5), a[..., 5:]], -1), r"has 1 constant dimension\(s\) \(e.g. \[4\]\)"),
    (lambda a: a * 100, "has median token norm .* where the harvest measured"),
    (lambda a: a / 100, "has median token norm .* where the harvest measured"),
])
def test_implausible_activations_are_refused(tiny_model, tiny_corpus, tmp_path, bad, message):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    _rewrite(cache, 3, 1, bad)
    fresh = ActivationCache.open(cache.path)
    with pytest.raises(CacheError, match=rf"layer3_00001\.npy \(layer 3\) {message}"):
        fresh.activations(3)


def test_truncated_shard_is_detected(tiny_model, tiny_corpus, tmp_path):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    f = cache.shard_file(3, 1)
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CacheError, match="truncated or corrupt"):
        ActivationCache.open(cache.path)


def test_corrupt_shard_fails_verification(tiny_model, tiny_corpus, tmp_path):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    f = cache.shard_file(1, 0)
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    ActivationCache.open(cache.path)  # shapes still fine
    with pytest.raises(CacheError, match="sha256"):
        ActivationCache.open(cache.path, verify=True)
    with pytest.raises(CacheError, match="sha256"):
        ActivationCache.open(cache.path).layer(1)


def test_cache_from_another_model_or_layer_is_refused(tiny_model, tiny_corpus, tmp_path):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    with pytest.raises(CacheError, match="another configuration"):
        ActivationCache.open(cache.path, expect={"model": "smollm2-135m"})
    with pytest.raises(CacheError, match=r"not \[2\]"):
        ActivationCache.open(cache.path, expect={"layers": [1, 2]})
    with pytest.raises(CacheError, match="not in cache"):
        cache.layer(2)


def test_nan_activations_are_never_written(tiny_model, tiny_corpus, tmp_path):
    tiny_model.blocks[0].hook_resid_post.add_hook(lambda x, hook: x * float("nan"))
    with pytest.raises(CacheError, match="NaN"):
        run(tiny_model, tiny_corpus, tmp_path / "data" / "act")
    assert not (tmp_path / "data" / "act").exists()


def test_nan_in_a_cache_is_caught_on_load(tiny_model, tiny_corpus, tmp_path):
    cache = run(tiny_model, tiny_corpus, tmp_path / "act")
    _rewrite(cache, 3, 0, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 2 * 16 * 32 + 5 * 32, np.nan, a).astype(a.dtype))
    with pytest.raises(CacheError, match="NaN"):
        ActivationCache.open(cache.path).activations(3, "all")


def test_float16_overflow_is_reported(tiny_model, tiny_corpus, tmp_path):
    tiny_model.blocks[0].hook_resid_post.add_hook(lambda x, hook: x * 1e6)
    with pytest.raises(CacheError, match="float16 overflow"):
        run(tiny_model, tiny_corpus, tmp_path / "act", dtype="float16")


def test_bad_layer_is_a_clear_error(tiny_model, tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match="has 4 layers"):
        run(tiny_model, tiny_corpus, tmp_path / "act", layers=[1, 9])


def test_heldout_draw_and_attention_sinks(tiny_model, tiny_corpus, tmp_path):
    from treesae.cache import sink_mask
    cache = run(tiny_model, tiny_corpus, tmp_path / "act", dtype="float32")
    held = cache.contexts("heldout")
    assert np.array_equal(cache.sample_contexts("heldout", 3, None), held[:3])  # no seed: corpus order
    a, b = cache.sample_contexts("heldout", 3, 0), cache.sample_contexts("heldout", 3, 1)
    assert np.array_equal(a, cache.sample_contexts("heldout", 3, 0)) and not np.array_equal(a, b)
    assert set(a) <= set(held) and np.all(np.diff(a) > 0)
    assert np.array_equal(cache.sample_contexts("heldout", 99, 0), held)
    x = cache.activations(3, "heldout", max_tokens=2 * 15, seed=0)  # the drawn contexts' tokens, positions 1..
    assert torch.equal(x, torch.from_numpy(cache.layer(3)[cache.sample_contexts("heldout", 2, 0), 1:]).reshape(-1, 32).float())
    # sinks: tokens far above the median norm, wherever they sit, are dropped like position 0
    full = cache.activations(3, "train")
    assert not sink_mask(full, 10.0).any()  # this tiny model makes none
    kept = cache.activations(3, "train", sink_ratio=1.0)  # a ratio of 1 drops the upper half
    n = full.norm(dim=1)
    assert len(kept) == int((n <= n.median()).sum()) and kept.norm(dim=1).max() <= n.median()
    planted = full.clone()
    planted[[5, 70]] *= 300
    assert sink_mask(planted, 10.0).nonzero().flatten().tolist() == [5, 70]
