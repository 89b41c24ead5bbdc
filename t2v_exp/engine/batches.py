"""Deterministic, resumable batches: the order depends only on (seed, epoch), never on RNG state.

A checkpoint records (epoch, batch index); resuming rebuilds the same epoch order and skips
the consumed batches without decoding them, so the resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from ..data.buckets import bucket_batches
from ..errors import UserError


@dataclass
class DataPosition:
    epoch: int = 0
    batch: int = 0  # batches of this epoch already consumed (by this rank)


def epoch_batches(num_samples: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """Index batches of one epoch for one rank: a seeded shuffle cut into global batches of
    ``batch_size * world_size``; rank r takes the r-th slice of each. So N processes with batch
    b see exactly the global batches one process with batch N*b sees. Incomplete tail dropped."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    global_batch = batch_size * world_size
    batches = []
    for start in range(0, num_samples // global_batch * global_batch, global_batch):
        batches.append(order[start + rank * batch_size : start + (rank + 1) * batch_size])
    return batches


ENGINE_DATASET_KEYS = ("cache", "cache_variants")  # dataset.* settings the engine consumes, not the dataset class


def instantiate_dataset(dataset_cfg, *, split: str, report_dir: str | None):
    """Build the dataset named by ``dataset._target_`` (the config is the registry)."""
    node = OmegaConf.to_container(dataset_cfg, resolve=True)
    for key in ENGINE_DATASET_KEYS:
        node.pop(key, None)
    return instantiate(node, split=split, report_dir=report_dir)


def collate(items: list[dict]) -> dict:
    """Stack pixel clips (``video``) or cached latents (``latents``, with ``latents_std`` when the cache
    holds posteriors), keep prompts and keys as lists."""
    batch = {"prompt": [item["prompt"] for item in items], "key": [item["key"] for item in items]}
    for field in ("video", "latents", "latents_std"):
        if field in items[0]:
            batch[field] = torch.stack([item[field] for item in items])
    return batch


# Workers start from a clean server process, not by forking the trainer: a fork copies every lock
# held by another thread at that instant (W&B's service threads, the decoder's and OpenMP's pools)
# and a worker that then takes one waits forever. Seen as a silent hang in CI; Python 3.14 made
# the same choice its default.
WORKER_START = "forkserver"


class BatchStream:
    """Endless iterator over batches that walks epochs in a fixed order; ``position`` says how far it got."""

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, pin_memory: bool = False, start: DataPosition | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.position = start or DataPosition()
        if len(dataset) // world_size < batch_size:
            raise ValueError(
                f"The dataset has {len(dataset)} usable samples, fewer than one batch per process "
                f"(gpu.batch_size={batch_size} x {world_size} processes): lower gpu.batch_size or add data."
            )
        if not self.epoch_plan(0):  # bucketed: every bucket may hold less than a global batch
            counts = {bucket: dataset.bucket_of.count(i) for i, bucket in enumerate(dataset.buckets)}
            raise ValueError(
                f"No bucket of dataset.buckets holds a full batch of {batch_size * world_size} samples "
                f"(samples per bucket: {counts}): lower gpu.batch_size, merge buckets or add data."
            )

    def epoch_plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches of one epoch: plain shuffled, or bucket by bucket when the dataset is bucketed."""
        bucket_of = getattr(self.dataset, "bucket_of", None)
        if bucket_of is not None:
            return bucket_batches(bucket_of, self.batch_size, seed=self.seed, epoch=epoch, rank=self.rank,
                                  world_size=self.world_size)
        return epoch_batches(len(self.dataset), self.batch_size, seed=self.seed, epoch=epoch, rank=self.rank,
                             world_size=self.world_size)

    def plan(self, start: DataPosition) -> Iterator[tuple[DataPosition, list[tuple[int, int]]]]:
        """(position after the batch, its (epoch, index) items), from ``start`` onwards."""
        epoch, first = start.epoch, start.batch
        while True:
            batches = self.epoch_plan(epoch)
            for number in range(first, len(batches)):
                yield DataPosition(epoch, number + 1), [(epoch, index) for index in batches[number]]
            epoch, first = epoch + 1, 0

    def __iter__(self) -> Iterator[dict]:
        # One loader spans all epochs: workers start once and keep prefetching across epoch ends
        # (a loader per epoch restarted them every epoch, a visible stall on small datasets).
        start = self.position
        positions = (position for position, _ in self.plan(start))
        loader = iter(DataLoader(EpochItems(self.dataset), batch_sampler=BatchPlan(self, start),
                                 num_workers=self.num_workers, collate_fn=collate, pin_memory=self.pin_memory,
                                 multiprocessing_context=WORKER_START if self.num_workers else None))
        for position in positions:
            try:
                batch = next(loader)
            except RuntimeError as exc:  # e.g. "DataLoader worker (pid N) is killed by signal"
                raise DataLoadingError(self.describe_batch(position.epoch, position.batch - 1), exc) from exc
            self.position = position
            yield batch

    def describe_batch(self, epoch: int, batch: int) -> str:
        """The files of the batch being loaded (with workers, a few batches may be in flight)."""
        batches = self.epoch_plan(epoch)
        in_flight = [i for b in batches[batch : batch + max(1, 2 * self.num_workers)] for i in b]
        samples = getattr(self.dataset, "samples", None)
        names = [str(samples[i].path) if samples is not None else f"item {i}" for i in in_flight]
        return f"epoch {epoch}, batch {batch}: " + ", ".join(names)


class BatchPlan:
    """The DataLoader's batch sampler: the stream's plan from where it stands, without end."""

    def __init__(self, stream: BatchStream, start: DataPosition):
        self.stream, self.start = stream, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return (items for _, items in self.stream.plan(self.start))


class EpochItems(Dataset):
    """Items addressed as (epoch, index). Each worker holds its own copy of the dataset, so with one
    loader across epochs the epoch has to travel with the index rather than through ``set_epoch``
    in the main process."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.epoch = epoch
        return self.dataset[index]


class DataLoadingError(UserError, RuntimeError):
    """A data loader worker died; the message names the files it was reading."""

    def __init__(self, where: str, cause: BaseException):
        super().__init__(f"Data loading failed at {where} ({type(cause).__name__}: {cause}). One of these files "
                         f"crashed the decoder: remove or re-encode it, or run with gpu.num_workers=0 to see it directly.")
