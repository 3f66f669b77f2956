"""Stage 02 over two processes (torchrun, gloo on the CPU; or started by the stage, ``train.processes``) trains
the same SAEs, bit for bit, as one process at the same thread count per SAE."""
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from treesae import config, harvest as H
from treesae import distributed as dist
from treesae.stages import train as T

TRAIN = {"base": dict(architecture="topk", corpus="tiny", layer=3, d_sae=48, k=4, seed=0),
         "grids": {"seed": {"seed": [1, 2]}, "frontier": {"architecture": ["relu", "batchtopk"]}, "layer": {"layer": [1]}},
         "architectures": {"relu": {"l1_coef_by_k": {4: 1.0}}},
         "optim": {"n_tokens": 4096, "batch_size": 64, "log_every": 8}, "eval": {"heldout_tokens": 64}}

WORKER = """
import json, pathlib, sys
from types import SimpleNamespace
from treesae import config, distributed
from treesae.stages import train as T
model = config.ModelParams(name="tiny-rotary", threads=1)
s = dict(model=model, **T.check(model, SimpleNamespace(corpora=["tiny"], layers=[1, 3]), json.loads(sys.argv[1])))
rank = distributed.rank_world()[0]  # one file per rank: two processes' prints interleave on one stdout
pathlib.Path(sys.argv[2], f"share-{rank}.json").write_text(json.dumps([r.name for r in distributed.share(s["runs"])]))
saes = T.train_all(s, progress=False)
T.evaluate(s, saes, None, progress=False)
T.clear_partial(s)
"""


def _stage_files(root):
    data = root / "data"
    files = sorted(p for d in (data / "saes", data / "train") for p in d.rglob("*") if p.is_file())
    return {str(p.relative_to(data)): p.read_bytes() for p in files}


def test_two_ranks_train_the_same_saes_as_one_process(tiny_model, tiny_corpus, tmp_path, monkeypatch):
    one, two, spawned, dp = tmp_path / "one", tmp_path / "two", tmp_path / "spawned", tmp_path / "dp"
    H.harvest(tiny_model, tiny_corpus, one / "data" / "activations" / "tiny", [1, 3], shard_contexts=12,
              batch_size=5, summary_contexts=4, progress=False)
    for d in (two, spawned, dp):
        shutil.copytree(one / "data" / "activations", d / "data" / "activations")

    monkeypatch.setenv("TREESAE_ROOT", str(one))
    model = config.ModelParams(name="tiny-rotary", threads=1)
    s = dict(model=model, **T.check(model, SimpleNamespace(corpora=["tiny"], layers=[1, 3]), TRAIN))
    assert dist.rank_world() == (0, 1) and len(s["runs"]) == 6  # two groups: layer 3 (five SAEs) and layer 1
    T.evaluate(s, T.train_all(s, progress=False), None, progress=False)
    T.clear_partial(s)

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "TREESAE_ROOT": str(two), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), json.dumps(TRAIN), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    shares = {int(p.stem[-1]): json.loads(p.read_text()) for p in tmp_path.glob("share-*.json")}
    assert sorted(shares) == [0, 1] and all(shares.values())  # both ranks trained SAEs, none twice
    assert sorted(shares[0] + shares[1]) == sorted(r.name for r in s["runs"])

    a, b = _stage_files(one), _stage_files(two)
    assert sorted(a) == sorted(b) and any(k.endswith("sae_weights.safetensors") for k in a)
    assert [k for k in a if a[k] != b[k]] == []  # weights, training.json, curves, metrics.csv: byte for byte
    assert not list((two / "data" / ".partial").glob("train-*"))  # both ranks' checkpoints cleared

    monkeypatch.setenv("TREESAE_ROOT", str(spawned))  # the stage starts its own two single-thread ranks
    model = config.ModelParams(name="tiny-rotary", threads=2)
    s = dict(model=model, **T.check(model, SimpleNamespace(corpora=["tiny"], layers=[1, 3]), {**TRAIN, "processes": 2}))
    assert s["optim"].threads == 2
    T.evaluate(s, T.train_all(s, progress=False), None, progress=False)
    c = _stage_files(spawned)
    assert sorted(c) == sorted(a) and [k for k in a if a[k] != c[k]] == []

    monkeypatch.setenv("TREESAE_ROOT", str(dp))  # data parallel: both ranks train every SAE on half of each batch
    s = dict(model=model, **T.check(model, SimpleNamespace(corpora=["tiny"], layers=[1, 3]),
                                    {**TRAIN, "processes": 2, "data_parallel": True}))
    T.evaluate(s, T.train_all(s, progress=False), None, progress=False)
    assert sorted(_stage_files(dp)) == sorted(a)
    m1, m2 = (pd.read_csv(d / "data" / "train" / "metrics.csv", index_col="name") for d in (one, dp))
    assert ((m2.nmse - m1.nmse).abs() < 0.1 * m1.nmse).all()  # the same training, up to the batch split


