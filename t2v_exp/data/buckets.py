"""Aspect/length bucketing (``dataset.buckets``; off by default).

Videos of mixed shapes are otherwise centre-cropped to one (frames, H, W): a portrait clip loses
most of its picture to a landscape model shape. With buckets, each training sample goes to the
bucket nearest its aspect ratio among those it is long enough for, is resized and cropped to that
bucket's shape, and every batch holds samples of one bucket only, so clips stack. Everything is
deterministic in (seed, epoch), like the rest of the data, so resume still replays the same batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

Bucket = tuple[int, int, int]  # (frames, height, width)


def nearest_bucket(height: int, width: int, buckets: Sequence[Bucket], allowed: Iterable[int]) -> int | None:
    """Among the ``allowed`` bucket indices: nearest aspect ratio (log scale), then more frames."""
    allowed = list(allowed)
    if height <= 0 or width <= 0 or not allowed:
        return None
    aspect = math.log(width / height)
    return min(allowed, key=lambda i: (abs(math.log(buckets[i][2] / buckets[i][1]) - aspect), -buckets[i][0]))


def bucket_batches(ids: Sequence[int | None], batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                   world_size: int = 1, drop_last: bool = True) -> list[list[int]]:
    """Shuffled batches of sample indices, each from one bucket; samples without a bucket are left out.

    Global batches of ``batch_size * world_size`` come from one bucket and rank r takes the r-th
    slice of each, so every process sees the same shape at each step (as ``epoch_batches`` does).
    """
    rng = random.Random(f"{seed}/{epoch}/buckets")
    global_batch = batch_size * world_size
    groups: dict[int, list[int]] = {}
    for index, bucket in enumerate(ids):
        if bucket is not None:
            groups.setdefault(bucket, []).append(index)
    batches = []
    for bucket in sorted(groups):
        members = groups[bucket]
        rng.shuffle(members)
        for start in range(0, len(members), global_batch):
            batch = members[start:start + global_batch]
            if len(batch) == global_batch or not drop_last:
                batches.append(batch)
    rng.shuffle(batches)  # interleave buckets so training does not see one shape for a long stretch
    return [batch[rank * batch_size:(rank + 1) * batch_size] for batch in batches]


def parse_buckets(value, key: str = "dataset.buckets") -> list[Bucket]:
    """``[[frames, height, width], ...]`` from the config, checked; raises ValueError naming ``key``."""
    buckets = []
    for i, entry in enumerate(value):
        entry = list(entry)
        if len(entry) != 3 or not all(isinstance(v, int) and v > 0 for v in entry):
            raise ValueError(f"{key}[{i}]={entry} must be [frames, height, width] of positive integers, "
                             f"e.g. [16, 256, 448]")
        buckets.append((entry[0], entry[1], entry[2]))
    if not buckets:
        raise ValueError(f"{key} is empty: give at least one [frames, height, width], or null for no bucketing")
    return buckets
