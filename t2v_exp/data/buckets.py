"""Optional aspect/length bucketing (off by default; the engine does not use it yet).

Videos of mixed shapes are usually centre-cropped to one (frames, H, W). Bucketing instead maps
each sample to the nearest of a few target shapes (same pixel budget, different aspect ratio;
fewer frames for short files) and batches only samples of the same bucket, so nothing is
cropped away or looped. Everything is deterministic in (seed, epoch), like the rest of the data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Bucket = tuple[int, int, int]  # (frames, height, width)


def assign_bucket(frames: int, height: int, width: int, buckets: Sequence[Bucket]) -> int | None:
    """Index of the bucket with the nearest aspect ratio (log scale) among those the file is long
    enough for, preferring more frames; None when the file is shorter than every bucket."""
    if height <= 0 or width <= 0:
        return None
    long_enough = [i for i, (f, _, _) in enumerate(buckets) if frames >= f]
    if not long_enough:
        return None
    aspect = math.log(width / height)
    return min(long_enough, key=lambda i: (abs(math.log(buckets[i][2] / buckets[i][1]) - aspect), -buckets[i][0]))


def bucket_ids(samples, buckets: Sequence[Bucket]) -> list[int | None]:
    """One bucket per sample from the source geometry IndexedClipDataset stores in ``sample.extra``."""
    return [assign_bucket(s.extra.get("frames", 0), s.extra.get("height", 0), s.extra.get("width", 0), buckets)
            for s in samples]


def bucket_batches(ids: Sequence[int | None], batch_size: int, *, seed: int, epoch: int,
                   drop_last: bool = True) -> list[list[int]]:
    """Shuffled batches of sample indices, each from one bucket; samples without a bucket are left out."""
    rng = random.Random(f"{seed}/{epoch}/buckets")
    groups: dict[int, list[int]] = {}
    for index, bucket in enumerate(ids):
        if bucket is not None:
            groups.setdefault(bucket, []).append(index)
    batches = []
    for bucket in sorted(groups):
        members = groups[bucket]
        rng.shuffle(members)
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            if len(batch) == batch_size or not drop_last:
                batches.append(batch)
    rng.shuffle(batches)  # interleave buckets so training does not see one shape for a long stretch
    return batches