DP_WORKER = """
import json, sys, torch
from treesae import distributed, saes as S
from treesae.train import TrainConfig, train_sweep
out, dp = sys.argv[1], sys.argv[2] == "dp"
g = torch.Generator().manual_seed(0)
x = torch.randn(4096, 16, generator=g) @ torch.randn(16, 32, generator=g)
saes = {"topk": S.build("topk", d_in=32, d_sae=64, k=4), "batchtopk": S.build("batchtopk", d_in=32, d_sae=64, k=4),
        "tree": S.build("tree", d_in=32, d_sae=64, k=6, n_levels=3, branching=2, adopt_every=8,
                                                  adopt_coverage=0.2, adopt_min_count=2)}
cfg = TrainConfig(n_tokens=256 * 48, batch_size=256, lr=1e-3, log_every=16, checkpoint_every=0, init_sample_tokens=512)
curves = train_sweep(saes, x, cfg, progress=False, data_parallel=dp)
rank = distributed.rank_world()[0]
torch.save({n: s.state_dict() for n, s in saes.items()}, f"{out}/{sys.argv[2]}-{rank}.pt")
json.dump({n: c.to_dict("list") for n, c in curves.items()}, open(f"{out}/{sys.argv[2]}-{rank}.json", "w"))
"""


def test_data_parallel_ranks_agree_and_match_one_process(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(DP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode, launch in (("one", []), ("dp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        r = subprocess.run([sys.executable, *launch, str(script), str(tmp_path), mode], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
    one, a, b = (torch.load(tmp_path / f"{m}.pt") for m in ("one-0", "dp-0", "dp-1"))
    for name in one:  # both ranks hold the same SAE, bit for bit (same averaged gradients, same reduced buffers)
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert (a["tree"]["parent_index"] >= 0).any()  # parents were adopted, from counts added over both ranks
    for k in ("W_enc", "W_dec", "b_enc", "b_dec"):  # per-token TopK: one process at the whole batch, up to summation
        assert (a["topk"][k] - one["topk"][k]).norm() < 0.01 * one["topk"][k].norm(), k  # order (0.12% after 48 steps)
    c_one, c_dp = (json.loads((tmp_path / f"{m}.json").read_text()) for m in ("one-0", "dp-0"))
    for name in one:  # batch-level selection within each rank's half: close to one process, not equal
        assert abs(c_dp[name]["nmse"][-1] - c_one[name]["nmse"][-1]) < 0.1 * c_one[name]["nmse"][-1] + 0.02, name



def test_a_rank_error_reaches_the_user_as_one_line_naming_the_file(monkeypatch):
    """torch.multiprocessing hands the parent a rank's traceback as text; spawn raises its last line only."""
    import traceback
    try:
        raise ValueError("shard data/x.npy is damaged; rerun the harvest")
    except ValueError:
        text = f"\n\n-- Process 1 terminated with the following error:\n{traceback.format_exc()}"  # as torch words it

    def start_processes(*a, **k):
        raise dist.mp.ProcessRaisedException(text, 1, 4242)
    monkeypatch.setattr(dist.mp, "start_processes", start_processes)
    with pytest.raises(dist.RankError) as e:
        dist.spawn(print, 2)
    assert str(e.value) == "ValueError: shard data/x.npy is damaged; rerun the harvest (in rank 1 of 2)"
