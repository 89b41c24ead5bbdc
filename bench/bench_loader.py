"""Loader throughput vs what training consumes, with 0 and 2 data-loader workers.

1. Tiny families on this CPU, everything in one process, sides alternating by block:
   - **consumption**: engine optimizer steps/s on in-memory clips (``bench.common.InMemoryClips``,
     the same geometry and batch), i.e. how many clips/s training eats when data is free;
   - **loader alone**: clips/s of the engine's own ``BatchStream`` over ``VideoFolderDataset`` (mp4 +
     caption sidecars, the path ``dataset=video_folder`` takes), ``gpu.num_workers`` 0 and 2;
   - **training from files**: the engine's steps/s with that loader in the loop, 0 and 2 workers.
   A block is ``--epochs-per-block`` whole epochs through one stream that starts its loader (and its
   worker processes) at the block's start and ends it at the block's end, so no worker prefetches
   while another side is being timed.
2. Full-size geometries, loader alone: 16x256x256 (ModelScope / AnimateDiff defaults) and
   49x480x720 (CogVideoX-2B) from 480p sources, 0 vs 2 workers, batch 1. A GPU step shorter than
   ``1 / clips_per_s`` per clip would wait on data with that many workers.

Source videos are generated once (moving gradients with mild noise, libx264, 24 fps) into the
cache dir. Usage: .venv/bin/python bench/bench_loader.py [--rounds 5] [--quick]
Writes bench/results/loader.json (machine, versions, every raw block).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import (  # noqa: E402
    IN_MEMORY_DATASET,
    RESULTS,
    TINY_FAMILIES,
    alternate,
    compose_train,
    machine_info,
    median,
    print_table,
    timed,
    write_json,
)

WORKERS = (0, 2)
SOURCE_FPS = 24
FULL_SIZE = {  # name -> (frames, height, width, model fps), as conf/model/<family>.yaml sets them
    "16x256x256 (modelscope, animatediff)": (16, 256, 256, 8),
    "49x480x720 (cogvideox-2b)": (49, 480, 720, 8),
}


# -- source videos ----------------------------------------------------------------------------------
def cache_root() -> Path:
    return Path(os.environ.get("T2V_EXP_CACHE") or Path.home() / ".cache" / "t2v_exp") / "bench"


def captioned_videos(name: str, count: int, seconds: float, height: int, width: int) -> Path:
    """A folder of ``count`` mp4s with caption sidecars, written once and reused."""
    from t2v_exp.data.video_io import write_video

    folder = cache_root() / f"loader_{name}_{count}x{seconds}s_{width}x{height}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:height, 0:width]
    for v in range(count):
        rng = np.random.default_rng(v)
        frames = np.empty((int(seconds * SOURCE_FPS), height, width, 3), np.uint8)
        for t in range(len(frames)):
            base = ((xs + 4 * t * (1 + v % 3)) // 2 + ys // 3 + 37 * v) % 256
            frames[t] = np.stack([base, (base * 2 + 60) % 256, 255 - base], -1).astype(np.uint8)
            frames[t] ^= rng.integers(0, 4, (height, width, 1), dtype=np.uint8)
        write_video(folder / f"clip{v:03d}.mp4", frames, fps=SOURCE_FPS, crf=23)
        (folder / f"clip{v:03d}.txt").write_text(f"a colour gradient sweeping sideways, take {v}\n")
    done.touch()
    return folder


# -- sides ---------------------------------------------------------------------------------------
def folder_dataset(root: Path, frames: int, height: int, width: int, fps: float, index_dir: Path):
    from t2v_exp.data.folder import VideoFolderDataset

    return VideoFolderDataset(root=str(root), num_frames=frames, height=height, width=width, fps=fps, seed=0,
                              index_dir=str(index_dir))


class LoaderSide:
    """``epochs`` epochs of the engine's BatchStream per block, from a fresh stream; returns clips/s."""

    def __init__(self, dataset, batch_size: int, workers: int, epochs: int):
        from t2v_exp.engine.batches import BatchStream, DataPosition

        self.make = lambda epoch: BatchStream(dataset, batch_size=batch_size, seed=0, num_workers=workers,
                                              start=DataPosition(epoch, 0))
        self.batches_per_block = len(dataset) // batch_size * epochs
        self.batch_size, self.epochs = batch_size, epochs
        self.epoch = 0

    def block(self) -> float:
        stream = iter(self.make(self.epoch))
        self.epoch += self.epochs

        def run():
            for _ in range(self.batches_per_block):
                next(stream)

        seconds = timed(run)
        stream.close()  # ends its loader and workers before the next side runs
        return self.batches_per_block * self.batch_size / seconds


class TrainingSide:
    """The engine's ``train_step`` for ``epochs`` epochs per block; returns optimizer steps/s."""

    def __init__(self, overrides: list[str], run_dir: Path, steps_per_block: int):
        from t2v_exp.engine.trainer import Trainer

        self.trainer = Trainer.from_config(compose_train(overrides, run_dir), run_dir)
        self.steps = steps_per_block
        self.block()  # warm-up

    def block(self) -> float:
        stream = iter(self.trainer.batches)  # continues from the stream's position

        def run():
            for _ in range(self.steps):
                self.trainer.train_step(stream)

        rate = self.steps / timed(run)
        stream.close()  # ends its loader and workers: nothing loads while another side is timed
        return rate

    def close(self) -> None:
        self.trainer.close()


