"""Precomputed VAE latents and text embeddings (``dataset.cache=latents``).

Each clip is encoded once into its own safetensors file (a shard) under a directory keyed by
everything that changes the latents (the VAE's config and a fingerprint of its weights, so weights
replaced in place at the same path are never mistaken for the old ones; resolution, frames,
sampling settings); the file name is keyed by the clip's file identity (path, size, mtime). A later
run reuses what matches and encodes only what changed. Text embeddings are keyed by the prompt
text, under a directory keyed by the text encoder (config and weights) and tokenizer.
While training from the cache the VAE and text encoder leave the accelerator.

Every shard written is recorded in its directory's ``index.jsonl`` (size, sha256, shape, dtype).
A shard is reused only when it matches its record and holds the shape and dtype the model
produces; a truncated, altered or wrong-shaped shard, or one without a record, is encoded again.

Each clip is cached as ``dataset.cache_variants`` samples: variant v is the clip the dataset
yields in epoch v (its random start, crop and flip), and epoch e trains on variant e mod K. With
the default K=1 every epoch sees the same clip; K=4 keeps four augmentations at 4x the encoding.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save
from torch.utils.data import Dataset
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
# 2: encoder weights fingerprinted in the keys; shards recorded (and checked) in index.jsonl.
CACHE_FORMAT = "2"
SHARD_INDEX = "index.jsonl"
# Settings that never change a cached tensor, left out of the key so changing them re-encodes
# nothing. The variant count is among them: variant v is the same whatever K is, so a larger K
# reuses the variants already encoded. Media limits and allow_outside_root only decide which
# files are used, and each file has its own shard.
KEY_IGNORED = ("cache", "cache_variants", "cache_dir", "report_dir", "max_pixels_per_frame", "max_frames",
               "max_duration_s", "allow_outside_root")


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, dtypes, shapes and bytes of its state dict).

    Configs and paths do not tell a fine-tuned or replaced VAE from the original at the same path;
    the bytes do. It reads every weight once when a cache is opened: well under a second for a
    VAE, a few seconds for a multi-gigabyte text encoder, nothing beside encoding a data set.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def video_identity(model) -> dict:
    """What in the model changes the latents: the family and the VAE (config and weights)."""
    return {"family": model.family, "vae": dict(model.vae.config), "vae_weights": weights_fingerprint(model.vae)}


def text_identity(model) -> dict:
    """What in the model changes the prompt embeddings: text encoder (config and weights), tokenizer."""
    return {
        "family": model.family,
        "text_encoder": model.text_encoder.config.to_dict(),
        "text_encoder_weights": weights_fingerprint(model.text_encoder),
        "tokenizer": type(model.tokenizer).__name__ + str(len(model.tokenizer)),
        "max_text_tokens": model.max_text_tokens,
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
    rebuilt_videos: int = 0  # of the encoded: shards found bad (truncated, altered, wrong shape)
    rebuilt_prompts: int = 0


def _valid_record(record) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("file"), str)
            and type(record.get("size")) is int and isinstance(record.get("sha256"), str)
            and isinstance(record.get("shape"), list) and all(type(n) is int for n in record["shape"])
            and isinstance(record.get("dtype"), str))


class ShardStore:
    """A directory of single-tensor safetensors shards and ``index.jsonl``, one line per shard
    written: file, size, sha256, shape, dtype. The index is only appended to (a short line per
    shard), so ranks and concurrent runs sharing a cache never rewrite each other's records; the
    last record of a file wins, and an unreadable line only costs that shard a re-encode."""

    def __init__(self, directory: Path, tensor_name: str):
        self.directory = Path(directory)
        self.tensor_name = tensor_name
        self._records: dict[str, dict] | None = None

    def records(self) -> dict[str, dict]:
        if self._records is None:
            self._records = {}
            index = self.directory / SHARD_INDEX
            lines = index.read_text(encoding="utf-8", errors="replace").splitlines() if index.is_file() else []
            for line in lines:
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if _valid_record(record):
                    self._records[record["file"]] = record
        return self._records

    def write(self, path: Path, tensor: torch.Tensor) -> None:
        """The shard, atomically (a killed build never leaves half a file under the name), then its record."""
        tensor = tensor.detach().cpu().contiguous()
        data = save({self.tensor_name: tensor})
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        record = {"file": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                  "shape": list(tensor.shape), "dtype": str(tensor.dtype)}
        with (self.directory / SHARD_INDEX).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.records()[path.name] = record

    def problem(self, path: Path, expected: tuple[tuple[int, ...], torch.dtype]) -> str | None:
        """Why the shard at ``path`` cannot be reused (None: it can): it must match its record
        byte for byte and hold one tensor of the ``expected`` (shape, dtype)."""
        record = self.records().get(path.name)
        if record is None:
            return "not in the cache index (an older cache format, or a build killed before recording it)"
        size = path.stat().st_size
        if size != record["size"]:
            return f"{size} bytes, the cache index recorded {record['size']} (truncated or replaced)"
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            return "checksum differs from the one recorded in the cache index (altered on disk)"
        try:
            tensor = load(data).get(self.tensor_name)
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
            return f"unreadable safetensors ({type(exc).__name__}: {exc})"
        if tensor is None:
            return f"holds no '{self.tensor_name}' tensor"
        shape, dtype = expected
        if (tuple(tensor.shape), tensor.dtype) != (tuple(shape), dtype):
            return (f"holds {self.tensor_name} {tuple(tensor.shape)} {tensor.dtype}; the model produces "
                    f"{tuple(shape)} {dtype}")
        return None


class LatentCache:
    """``posteriors=True`` (``model.latent_sampling=sample``) stores each clip's posterior mean and
    std stacked (``[2, *latent shape]``), in a directory of its own; training then draws a fresh
    latent from them every step. Otherwise a shard holds the mean alone."""

    def __init__(self, root: Path, model, dataset_cfg: dict, *, posteriors: bool = False):
        self.model = model
        self.posteriors = posteriors
        sampling = {k: v for k, v in dataset_cfg.items() if k not in KEY_IGNORED}
        if posteriors:  # caches of the mean alone keep the key they always had
            sampling["latent_posteriors"] = True
        self.variants = int(dataset_cfg.get("cache_variants", 1) or 1)
        self.video_dir = (Path(root) / "latents"
                          / f"{model.family}-{_digest([CACHE_FORMAT, video_identity(model), sampling])}")
        self.text_dir = Path(root) / "text" / f"{model.family}-{_digest([CACHE_FORMAT, text_identity(model)])}"
        self.videos = ShardStore(self.video_dir, "latents")
        self.texts = ShardStore(self.text_dir, "embeds")
        self.stats = CacheStats()
        self._text_memory: dict[str, torch.Tensor] = {}  # prompts are few and small: keep them loaded
        # What the model produces, learnt from an encode: (shape, dtype) per clip geometry, and for text.
        self._latent_form: dict[tuple, tuple] = {}
        self._text_form: tuple | None = None

    def video_path(self, dataset, index: int, variant: int = 0) -> Path:
        suffix = f".v{variant}" if variant else ""  # variant 0 keeps the name caches had before variants
        return self.video_dir / f"{_digest(sample_identity(dataset, index))}{suffix}.safetensors"

    def text_path(self, prompt: str) -> Path:
        return self.text_dir / f"{hashlib.sha1(prompt.encode()).hexdigest()[:20]}.safetensors"

    @staticmethod
    def _form(tensor: torch.Tensor) -> tuple:
        return tuple(tensor.shape), tensor.dtype

    def _expected_latents(self, dataset, index: int, device) -> tuple:
        """(shape, dtype) the model gives a clip of this sample's geometry: from an encode already
        done in this build, else from encoding one blank clip of that geometry (once per geometry)."""
        geometry = tuple(dataset.geometry(index)) if hasattr(dataset, "geometry") else None
        if geometry not in self._latent_form:
            if geometry is None:
                blank = torch.zeros_like(dataset[index]["video"])
            else:
                frames, height, width = geometry
                blank = torch.zeros(frames, 3, height, width)
            self._latent_form[geometry] = self._form(self._encode(blank.unsqueeze(0).to(device)))
        return self._latent_form[geometry]

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """One clip's shard content: its latents, or its posterior (mean, std) stacked."""
        if self.posteriors:
            mean, std = self.model.encode_video_posteriors(video)
            return torch.stack([mean[0], std[0]])
        return self.model.encode_videos(video)[0]

    def _expected_embeds(self) -> tuple:
        if self._text_form is None:
            self._text_form = self._form(self.model.encode_prompts([""])[0])
        return self._text_form

    def _reusable(self, store: ShardStore, path: Path, expected) -> tuple[bool, bool]:
        """(reuse it, it was there but bad); a bad shard is named in the log with the reason."""
        if not path.is_file():
            return False, False
        problem = store.problem(path, expected())
        if problem is None:
            return True, False
        log.warning("latent cache: re-encoding %s: %s", path, problem)
        return False, True

    @torch.no_grad()
    def build(self, dataset, prompts: list[str], *, device) -> CacheStats:
        """Encode what is missing or bad (progress bar), reuse the rest."""
        jobs = [(variant, index) for variant in range(self.variants) for index in range(len(dataset))]
        for variant, index in tqdm(jobs, desc="cache latents", unit="clip"):
            path = self.video_path(dataset, index, variant)
            expected = functools.partial(self._expected_latents, dataset, index, device)
            reuse, bad = self._reusable(self.videos, path, expected)
            if reuse:
                self.stats.reused_videos += 1
                continue
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(variant)  # the clip an uncached run would decode in epoch `variant`
            latents = self._encode(dataset[index]["video"].unsqueeze(0).to(device))
            geometry = tuple(dataset.geometry(index)) if hasattr(dataset, "geometry") else None
            self._latent_form.setdefault(geometry, self._form(latents))
            self.videos.write(path, latents)
            self.stats.encoded_videos += 1
            self.stats.rebuilt_videos += bad
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(0)
        for prompt in tqdm(sorted(set(prompts)), desc="cache text", unit="prompt", leave=False):
            path = self.text_path(prompt)
            reuse, bad = self._reusable(self.texts, path, self._expected_embeds)
            if reuse:
                self.stats.reused_prompts += 1
                continue
            embeds = self.model.encode_prompts([prompt])[0]
            self._text_form = self._text_form or self._form(embeds)
            self.texts.write(path, embeds)
            self.stats.encoded_prompts += 1
            self.stats.rebuilt_prompts += bad
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
        self.posteriors = cache.posteriors
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
        if self.posteriors:  # mean and std: the trainer draws this step's latent from them
            return {"latents": latents[0], "latents_std": latents[1], "prompt": prompt, "key": key}
        return {"latents": latents, "prompt": prompt, "key": key}

    def captions(self) -> list[str]:
        return self.dataset.captions()
