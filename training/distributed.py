"""Data-parallel training under `torchrun`, on one machine or several: process group set-up (gloo on
CPU, nccl on GPU), the rank's device, sums over ranks, and agreement between ranks on stopping and
on where a restarted run resumes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group when torchrun started several processes; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    wants_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device_name!r} asked for, but CUDA is not available; use cpu")
    if world_size <= 1:
        if device_name == "auto":
            return Ranks(), torch.device("cuda" if wants_cuda else "cpu")
        return Ranks(), torch.device(device_name)
    ranks = Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    if wants_cuda:
        torch.cuda.set_device(ranks.local_rank)
        return ranks, torch.device("cuda", ranks.local_rank)
    return ranks, torch.device("cpu")


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True when `flag` is true on any rank, so that all ranks stop together rather than hang."""
    if not ranks.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_sum(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """`values` summed over every rank, in place: epoch totals that each rank holds a share of."""
    if ranks.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def min_max(value: int, ranks: Ranks, device: torch.device) -> tuple[int, int]:
    """The smallest and the largest of the ranks' `value`s: equal when every rank agrees."""
    if not ranks.enabled:
        return value, value
    both = torch.tensor([-value, value], dtype=torch.int64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return -int(both[0]), int(both[1])


def restart_count() -> int:
    """How many times torchrun's agent on this machine has restarted its workers (0: first start).

    torchrun (`--max-restarts`) sets TORCHELASTIC_RESTART_COUNT for each worker group it starts; a
    node that was itself relaunched (a new pod) counts from 0 again, so callers ask all ranks."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


def teardown(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.destroy_process_group()
