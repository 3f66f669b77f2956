"""Several processes over one sweep: under ``torchrun``, each rank trains its share of stage 02's SAEs.

    torchrun --nproc_per_node 2 -m treesae.notebook notebooks/02_train.ipynb && dvc commit train

The split is by SAE (round robin over the sweep's runs): every rank reads the batches of the (corpus, layer)
groups it has SAEs in, in the same order as one process, and an SAE never depends on the others of its
sweep, so each comes out bit for bit as one process trains it (same device type and thread count). Rank 0
evaluates and writes the stage's outputs; the others wait for it. The process group (gloo: it only
synchronises, no tensors move between ranks) comes from torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT); without it everything runs in this process.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(hours=12)  # ranks wait for each other's share of training and for the evaluation


def spawn(fn, n: int, *args) -> None:
    """Run ``fn(*args)`` in ``n`` fresh processes, ranks 0..n-1 of one local process group (what torchrun
    does on one machine, started from inside a notebook); returns when all are done, raises if one failed."""
    with socket.socket() as s:  # a free port for the group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.start_processes(_rank_main, args=(n, port, fn, args), nprocs=n, start_method="spawn")
    except mp.ProcessRaisedException as e:  # the rank's traceback as text: keep its last line(s), the error itself
        lines = str(e).rstrip().splitlines()
        last_frame = max((i for i, l in enumerate(lines) if l.startswith("  ")), default=-1)
        raise RankError(f"{' '.join(lines[last_frame + 1:])} (in rank {e.error_index} of {n})") from None


class RankError(RuntimeError):
    """What a rank started by ``spawn`` raised, as one line (``<type>: <message>``)."""


def _rank_main(rank: int, n: int, port: int, fn, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        fn(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size), joining torchrun's process group on first use; (0, 1) outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def share(items: list) -> list:
    """This rank's items: every ``world``-th one, from its rank on."""
    rank, world = rank_world()
    return items[rank::world]


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def is_main() -> bool:
    return rank_world()[0] == 0


def device(configured: str) -> str:
    """The device this rank trains on: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` under torchrun (one GPU a rank)."""
    if configured == "cuda" and rank_world()[1] > 1:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return configured


class DataParallel:
    """Data parallelism for SAEs too large to split by SAE: every rank trains every SAE on its 1/world share of
    each batch, and after each backward the ranks average gradients and float buffers (running thresholds), add
    token counts (``BaseSAE.token_counts``: the tree's co-firing statistics) and OR which latents fired, so every
    rank takes the same optimiser step and holds the same SAEs. Per-token selection (TopK, ReLU-L1) then trains
    as one process at the whole batch does, up to float summation order; batch-level selection (BatchTopK,
    Matryoshka, the tree's batch budget) selects within each rank's share, as under DDP elsewhere."""

    def __init__(self):
        self.rank, self.world = rank_world()

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous 1/world of ``x`` (``train_sweep`` checks that the batch divides)."""
        n = len(x) // self.world
        return x[self.rank * n:(self.rank + 1) * n]

    def counts(self, sae) -> dict:
        """The token-count buffers before a step (their increments are what the ranks add)."""
        return {n: getattr(sae, n).clone() for n in getattr(sae, "token_counts", ())}

    @torch.no_grad()
    def reduce(self, sae, before: dict) -> None:
        for p in sae.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world
        for name, b in sae.named_buffers():
            if name in before:
                delta = (b - before[name]).to(torch.float64)  # integer counts, exact in float64
                dist.all_reduce(delta)
                b.copy_(before[name] + delta.to(b.dtype))
            elif b.is_floating_point():
                dist.all_reduce(b)
                b /= self.world

    def fired(self, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(torch.uint8)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        return m.bool()

    def mean(self, row: dict) -> dict:
        """A curve row averaged over ranks (step, tokens and lr are the same on every rank)."""
        keys = [k for k, v in row.items() if k not in ("step", "tokens", "lr") and isinstance(v, float)]
        t = torch.tensor([row[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {**row, **dict(zip(keys, (t / self.world).tolist()))}
