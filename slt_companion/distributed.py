r"""Sharding independent work items -- checkpoints whose λ̂ is wanted -- over the ranks of a ``torch.distributed``
process group.

Each rank runs its own contiguous block of items (:func:`shard`) and the results are all-gathered, so that every
rank ends with the full list in item order (:func:`run_sharded`). Launch the processes with ``torchrun``
(``torchrun --nproc-per-node N script.py``, or ``python -m slt_companion.llc_trajectory`` under it) and call
:func:`init` once; without a process group everything runs in the one process.

Why ``torch.distributed`` and not a scheduler of our own: torch is already a dependency, ``torchrun`` starts the
processes and sets their rank, device and rendezvous the same way on one machine and on a cluster (Slurm,
Kubernetes), and its agent watches the workers. The backend is **gloo** on CPU and **NCCL** on GPU (:func:`init`
picks it from the device).

Failures: an exception in one rank's work is gathered like a result, and *every* rank raises a ``RuntimeError``
naming the failed rank(s) and their tracebacks, so that no rank returns a partial list (the failure is reported
when the last rank has finished its block: ranks do not interrupt each other). A rank that dies outright
(killed, out of memory, ``os._exit``) cannot report anything; ``torchrun``'s agent notices the dead worker, stops
the others and exits non-zero, so no rank gets past the gather (``python -m slt_companion.llc_trajectory`` then
writes no output).
"""

from __future__ import annotations

import datetime
import os
import pickle
import traceback
from typing import Callable

import torch
import torch.distributed as dist

from ._checks import check_int

__all__ = ["context", "shard", "run_sharded", "init", "finalize", "TIMEOUT"]

#: how long a rank waits for the others at the gather. Ranks reach it at different times (a convergence-driven
#: run stops when *its* chains converge), hours apart on big jobs, so the default is generous; torch's own default
#: of 30 minutes would kill a healthy but unbalanced job. A rank that dies is noticed by torchrun at once.
TIMEOUT = datetime.timedelta(hours=24)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def context() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` when there is none."""
    if _initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(num_items: int, rank: int, world_size: int) -> range:
    """The items of ``rank``: contiguous, balanced blocks (the first ``num_items % world_size`` ranks get one more).

    ``shard(10, r, 4)`` is ``range(0, 3)``, ``range(3, 6)``, ``range(6, 8)``, ``range(8, 10)`` for ``r = 0..3``.
    Every rank must get an item: more ranks than items raises a ValueError that says how many to launch.
    """
    num_items = check_int("num_items", num_items, minimum=0)
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size = {world_size}, got {rank}")
    if world_size > num_items:
        raise ValueError(f"{world_size} ranks for {num_items} work item(s): every rank needs at least one. Launch at "
                         f"most {num_items} process(es) (torchrun --nproc-per-node {max(num_items, 1)} ...), or give "
                         f"more items")
    size, extra = divmod(num_items, world_size)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def run_sharded(fn: Callable[[list[int]], list], num_items: int, *, distributed: bool | None = None) -> list:
    """``fn(indices) -> results`` (one picklable result per index, in order) over ``range(num_items)``, sharded.

    ``distributed=None`` shards when a process group with more than one rank is initialised, ``False`` never,
    ``True`` insists (ValueError without a process group). Not sharded: ``fn(list(range(num_items)))``. Sharded:
    each rank runs ``fn`` on :func:`shard`'s block and the results are gathered with ``all_gather_object``; every
    rank returns all ``num_items`` results in item order. If ``fn`` raises (or returns the wrong number of results)
    on any rank, every rank raises ``RuntimeError`` naming the failed rank(s) and their tracebacks.
    """
    num_items = check_int("num_items", num_items, minimum=0)
    if distributed and not _initialized():
        raise ValueError("distributed=True but no torch.distributed process group is initialised: launch the script "
                         "with torchrun (torchrun --nproc-per-node N script.py) and call "
                         "slt_companion.distributed.init() first")
    rank, world = context()
    if distributed is False or world == 1:
        return _checked(fn(list(range(num_items))), num_items)

    mine = list(shard(num_items, rank, world))       # the same ValueError on every rank, before any collective
    try:
        reply = ("ok", pickle.dumps(_checked(fn(mine), len(mine))))   # unpicklable results fail here, reported
    except Exception as err:                                        # noqa: BLE001 -- reported to every rank
        reply = ("error", f"rank {rank}: " + "".join(traceback.format_exception(err)).rstrip())
    gathered: list = [None] * world
    dist.all_gather_object(gathered, reply)
    failed = [text for status, text in gathered if status == "error"]
    if failed:
        ranks = [r for r, (status, _) in enumerate(gathered) if status == "error"]
        raise RuntimeError(f"work failed on rank(s) {', '.join(map(str, ranks))} of {world}; no results were "
                           "returned:\n" + "\n".join(failed))
    return [result for _, blob in gathered for result in pickle.loads(blob)]


def _checked(results, expected: int) -> list:
    results = list(results)
    if len(results) != expected:
        raise ValueError(f"fn returned {len(results)} results for {expected} indices: it must return one per index")
    return results


def init(device=None, *, timeout: datetime.timedelta = TIMEOUT) -> tuple[int, int]:
    """Initialise the process group when run under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` are set) and none is
    yet; return :func:`context`. Backend NCCL when ``device`` is a CUDA device (this rank then uses
    ``cuda:LOCAL_RANK``, made the current device), gloo otherwise. Outside ``torchrun`` it does nothing:
    ``(0, 1)``."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and dist.is_available() and not dist.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    return context()


def finalize() -> None:
    """Destroy the process group if one is initialised (the end of a script that called :func:`init`)."""
    if _initialized():
        dist.destroy_process_group()
