"""Precomputed VAE latents and text embeddings (``dataset.cache=latents``).

Each clip is encoded once into its own safetensors file under a directory keyed by everything
that changes the latents (model checkpoint and VAE config, resolution, frames, sampling
settings); the file name is keyed by the clip's file identity (path, size, mtime). A later run
reuses what matches and encodes only what changed. Text embeddings are keyed by the prompt text.
While training from the cache the VAE and text encoder leave the accelerator.

Each clip is cached as ``dataset.cache_variants`` samples: variant v is the clip the dataset
yields in epoch v (its random start, crop and flip), and epoch e trains on variant e mod K. With
the default K=1 every epoch sees the same clip; K=4 keeps four augmentations at 4x the encoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
CACHE_FORMAT = "1"


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(model) -> dict:
    """What in the model changes latents or embeddings: family, checkpoint, VAE/text configs."""
    return {
        "family": model.family,
        "vae": dict(model.vae.config),
        "text_encoder": model.text_encoder.config.to_dict(),
        "tokenizer": type(model.tokenizer).__name__ + str(len(model.tokenizer)),
        "max_text_tokens": getattr(model, "max_text_tokens", None),
    }


def sample_identity(dataset, index: int) -> dict:
    """A clip's file identity: path + size + mtime when the dataset knows its files."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return {"index": index}
    path = samples[index].path
    try:
        stat = os.stat(path)
        return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    except OSError:
        return {"path": os.path.abspath(path)}


@dataclass
class CacheStats:
    encoded_videos: int = 0
    reused_videos: int = 0
    encoded_prompts: int = 0
    reused_prompts: int = 0


class LatentCache:
    def __init__(self, root: Path, model, dataset_cfg: dict):
        self.model = model
        identity = model_identity(model)
        # The variant count is left out of the key: variant v is the same whatever K is, so a larger
        # K reuses the variants already encoded.
        ignored = ("cache", "cache_variants", "cache_dir", "report_dir")
        sampling = {k: v for k, v in dataset_cfg.items() if k not in ignored}
        self.variants = int(dataset_cfg.get("cache_variants", 1) or 1)
        self.video_dir = Path(root) / "latents" / f"{model.family}-{_digest([CACHE_FORMAT, identity, sampling])}"
        self.text_dir = Path(root) / "text" / f"{model.family}-{_digest([CACHE_FORMAT, identity])}"
        self.stats = CacheStats()
        self._text_memory: dict[str, torch.Tensor] = {}  # prompts are few and small: keep them loaded

    def video_path(self, dataset, index: int, variant: int = 0) -> Path:
        suffix = f".v{variant}" if variant else ""  # variant 0 keeps the name caches had before variants
        return self.video_dir / f"{_digest(sample_identity(dataset, index))}{suffix}.safetensors"

    def text_path(self, prompt: str) -> Path:
        return self.text_dir / f"{hashlib.sha1(prompt.encode()).hexdigest()[:20]}.safetensors"

    @staticmethod
    def _write(path: Path, tensors: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)  # a killed build never leaves a half-written entry

    @torch.no_grad()
    def build(self, dataset, prompts: list[str], *, device) -> CacheStats:
        """Encode what is missing (progress bar), reuse the rest."""
        jobs = [(variant, index) for variant in range(self.variants) for index in range(len(dataset))]
        for variant, index in tqdm(jobs, desc="cache latents", unit="clip"):
            path = self.video_path(dataset, index, variant)
            if path.is_file():
                self.stats.reused_videos += 1
                continue
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(variant)  # the clip an uncached run would decode in epoch `variant`
            video = dataset[index]["video"].unsqueeze(0).to(device)
            self._write(path, {"latents": self.model.encode_videos(video)[0]})
            self.stats.encoded_videos += 1
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(0)
        for prompt in tqdm(sorted(set(prompts)), desc="cache text", unit="prompt", leave=False):
            path = self.text_path(prompt)
            if path.is_file():
                self.stats.reused_prompts += 1
                continue
            self._write(path, {"embeds": self.model.encode_prompts([prompt])[0]})
            self.stats.encoded_prompts += 1
        log.info("Latent cache %s: %s", self.video_dir, self.stats)
        return self.stats

    def embeds(self, prompts: list[str]) -> torch.Tensor:
        for prompt in prompts:
            if prompt not in self._text_memory:
                path = self.text_path(prompt)
                if not path.is_file():
                    raise KeyError(f"prompt not in the text cache: {prompt!r}")
                self._text_memory[prompt] = load_file(path)["embeds"]
        return torch.stack([self._text_memory[p] for p in prompts])


def cached_prompts(dataset) -> list[str]:
    """Every caption a training sample may draw, plus "" for caption dropout."""
    samples = getattr(dataset, "samples", None)
    captions = [c for s in samples for c in s.captions] if samples is not None else list(dataset.captions())
    return [*captions, ""]


class CachedLatents(Dataset):
    """Dataset view that serves cached latents instead of decoding videos."""

    def __init__(self, dataset, cache: LatentCache, seed: int):
        self.dataset = dataset
        self.paths = [[cache.video_path(dataset, i, v) for v in range(cache.variants)] for i in range(len(dataset))]
        self.seed = seed
        self.epoch = 0
        # Bucketed data: batches must still come from one bucket (cached latents differ in shape).
        self.buckets = getattr(dataset, "buckets", None)
        self.bucket_of = getattr(dataset, "bucket_of", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        samples = getattr(self.dataset, "samples", None)
        if samples is not None:
            sample = samples[index]
            options = sample.captions
            # Its own RNG stream: no frames are decoded, so the caption draw cannot share theirs.
            prompt = random.Random(f"{self.seed}/{self.epoch}/{index}/caption").choice(options)
            key = sample.key
        else:
            prompt, key = self.dataset.captions()[index], str(index)
        variants = self.paths[index]
        latents = load_file(variants[self.epoch % len(variants)])["latents"]
        return {"latents": latents, "prompt": prompt, "key": key}

    def captions(self) -> list[str]:
        return self.dataset.captions()
