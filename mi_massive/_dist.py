"""Data parallelism under ``torchrun``: each rank takes a contiguous shard of the inputs, and the corpus-level
analyses merge their accumulators exactly (sums all-reduced, hits gathered in input order).

Outside ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment, no process group) every call here is the
identity, so the analyses read the same in one process. Under ``torchrun`` the process group is started on
first use: NCCL where CUDA is available, gloo otherwise (``MI_MASSIVE_DIST_BACKEND`` chooses another).

    >>> from mi_massive import _dist
    >>> _dist.world(), list(_dist.shard(5))
    ((0, 1), [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


def _init() -> bool:
    """Start the process group that ``torchrun``'s environment describes; True when one is running."""
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = os.environ.get("MI_MASSIVE_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(_local_gpu())
    dist.init_process_group(backend=backend)
    return True


def exit_program(code: int) -> None:
    """End a program (the CLI, a worker script) whose work is done. Under a process group it skips the
    interpreter's teardown. About 1 torchrun run in 8 on a loaded 2-core machine aborted there after writing its
    results ("terminate called without an active exception", exit code -6), and destroying the group first did
    not stop it."""
    import sys

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def _local_gpu() -> int:
    """This rank's GPU: LOCAL_RANK, wrapped round the GPUs there are (gloo ranks may share one)."""
    return int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) in a single process."""
    if not _init():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo"), None in a single process."""
    if world()[1] == 1:
        return None
    import torch.distributed as dist

    return dist.get_backend()


def is_main() -> bool:
    """Rank 0 alone prints, writes and shows."""
    return world()[0] == 0


def local_device() -> torch.device | None:
    """The GPU this rank should use under ``torchrun`` with CUDA (``LOCAL_RANK``), else None."""
    if world()[1] > 1 and torch.cuda.is_available():
        return torch.device("cuda", _local_gpu())
    return None


def shard(n: int) -> range:
    """This rank's contiguous share of `n` inputs: sizes differ by at most one, later ranks may get none."""
    rank, size = world()
    per, extra = divmod(n, size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def _comm_device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_(t: Tensor) -> Tensor:
    """The sum of `t` over ranks (accumulated in float64 or int64), same dtype and device as `t`."""
    if world()[1] == 1:
        return t
    import torch.distributed as dist

    x = t.detach().to(_comm_device(), torch.float64 if t.is_floating_point() else torch.int64).clone()
    dist.all_reduce(x)
    return x.to(t.device, t.dtype)


def gather(obj: T) -> list[T]:
    """`obj` of every rank, in rank order (so shards concatenate in input order)."""
    rank, size = world()
    if size == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def concat(parts: list[list[T]] | list[tuple[T, ...]]) -> list[T]:
    """Per-rank lists joined in rank order."""
    return [x for part in parts for x in part]
