"""Streamed activations (treesae.stream): the cache's batches exactly with one buffer; with smaller buffers,
deterministic, every train token once per epoch, and a resumed stream fast-forwards to the same batches."""
import numpy as np
import pytest
import torch

from treesae import harvest as H
from treesae.saes import build
from treesae.stream import ActivationStream
from treesae.train import CachedBatches, TrainConfig, train_sweep

KW = dict(batch_size=5, shard_contexts=12)  # the model's batches, as the harvest below runs them


@pytest.fixture
def cached(tiny_model, tiny_corpus, tmp_path):
    return H.harvest(tiny_model, tiny_corpus, tmp_path / "acts", [1, 3], progress=False, summary_contexts=0, **KW)


@pytest.mark.parametrize("sink_ratio", [None, 1.3])
def test_one_buffer_serves_the_cache_batches(tiny_model, tiny_corpus, cached, sink_ratio):
    ref = CachedBatches(cached.activations(3, "train", sink_ratio=sink_ratio), seed=3)
    stream = ActivationStream(tiny_model, tiny_corpus, 3, seed=3, sink_ratio=sink_ratio, **KW)
    n = ref.data.shape[0]
    assert (sink_ratio is None) == (n == 32 * 15)  # 32 train contexts of 15 tokens after position 0; sinks dropped
    assert torch.equal(stream.sample(100), ref.sample(100))
    for step in range(3 * n // 64 + 2):  # three epochs and a bit, batches across epoch boundaries
        assert torch.equal(stream.batch(step, 64), ref.batch(step, 64)), step


def test_train_sweep_on_the_stream_trains_the_cache_saes(tiny_model, tiny_corpus, cached):
    cfg = TrainConfig(n_tokens=2048, batch_size=64, lr=1e-3, threads=1, checkpoint_every=0, seed=3, log_every=8,
                      init_sample_tokens=256)
    a, b = ({"s": build("topk", d_in=32, d_sae=48, k=4, seed=1)} for _ in range(2))
    train_sweep(a, cached.activations(3, "train"), cfg, progress=False)
    train_sweep(b, ActivationStream(tiny_model, tiny_corpus, 3, seed=3, **KW), cfg, progress=False)
    for k, v in a["s"].state_dict().items():
        assert torch.equal(v, b["s"].state_dict()[k]), k


def _epoch(stream, n, epoch=0, size=40):
    return torch.cat([stream.batch(s, size) for s in range(epoch * n // size, (epoch + 1) * n // size)])


def test_small_buffers_are_deterministic_and_cover_each_epoch(tiny_model, tiny_corpus, cached):
    every = cached.activations(3, "train")
    n = every.shape[0]  # 480: four buffers of 8 contexts a epoch
    s1, s2 = (ActivationStream(tiny_model, tiny_corpus, 3, seed=0, buffer_contexts=8, **KW) for _ in range(2))
    e1, e2 = _epoch(s1, n), _epoch(s2, n)
    assert torch.equal(e1, e2)
    key = lambda x: x[np.lexsort(x.numpy().T[::-1])]  # noqa: E731  (rows sorted: the epoch as a multiset)
    assert torch.equal(key(e1), key(every))  # every train token exactly once in the first epoch ...
    second = _epoch(s1, n, epoch=1)
    assert torch.equal(key(second), key(every)) and not torch.equal(second, e1)  # ... and in the next, reordered
    other = _epoch(ActivationStream(tiny_model, tiny_corpus, 3, seed=1, buffer_contexts=8, **KW), n)
    assert not torch.equal(other, e1)
    with pytest.raises(ValueError, match="streams only go forward"):
        s1.batch(0, 40)
    s1.close()


def test_a_resumed_stream_fast_forwards_to_the_same_batches(tiny_model, tiny_corpus):
    s1 = ActivationStream(tiny_model, tiny_corpus, 3, seed=0, buffer_contexts=8, prefetch=False, **KW)
    seq = [s1.batch(s, 50) for s in range(25)]
    s2 = ActivationStream(tiny_model, tiny_corpus, 3, seed=0, buffer_contexts=8, **KW)
    assert torch.equal(s2.batch(17, 50), seq[17]) and torch.equal(s2.batch(18, 50), seq[18])
    s2.close()