def training_overrides(family: str, dataset: list[str], workers: int) -> list[str]:
    return [f"model={family}", "gpu=cpu", f"gpu.num_workers={workers}", "precision=fp32", "logger=none",
            "validation.enabled=false", "train.checkpoint_every=0", "train.max_steps=100000",
            "train.evaluate_at_end=false", *dataset]


def bench_tiny_family(family: str, source: Path, args, work: Path) -> dict:
    cfg = compose_train([f"model={family}"])
    frames, height, width, fps = cfg.model.num_frames, cfg.model.height, cfg.model.width, cfg.model.fps
    batch = cfg.gpu.batch_size
    dataset = folder_dataset(source, frames, height, width, fps, work / "index")
    steps = len(dataset) // batch * args.epochs_per_block
    files = ["dataset=video_folder", f"dataset.root={source}", f"dataset.index_dir={work / 'index'}"]
    in_memory = [f"dataset._target_={IN_MEMORY_DATASET}", "dataset.name=in_memory", f"dataset.num_videos={len(dataset)}"]
    sides = {
        **{f"loader_w{w}": LoaderSide(dataset, batch, w, args.epochs_per_block) for w in WORKERS},
        "train_in_memory": TrainingSide(training_overrides(family, in_memory, 0),
                                        work / f"{family}_mem", steps),
        **{f"train_files_w{w}": TrainingSide(training_overrides(family, files, w),
                                             work / f"{family}_w{w}", steps) for w in WORKERS},
    }
    raw = alternate({name: side.block for name, side in sides.items()}, args.rounds)
    for side in sides.values():
        if isinstance(side, TrainingSide):
            side.close()
    med = {name: median(values) for name, values in raw.items()}
    consumes = med["train_in_memory"] * batch
    row = {"family": family, "geometry": f"{frames}x{height}x{width}", "batch_size": batch, "clips_per_epoch": len(dataset),
           "consumes_clips_per_s": consumes, "train_in_memory_steps_per_s": med["train_in_memory"], "raw": raw}
    for w in WORKERS:
        row[f"loader_w{w}_clips_per_s"] = med[f"loader_w{w}"]
        row[f"loader_w{w}_over_consumption"] = med[f"loader_w{w}"] / consumes
        row[f"train_files_w{w}_steps_per_s"] = med[f"train_files_w{w}"]
        row[f"train_files_w{w}_over_in_memory"] = med[f"train_files_w{w}"] / med["train_in_memory"]
    return row


def bench_full_size(source: Path, args, work: Path) -> list[dict]:
    rows = []
    for name, (frames, height, width, fps) in FULL_SIZE.items():
        dataset = folder_dataset(source, frames, height, width, fps, work / "index_full")
        raw = alternate({f"w{w}": LoaderSide(dataset, 1, w, 1).block for w in WORKERS}, args.rounds)
        row = {"geometry": name, "batch_size": 1, "clips_per_epoch": len(dataset), "raw": raw}
        for w in WORKERS:
            clips = median(raw[f"w{w}"])
            row[f"w{w}_clips_per_s"] = clips
            row[f"w{w}_data_bound_below_ms_per_clip"] = 1000 / clips
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (blocks per side)")
    parser.add_argument("--epochs-per-block", type=int, default=2,
                        help="tiny families: epochs per timed block (each block starts its loader once)")
    parser.add_argument("--families", nargs="+", default=TINY_FAMILIES, choices=TINY_FAMILIES)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the training process (default 1, as bench_overhead; "
                             "workers always use 1); 0 keeps torch's default")
    parser.add_argument("--skip-full-size", action="store_true", help="only the tiny families")
    parser.add_argument("--quick", action="store_true", help="2 rounds, fewer videos: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.epochs_per_block = 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # parameter-count info lines, LoRA notices

    tiny_source = captioned_videos("tiny", 16 if args.quick else 32, 4, 96, 128)
    full_source = captioned_videos("480p", 4 if args.quick else 8, 8, 480, 854)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as work:
        tiny = [bench_tiny_family(family, tiny_source, args, Path(work)) for family in args.families]
        full = [] if args.skip_full_size else bench_full_size(full_source, args, Path(work))

    print(f"\nTiny families on this CPU ({torch.get_num_threads()} training thread(s); medians of {args.rounds} "
          f"alternating blocks of {args.epochs_per_block} epochs; consumption = in-memory steps/s x batch)")
    print_table([("family", "family", 17), ("consumes_clips_per_s", "consumes c/s", 12),
                 ("loader_w0_clips_per_s", "loader w0 c/s", 13), ("loader_w2_clips_per_s", "loader w2 c/s", 13),
                 ("train_in_memory_steps_per_s", "mem st/s", 9), ("train_files_w0_steps_per_s", "files w0 st/s", 13),
                 ("train_files_w2_steps_per_s", "files w2 st/s", 13),
                 ("train_files_w0_over_in_memory", "w0/mem", 7), ("train_files_w2_over_in_memory", "w2/mem", 7)], tiny)
    if full:
        print("\nFull-size geometries, loader alone (480p sources, batch 1)")
        print_table([("geometry", "geometry", 38), ("w0_clips_per_s", "w0 clips/s", 10),
                     ("w2_clips_per_s", "w2 clips/s", 10),
                     ("w2_data_bound_below_ms_per_clip", "w2: data-bound below ms/clip", 28)], full)
    write_json(args.out, {"machine": machine_info(), "settings": {k: str(v) for k, v in vars(args).items()},
                          "tiny_families": tiny, "full_size_loader": full})


if __name__ == "__main__":
    main()
