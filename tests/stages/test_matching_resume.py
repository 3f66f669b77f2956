"""Stage 04 resumes: compare_saes rows are cached per pair (stages.matching.PairCache), so an interrupted run
recomputes only the missing pairs and writes the same bytes."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthetic_runs import metrics_table
from treesae.analysis import matching as M
from treesae.stages import common
from treesae.stages import matching as stage

N_PAIRS = 10  # all pairs of the five fake SAEs


def fake_saes(names=("a", "b", "c", "d", "e"), d=16, seed=0):
    """Direction dicts around a common dictionary: 32 or 24 latents, one SAE without encoder."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((32, d))
    out = {}
    for i, n in enumerate(names):
        W = base[:24 if i % 3 == 2 else 32] + (0.3 + 0.3 * i) * rng.standard_normal((24 if i % 3 == 2 else 32, d))
        enc = None if i == 3 else (W + 0.5 * rng.standard_normal(W.shape)).T
        out[n] = dict(W_dec=W.astype(np.float32), W_enc=None if enc is None else enc.astype(np.float32))
    return out


@pytest.fixture
def calls(monkeypatch):
    """Counts match_pair calls (one per computed pair); set .fail_after = N to raise KeyboardInterrupt after N."""
    class Calls:
        n, fail_after = 0, None
    real, lock = M.match_pair, threading.Lock()

    def counted(*args, **kw):
        with lock:
            if Calls.fail_after is not None and Calls.n >= Calls.fail_after:
                raise KeyboardInterrupt
            Calls.n += 1
        return real(*args, **kw)
    monkeypatch.setattr(M, "match_pair", counted)
    return Calls


def entries(root):
    return sorted(Path(root).glob("*.json"))


def csv_bytes(t):
    return t.to_csv(index=False, float_format=common.FLOAT_FORMAT, lineterminator="\n").encode()


def assert_same(t, ref):
    pd.testing.assert_frame_equal(t, ref, check_exact=True)
    assert csv_bytes(t) == csv_bytes(ref)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_interrupted_run_resumes_only_missing_pairs(tmp_path, calls, capsys, n_jobs):
    saes, cache = fake_saes(), stage.PairCache(tmp_path / "cache")
    ref = M.compare_saes(saes, n_jobs=n_jobs)
    calls.n, calls.fail_after = 0, 4
    with pytest.raises(KeyboardInterrupt):
        M.compare_saes(saes, cache=cache, n_jobs=n_jobs)
    k = len(entries(cache.root))
    assert k == calls.n and 4 <= k < N_PAIRS and (k == 4 or n_jobs > 1)  # pairs in flight finish and are kept
    calls.n, calls.fail_after = 0, None
    assert_same(M.compare_saes(saes, cache=cache, n_jobs=n_jobs), ref)
    assert calls.n == N_PAIRS - k and len(entries(cache.root)) == N_PAIRS
    assert f"matching: {k}/{N_PAIRS} pairs cached, {N_PAIRS - k} to compute" in capsys.readouterr().out
    assert_same(M.compare_saes(saes, cache=cache, n_jobs=n_jobs), ref)
    assert calls.n == N_PAIRS - k  # nothing left to compute


def test_stage_csv_identical_after_resume(tmp_path, monkeypatch, calls):
    """stage.compare caches under <root>/data/.partial/matching and writes the same pairs.csv bytes."""
    metrics = metrics_table()
    names = list(metrics.index[:5])
    saes = fake_saes(names)
    meta = stage.meta_table(metrics.loc[names], stage.FACTORS)

    def run(root):
        monkeypatch.setenv("TREESAE_ROOT", str(root))
        setup = dict(matching=stage.MatchingParams(n_jobs=2), meta=meta, metrics=metrics, out=root / "out",
                     pairs=stage.plan_pairs(meta, stage.FACTORS, "all"))
        stage.compare(setup, saes)
        return (root / "out" / "pairs.csv").read_bytes()

    ref = run(tmp_path / "r1")
    calls.n, calls.fail_after = 0, 3
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "r2")
    k = len(entries(tmp_path / "r2" / "data" / ".partial" / "matching"))
    assert k >= 3 and not (tmp_path / "r2" / "out" / "pairs.csv").exists()
    calls.n, calls.fail_after = 0, None
    assert run(tmp_path / "r2") == ref and calls.n == N_PAIRS - k


CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal (a background job inherits SIGINT ignored)
sys.path[:0] = [{here!r}, {tests!r}]
from test_matching_resume import fake_saes
from treesae.analysis import matching as M
from treesae.stages.matching import PairCache
real = M.match_pair
def slow(*args, **kw):
    time.sleep(0.3)
    return real(*args, **kw)
M.match_pair = slow
M.compare_saes(fake_saes(), cache=PairCache({root!r}), n_jobs=2)
print("finished")
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_process_resumes(tmp_path, calls, sig):
    """A real process matching pairs is killed (or interrupted) once 3 pairs are cached; a rerun computes
    only the rest and gives the uninterrupted table."""
    root = tmp_path / "cache"
    code = CHILD.format(here=str(Path(__file__).parent), tests=str(Path(__file__).parents[1]), root=str(root))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while len(entries(root)) < 3:
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=60)
    assert p.returncode != 0 and b"finished" not in out
    k = len(entries(root))
    assert 3 <= k < N_PAIRS
    ref = M.compare_saes(fake_saes())
    calls.n = 0
    assert_same(M.compare_saes(fake_saes(), cache=stage.PairCache(root), n_jobs=2), ref)
    assert calls.n == N_PAIRS - k


def test_corrupt_entries_are_recomputed(tmp_path, calls):
    saes, cache = fake_saes(), stage.PairCache(tmp_path)
    ref = M.compare_saes(saes, cache=cache)
    files = entries(tmp_path)
    files[0].write_bytes(files[0].read_bytes()[:40])                  # truncated
    files[1].write_text("not json")                                   # garbage
    files[2].write_bytes(files[3].read_bytes())                       # another pair's entry
    d = json.loads(files[4].read_text())
    d["row"]["agree"] = "0.5"                                         # a field of the wrong type
    files[4].write_text(json.dumps(d))
    (tmp_path / ".stale.123-456.tmp").write_text("{")                 # a write cut short by SIGKILL
    calls.n = 0
    assert_same(M.compare_saes(saes, cache=cache), ref)
    assert calls.n == 4
    calls.n = 0
    assert_same(M.compare_saes(saes, cache=cache), ref)
    assert calls.n == 0  # the bad entries were rewritten


def test_key_covers_method_threshold_weights_and_order(tmp_path, calls):
    saes, cache = fake_saes(), stage.PairCache(tmp_path)
    M.compare_saes(saes, cache=cache)

    def recomputed(saes, **kw):
        calls.n = 0
        t = M.compare_saes(saes, cache=cache, **kw)
        n = calls.n
        assert_same(t, M.compare_saes(saes, **kw))
        return n

    assert recomputed(saes) == 0
    assert recomputed(saes, method="scipy") == N_PAIRS
    assert recomputed(saes, threshold=0.6) == N_PAIRS
    assert recomputed(saes, pairs=[("b", "a"), ("d", "c")]) == 2  # ordered pairs
    dec = {**saes, "c": dict(saes["c"], W_dec=saes["c"]["W_dec"] + np.float32(1e-3))}
    assert recomputed(dec) == 4  # the pairs with c
    enc = {**saes, "a": dict(saes["a"], W_enc=saes["a"]["W_enc"] + np.float32(1e-3))}
    assert recomputed(enc) == 4
    assert recomputed(saes) == 0 and len(entries(tmp_path)) == 3 * N_PAIRS + 2 + 4 + 4
    calls.n = 0
    M.compare_saes(saes, cache=cache, features=True)
    assert calls.n == N_PAIRS  # per-latent tables are not cached: features=True computes every pair
