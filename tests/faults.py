"""Datasets that inject faults for real (used through the config's `_target_`)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class PoisonedClips(Dataset):
    """Random in-memory clips whose pixels are NaN during the epochs listed in ``nan_epochs``."""

    def __init__(self, *, num_videos: int, num_frames: int, height: int, width: int, nan_epochs: list[int],
                 split: str = "train", report_dir: str | None = None, **_ignored):
        generator = torch.Generator().manual_seed(0)
        self.videos = torch.rand(num_videos, num_frames, 3, height, width, generator=generator) * 2 - 1
        self.nan_epochs = set(nan_epochs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        video = self.videos[index].clone()
        if self.epoch in self.nan_epochs:
            video.fill_(float("nan"))
        return {"video": video, "prompt": f"clip {index}", "key": f"clip-{index}"}

    def captions(self) -> list[str]:
        return [f"clip {i}" for i in range(len(self))]


class CrashingClips(PoisonedClips):
    """Kills the data loader worker process that reads item ``crash_index`` (like a decoder segfault)."""

    def __init__(self, *, crash_index: int, **kwargs):
        super().__init__(nan_epochs=[], **kwargs)
        self.crash_index = crash_index

    @property
    def samples(self):
        from t2v_exp.data.sources import Sample

        return [Sample(f"/data/clip_{i:03d}.mp4", [f"clip {i}"], f"clip-{i}") for i in range(len(self))]

    def __getitem__(self, index: int) -> dict:
        if index == self.crash_index:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


class DiskFillsUp(PoisonedClips):
    """Reading item ``full_at`` fills the disk: from then on every file write beyond ``limit_bytes``
    fails (RLIMIT_FSIZE, with SIGXFSZ ignored so the write returns EFBIG), then the item raises.
    Run it only in a subprocess: the limit stays for the rest of the process."""

    def __init__(self, *, full_at: int, limit_bytes: int, **kwargs):
        super().__init__(nan_epochs=[], **kwargs)
        self.full_at, self.limit_bytes = full_at, limit_bytes

    def __getitem__(self, index: int) -> dict:
        if index == self.full_at:
            import resource
            import signal

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            raise OSError(28, "No space left on device (injected by tests.faults.DiskFillsUp)")
        return super().__getitem__(index)
