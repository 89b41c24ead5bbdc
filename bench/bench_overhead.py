"""Framework overhead: optimizer steps/s of the t2v_exp engine vs a hand-written minimal loop.

For each tiny family (modelscope_tiny, cogvideox_tiny, animatediff_tiny) both sides train the
same tiny checkpoint (same directories on disk), with the same in-memory random clips
(``bench.common.InMemoryClips``: no decoding, so only the loop differs), batch size, fp32,
seed, LoRA settings, AdamW settings, gradient clipping and warmup+cosine LR schedule:

- engine: ``Trainer.from_config(cfg, run_dir)`` then ``Trainer.train_step`` (logger=none, validation off,
  no checkpoints); everything per step that the engine does (per-sample generators, caption
  dropout, encoding, accelerate accumulate/autocast, clipping, non-finite checks, metrics dict);
- minimal: ``bench/minimal_loop.py`` (~50 lines of accelerate + diffusers + peft).

Both are warmed up, then blocks of ``--steps`` optimizer steps alternate between the two sides
for ``--rounds`` rounds (the side that goes first swaps every round), all in this one process.
We report the median steps/s of each side and the ratio engine/minimal (target >= 0.97). A
family below the target is profiled (cProfile around ``train_step``) and the hot spots land in
the JSON. Writes bench/results/overhead.json (machine, versions, every raw block time).

Usage: .venv/bin/python bench/bench_overhead.py [--rounds 7] [--steps 12] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
import timeit
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
from bench.minimal_loop import MinimalLoop, add_lora, endless, load_components  # noqa: E402

TARGET_RATIO = 0.97
#: functions whose cumulative time the profile reports by name (the rest: top entries by own time)
PROFILE_NAMES = [
    "train_step", "_micro_step", "_apply_update", "sample_generators", "apply_caption_dropout",
    "encode_videos", "encode_prompts", "training_loss", "draw", "sample_noise", "backward", "clip_grad_norm_", "step", "zero_grad", "peak_memory_mb",
    "_check_finite", "__iter__", "__next__", "collate", "reduce", "trainable_parameters",
]


def overrides(family: str, max_steps: int) -> list[str]:
    return [
        f"model={family}", "gpu=cpu", "precision=fp32", "logger=none", "validation.enabled=false",
        f"dataset._target_={IN_MEMORY_DATASET}", "dataset.name=in_memory", "train.checkpoint_every=0",
        f"train.max_steps={max_steps}", "train.evaluate_at_end=false",
    ]


class EngineSide:
    def __init__(self, cfg, run_dir: Path):
        from t2v_exp.engine.trainer import Trainer

        self.trainer = Trainer.from_config(cfg, run_dir)
        self.batches = iter(self.trainer.batches)
        self.last_loss = None

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.last_loss = self.trainer.train_step(self.batches)["train/loss"]

    def close(self) -> None:
        self.trainer.close()


def per_call_us(function, number: int = 50, repeat: int = 5) -> float:
    return 1e6 * min(timeit.repeat(function, number=number, repeat=repeat)) / number


def engine_only_costs(engine: EngineSide) -> dict:
    """Per-call cost (µs, best of 5) of what the engine does per step and the minimal loop does not,
    read off ``Trainer.train_step`` / ``_micro_step`` / ``_apply_update``; the last entry is what a
    DictConfig read costs, which the engine no longer does per step (``StepSettings``)."""
    from t2v_exp.engine.randomness import apply_caption_dropout, sample_generators
    from t2v_exp.engine.trainer import peak_memory_mb
    from t2v_exp.models.objectives import sample_noise

    trainer, model = engine.trainer, engine.trainer.model
    keys = [f"k{i}" for i in range(int(trainer.cfg.gpu.batch_size))]
    prompts = [f"prompt {key}" for key in keys]
    generators = sample_generators(0, 0, keys)
    like = torch.zeros(len(keys), 4, 8, 8, 8)

    def accumulate():
        with trainer.accelerator.accumulate(model.denoiser), trainer.accelerator.autocast():
            pass

    def reduce_loss():
        return float(torch.tensor(float(np.mean([0.5])), device=trainer.accelerator.device))

    costs = {
        "sample_generators (1/step)": per_call_us(lambda: sample_generators(0, 1, keys)),
        "apply_caption_dropout (1/step)": per_call_us(lambda: apply_caption_dropout(prompts, 0.1, generators)),
        "sample_noise - randn_like (1/step)": per_call_us(lambda: sample_noise(like, generators))
        - per_call_us(lambda: torch.randn_like(like)),
        "accumulate+autocast contexts (1/step)": per_call_us(accumulate),
        "loss mean -> tensor -> float (1/step)": per_call_us(reduce_loss),
        "peak_memory_mb (1/step)": per_call_us(lambda: peak_memory_mb(trainer.accelerator.device)),
        "[not per step any more] one DictConfig read, e.g. cfg.train.max_grad_norm":
            per_call_us(lambda: trainer.cfg.train.max_grad_norm),
    }
    costs = {name: round(value, 1) for name, value in costs.items()}
    per_step = sum(v for k, v in costs.items() if k.endswith("(1/step)"))
    return {"per_call_us": costs, "sum_ms_per_step": round(per_step / 1e3, 3)}


class MinimalSide:
    def __init__(self, cfg, dataset):
        from accelerate.utils import set_seed

        from t2v_exp.models import model_class

        model_cfg = cfg.model
        family = str(model_cfg.family)
        roots = model_class(model_cfg).resolve(model_cfg, cfg.paths.cache_dir)  # the same directories
        root, adapter_dir = roots if isinstance(roots, tuple) else (roots, None)
        set_seed(cfg.seed)
        parts = load_components(family, root, adapter_dir)
        for module in (parts.text_encoder, parts.vae):
            module.requires_grad_(False).eval()
        lora = model_cfg.lora
        add_lora(parts.denoiser, lora.rank, lora.alpha, list(lora.target_modules), lora.scope)
        parts.denoiser.train()
        opt = cfg.optimizer
        self.loop = MinimalLoop(
            family, parts, lr=opt.lr, weight_decay=opt.weight_decay, betas=list(opt.betas), eps=opt.eps,
            max_grad_norm=cfg.train.max_grad_norm, warmup_steps=cfg.train.warmup_steps,
            max_steps=cfg.train.max_steps,
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.gpu.batch_size, shuffle=True, drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.batches = endless(loader)
        self.last_loss = None

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.last_loss = self.loop.step(next(self.batches))


def profile_engine(engine: EngineSide, steps: int, top: int = 15) -> dict:
    profiler = cProfile.Profile()
    profiler.enable()
    engine.run(steps)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(entry[3] for entry in stats.stats.values() if entry[3] > 0) or 1.0
    step_time = next((e[3] for (f, _, n), e in stats.stats.items() if n == "train_step" and "trainer" in f), None)
    named, own = [], []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}({name})"
        row = {"function": where, "calls": calls, "own_s": tottime, "cum_s": cumtime,
               "cum_ms_per_step": 1e3 * cumtime / steps}
        own.append(row)
        if name in PROFILE_NAMES and ("t2v_exp" in filename or "accelerate" in filename or name == "train_step"):
            named.append(row)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    return {
        "steps": steps, "train_step_s": step_time, "profiled_total_s": total,
        "named": sorted(named, key=lambda r: -r["cum_s"]),
        "top_own_time": sorted(own, key=lambda r: -r["own_s"])[:top],
        "pstats_cumulative": text.getvalue().splitlines()[:60],
    }


def bench_family(family: str, args, work: Path) -> dict:
    max_steps = args.warmup + args.rounds * args.steps + 50
    run_dir = work / family
    cfg = compose_train(overrides(family, max_steps), run_dir=run_dir)
    print(f"[{family}] setting up both sides", flush=True)
    started = time.perf_counter()
    engine = EngineSide(cfg, run_dir)
    setup_engine = time.perf_counter() - started
    started = time.perf_counter()
    minimal = MinimalSide(cfg, engine.trainer.dataset)  # the very same in-memory clips
    setup_minimal = time.perf_counter() - started
    warm = {"engine": timed(lambda: engine.run(args.warmup)), "minimal": timed(lambda: minimal.run(args.warmup))}
    raw = alternate({"engine": lambda: timed(lambda: engine.run(args.steps)),
                     "minimal": lambda: timed(lambda: minimal.run(args.steps))}, args.rounds)
    rates = {side: [args.steps / seconds for seconds in times] for side, times in raw.items()}
    engine_rate, minimal_rate = median(rates["engine"]), median(rates["minimal"])
    # Ratio per round too (adjacent blocks share machine load): its median is a second estimate.
    per_round = [e / m for e, m in zip(rates["engine"], rates["minimal"], strict=True)]
    row = {
        "family": family, "batch_size": int(cfg.gpu.batch_size), "precision": "fp32",
        "lora_rank": int(cfg.model.lora.rank), "steps_per_block": args.steps, "rounds": args.rounds,
        "engine_steps_per_s": engine_rate, "minimal_steps_per_s": minimal_rate,
        "ratio_engine_over_minimal": engine_rate / minimal_rate,
        "median_round_ratio": median(per_round),
        "overhead_ms_per_step": 1e3 * (1 / engine_rate - 1 / minimal_rate),
        "block_seconds": raw, "warmup_seconds": warm,
        "setup_seconds": {"engine": setup_engine, "minimal": setup_minimal},
        "last_loss": {"engine": engine.last_loss, "minimal": minimal.last_loss},
    }
    if row["ratio_engine_over_minimal"] < TARGET_RATIO or args.profile:
        print(f"[{family}] ratio {row['ratio_engine_over_minimal']:.3f}: profiling the engine", flush=True)
        row["profile"] = profile_engine(engine, args.profile_steps)
        row["engine_only_costs"] = engine_only_costs(engine)
    engine.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (blocks per side)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per block")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps per side first")
    parser.add_argument("--families", nargs="+", default=TINY_FAMILIES, choices=TINY_FAMILIES)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine two threads "
                             "contend with other jobs and block times swing 10x; 0 keeps torch's default)")
    parser.add_argument("--profile", action="store_true", help="profile every family, not only those below target")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 steps: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup, args.profile_steps = 3, 3, 2, 3
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging

    logging.disable(logging.WARNING)  # parameter-count info lines, LoRA notices
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as work:
        rows = [bench_family(family, args, Path(work)) for family in args.families]

    print()
    print_table([("family", "family", 18), ("engine_steps_per_s", "engine st/s", 12),
                 ("minimal_steps_per_s", "minimal st/s", 12), ("ratio_engine_over_minimal", "ratio", 7),
                 ("median_round_ratio", "round ratio", 11), ("overhead_ms_per_step", "ovh ms/step", 11)], rows)
    below = [r["family"] for r in rows if r["ratio_engine_over_minimal"] < TARGET_RATIO]
    print(f"target engine/minimal >= {TARGET_RATIO}: " + (f"below for {below}" if below else "met for all"))
    for row in rows:
        if "engine_only_costs" in row:
            costs = row["engine_only_costs"]
            print(f"\n[{row['family']}] engine-only work per step: {costs['sum_ms_per_step']:.2f} ms "
                  f"(measured overhead {row['overhead_ms_per_step']:.2f} ms/step)")
            for name, us in sorted(costs["per_call_us"].items(), key=lambda item: -item[1]):
                print(f"  {us:9.1f} us  {name}")
        if "profile" in row:
            print(f"\n[{row['family']}] engine hot spots (cumulative ms/step over {row['profile']['steps']} steps):")
            for entry in row["profile"]["named"][:12]:
                print(f"  {entry['cum_ms_per_step']:9.2f}  {entry['function']}")

    record = {
        "machine": machine_info(), "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target_ratio": TARGET_RATIO, "results": rows,
    }
    write_json(args.out, record)


if __name__ == "__main__":
    main()
