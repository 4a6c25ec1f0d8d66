"""Training as one of several processes with torch DDP: `torchrun --nproc-per-node N scripts/train.py ...`.

torchrun starts N copies of the command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set;
`start_process_group` (called by `train.py`) joins them into the default process group: NCCL for a CUDA run, each
process on the GPU of its LOCAL_RANK, gloo on the CPU. Without those variables it does nothing and training runs
as the one process it always was. `mil.training.loop` asks `current_ranks()` which process it is, so
`train_model` trains as one rank of any process group that is already set up.

What the ranks share (see `mil.training.loop`): every rank reads the same cache and makes the same split; the
training bags of each epoch are sharded (`mil.training.loaders.EpochSampler`); the module is wrapped in
DistributedDataParallel, so gradients are averaged over the ranks at every step (`--batch-size` is per process:
the global batch is batch size x world size); validation runs on each rank's share and the predictions are
gathered (`mil.training.validation`), so metrics, early stopping and thresholds see the whole validation set;
rank 0's loop state is broadcast after every epoch so the ranks stop together; rank 0 alone writes the
checkpoint, the model folder and the progress bar. Checkpoints and folders have the single-process format (the
unwrapped module's weights): a run may resume on another number of processes (it is logged; the global batch
changes with it). Every rank must see the same --out folder: on several machines it has to be on a shared
filesystem, and a rank that sees another checkpoint than rank 0 stops the run saying so.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hpa_cells.devices import DeviceError, resolve_device
from mil.training.config import TrainingError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """Which process of a training run this is: `rank` of `world_size` (`local_rank` on its machine); `backend`
    is the process group's ("nccl", "gloo") or None for a run of one process without a group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


SINGLE = Ranks()
"""A run of one process (no process group)."""


def torchrun_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's environment variables, or None when they are not set.
    TrainingError for a partial or inconsistent set."""
    env = os.environ if env is None else env
    present = [name for name in TORCHRUN_VARIABLES if name in env]
    if not present:
        return None
    if len(present) < len(TORCHRUN_VARIABLES):
        missing = ", ".join(name for name in TORCHRUN_VARIABLES if name not in env)
        raise TrainingError(f"{', '.join(present)} set but not {missing}: start several training processes with "
                            "torchrun (it sets RANK, WORLD_SIZE and LOCAL_RANK), or unset them for one process")
    try:
        rank, world, local = (int(env[name]) for name in TORCHRUN_VARIABLES)
    except ValueError:
        raise TrainingError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them), got "
                            + ", ".join(f"{name}={env[name]!r}" for name in TORCHRUN_VARIABLES)) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise TrainingError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need 0 <= RANK < WORLD_SIZE")
    return rank, world, local


def rank_device(option: str, ranks: Ranks = SINGLE) -> torch.device:
    """The device of one rank for `--device option`: in a process group, auto or cuda is the GPU of the rank's
    LOCAL_RANK (cuda:LOCAL_RANK), cpu stays cpu; one process keeps `hpa_cells.devices.resolve_device`'s answer.
    DeviceError for a GPU that is not there, or a cuda:N given to several ranks (each takes its own)."""
    device = torch.device(resolve_device(option))
    if device.type != "cuda" or not ranks.distributed:
        return device
    if device.index is not None and ranks.world_size > 1:
        raise DeviceError(f"--device {option}: with {ranks.world_size} processes each one uses the GPU of its "
                          "LOCAL_RANK; give --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise DeviceError(f"LOCAL_RANK {ranks.local_rank} has no GPU: {count} CUDA device(s) are visible on this "
                          f"machine; start at most {count} processes per machine (--nproc-per-node)")
    return torch.device("cuda", ranks.local_rank if device.index is None else device.index)


def start_process_group(device_option: str, env: Mapping[str, str] | None = None,
                        timeout_minutes: float = 30.0) -> Ranks:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU; the device per rank as `rank_device`), or
    return `SINGLE` when the command was not started by torchrun."""
    found = torchrun_ranks(env)
    if found is None:
        return SINGLE
    rank, world, local = found
    device = rank_device(device_option, Ranks(rank, world, local, "pending"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Ranks(rank, world, local, backend)


def stop_process_group() -> None:
    """Leave the process group (when there is one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current_ranks() -> Ranks:
    """This process's place in the default process group, or `SINGLE` when there is none."""
    if not dist.is_available() or not dist.is_initialized():
        return SINGLE
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend())


def gather_objects(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank; [value] for one process."""
    if not ranks.distributed:
        return [value]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_from_main(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value` (picklable) on every rank."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: list[float], ranks: Ranks) -> list[float]:
    """The element-wise sum of `values` over the ranks (float64, exact for counts)."""
    if not ranks.distributed:
        return list(values)
    return [float(sum(part)) for part in zip(*gather_objects(list(values), ranks), strict=True)]


def barrier(ranks: Ranks) -> None:
    """Wait until every rank is here."""
    if ranks.distributed:
        dist.barrier()


def wrap_for_training(model: nn.Module, ranks: Ranks, device: torch.device, unused_outputs: bool = False
                      ) -> nn.Module:
    """`model` in DistributedDataParallel (the gradients of the parameters that train now averaged over the ranks
    at every backward; rank 0's weights broadcast on wrapping), or `model` itself for one process.
    `unused_outputs`: the loss leaves some parameters without a gradient at every step (per-cell losses never
    reach the image pooling); DDP then learns which from the first step (`static_graph`), since searching the
    outputs' graph (`find_unused_parameters`) would still count them as used."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, static_graph=unused_outputs)


def check_same_start(resume_epoch: int | None, cache_sha256: str, ranks: Ranks, out_dir: os.PathLike[str] | str
                     ) -> None:
    """TrainingError on every rank when the ranks read different caches (content sha256) or found different
    checkpoints in --out (epochs, or a checkpoint on some ranks only): data or a folder not shared by every
    machine."""
    seen = gather_objects((resume_epoch, cache_sha256), ranks)
    if len({sha for _, sha in seen}) > 1:
        described = ", ".join(f"rank {r}: {sha[:12]}..." for r, (_, sha) in enumerate(seen))
        raise TrainingError(f"the ranks read different cell caches ({described}): every process must read the same "
                            "cache (a copy on each machine must be identical)")
    if len({epoch for epoch, _ in seen}) > 1:
        described = ", ".join(f"rank {r}: {'no checkpoint' if e is None else f'epoch {e}'}"
                              for r, (e, _) in enumerate(seen))
        raise TrainingError(f"the ranks see different checkpoints in {out_dir} ({described}): every process must "
                            "see the same --out folder; on several machines put it on a filesystem they share")
