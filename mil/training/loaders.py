"""The training loop's DataLoaders: which bags each process reads in each epoch, and how they reach the device.

- `epoch_order(size, seed, epoch)`: the order of an epoch's training bags, a seeded permutation (the one torch's
  RandomSampler drew for this loop before these loaders existed, so a seed still gives the same run and older
  checkpoints resume to the same weights).
- `EpochSampler`: one process's share of that order (as torch's DistributedSampler: the order is padded by
  repeating its start to a multiple of the number of processes, so every process runs the same number of steps,
  which DDP needs; process r takes every world_size-th bag from position r). Validation reads positions r, r + W,
  ... in order, unpadded; `mil.training.validation` puts the gathered predictions back in dataset order. With
  one process the share is the whole order.
- `EpochItems`: the sampler yields (epoch, position) keys, and the dataset wrapper calls the dataset's
  `set_epoch` in whatever process reads the item. So persistent DataLoader workers (kept alive across epochs)
  still draw each epoch's cells and mosaic bags, instead of repeating the epoch their copy was made in.
- `make_loader`: pinned memory on CUDA (asynchronous copies, `mil.training.precision.to_device`) and persistent
  workers when there are any. Each worker reads the cache through its own HDF5 handle: `CellCache` opens the file
  lazily per process (a handle is never shared across fork), and the main process closes its own handle before
  workers are forked, so none is inherited open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The training order of epoch `epoch`: a permutation of range(size) from a generator seeded `seed + epoch`,
    after the one draw a DataLoader takes from its generator for its workers' base seed."""
    generator = torch.Generator().manual_seed(seed + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(size, generator=generator).tolist()


class EpochSampler(Sampler):
    """One process's share (`rank` of `world_size`) of a dataset of `size` items each epoch, as (epoch, position)
    keys for `EpochItems`. shuffle: the epoch's order (`epoch_order`), padded to a multiple of world_size; else
    the positions in order, unpadded. Call `set_epoch` before each epoch."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if size < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler needs size >= 0 and 0 <= rank < world_size, got size {size}, rank {rank}, "
                             f"world_size {world_size}")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def positions(self) -> list[int]:
        """This process's dataset positions in this epoch, in the order it reads them."""
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        order = epoch_order(self.size, self.seed, self.epoch)
        padding = -len(order) % self.world_size
        if padding and order:
            order = order + (order * (padding // len(order) + 1))[:padding]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, position) for position in self.positions()])

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.size // self.world_size) if self.size else 0
        return len(range(self.rank, self.size, self.world_size))


class EpochItems(Dataset):
    """A dataset read by (epoch, position) keys: the wrapped dataset is moved to that epoch (`set_epoch`, when its
    `epoch` differs) in the process that reads the item, then item `position` is returned."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, position = key
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[position]


def make_loader(dataset: Dataset, collate: Callable, batch_size: int, sampler: EpochSampler, workers: int,
                device: torch.device, seed: int = 0) -> DataLoader:
    """A DataLoader over `dataset` in `sampler`'s order: pinned memory on CUDA, persistent workers when
    `workers` > 0 (the main process's cache handle is closed first, so no worker inherits it open). Its own
    seeded generator gives the workers' base seed (never the global RNG, which dropout draws from)."""
    if workers > 0:
        cache = getattr(dataset, "cache", None)
        if cache is not None:
            cache.close()
    return DataLoader(EpochItems(dataset), batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))
