"""GPU step benchmark of the real architectures at full size: time, peak memory, MFU, engine vs minimal.

Denoisers are built from their published configs with random weights (no download), directly on
the device; text encoders and VAEs are not needed: the step starts from random latents and random
text embeddings of the right shapes (as when training from the latent cache).

- cogvideox-2b: ``CogVideoXTransformer3DModel()`` defaults (30 layers, 30 heads x 64, text 4096),
  49x480x720 -> latents 13x16x60x90, 226 text tokens; LoRA rank 64.
- modelscope-1.7b: ``UNet3DConditionModel`` (320, 640, 1280, 1280; cross-attention 1024; head dim
  64) at 16x256x256 -> latents 4x16x32x32, 77 tokens; LoRA rank 16.
- animatediff-sd15: SD1.5 ``UNet2DConditionModel`` (cross-attention 768, head dim 8) +
  ``MotionAdapter()`` -> ``UNetMotionModel.from_unet2d`` at 16x512x512 -> latents 4x16x64x64;
  LoRA rank 16 on the motion modules; "full" trains the motion modules.
- wan-1.3b: ``WanTransformer3DModel`` with Wan2.1-T2V-1.3B's config (30 layers, 12 heads x 128, FFN
  8960, text 4096) at 81x480x832 -> latents 16x21x60x104 (32760 tokens), 512 text tokens; LoRA rank 32.
- ltx-video: ``LTXVideoTransformer3DModel()`` defaults (LTX-Video 0.9: 28 layers, 32 heads x 64, text
  4096) at 121x512x768 -> latents 128x16x16x24 (6144 tokens), 128 text tokens; LoRA rank 32.

For each case x {lora, full} x gradient checkpointing {on, off}, batch 1, bf16 mixed precision
(frozen weights bf16, trainable fp32, autocast): one optimizer step through the engine
(``Trainer.train_step`` wired to the prebuilt model: the latent-cache path) and the same step
through ``bench/minimal_loop.py`` on the same module and optimizer. Steps alternate in blocks
between the two sides; each step is timed between ``torch.cuda.synchronize()`` calls; medians
after warmup. Peak memory: ``torch.cuda.max_memory_allocated``. MFU: model FLOPs of one
forward+backward (``torch.utils.flop_counter.FlopCounterMode`` on a copy of the model on the
meta device: shapes only, no recomputation counted) / median step time / the card's dense bf16
peak (looked up by device name; ``--peak-tflops`` overrides). An OOM is recorded, not fatal.

Without CUDA it prints "skipped: no CUDA" and exits 0 (writing nothing). ``--device cpu --tiny``
runs the same code path with the tiny twins' architectures on the CPU (MFU n/a).

Usage: .venv/bin/python bench/bench_gpu.py [--cases cogvideox-2b ...] [--modes lora full]
                                           [--checkpointing on off] [--rounds 3] [--steps 2]
       .venv/bin/python bench/bench_gpu.py --device cpu --tiny
Writes bench/results/gpu_<card>.json (machine, versions, every raw step time).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import RESULTS, compose_train, machine_info, median, print_table, write_json  # noqa: E402

#: dense bf16 tensor-core peaks (TFLOP/s), matched in order against torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("RTX 4090", 165.0),
]

# -- the architectures -----------------------------------------------------------------------------
# Each case: family, t2v_exp model config, denoiser kwargs, latent / text shapes (batch 1), LoRA.
FULL = {
    "cogvideox-2b": dict(
        family="cogvideox", model="cogvideox", kwargs={}, latents=(1, 13, 16, 60, 90), text=(1, 226, 4096),
        lora_rank=64, scope=None),
    "modelscope-1.7b": dict(
        family="modelscope", model="modelscope", latents=(1, 4, 16, 32, 32), text=(1, 77, 1024),
        kwargs=dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=64,
                    in_channels=4, out_channels=4, layers_per_block=2, sample_size=32),
        lora_rank=16, scope=None),
    "animatediff-sd15": dict(
        family="animatediff", model="animatediff", latents=(1, 4, 16, 64, 64), text=(1, 77, 768),
        kwargs=dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                    in_channels=4, out_channels=4, layers_per_block=2, sample_size=64),
        adapter_kwargs={}, lora_rank=16, scope="motion_modules"),
    "wan-1.3b": dict(
        family="wan", model="wan", latents=(1, 16, 21, 60, 104), text=(1, 512, 4096),
        kwargs=dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        lora_rank=32, scope=None),
    "ltx-video": dict(
        family="ltx", model="ltx", kwargs={}, latents=(1, 128, 16, 16, 24), text=(1, 128, 4096),
        geometry=dict(spatial=32, temporal=8, patch=1, patch_t=1), lora_rank=32, scope=None),
}
# The tiny twins' architectures (t2v_exp/models/tiny.py): the same code path, CPU-sized.
TINY = {
    "cogvideox-2b": dict(
        FULL["cogvideox-2b"], model="cogvideox_tiny", latents=(1, 3, 16, 4, 4), text=(1, 16, 32), lora_rank=4,
        kwargs=dict(num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16, time_embed_dim=32,
                    text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
                    temporal_compression_ratio=4, max_text_seq_length=16)),
    "modelscope-1.7b": dict(
        FULL["modelscope-1.7b"], model="modelscope_tiny", latents=(1, 4, 8, 8, 8), text=(1, 77, 32), lora_rank=4,
        kwargs=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=32,
                    attention_head_dim=8, norm_num_groups=8)),
    "animatediff-sd15": dict(
        FULL["animatediff-sd15"], model="animatediff_tiny", latents=(1, 4, 8, 8, 8), text=(1, 77, 32), lora_rank=4,
        kwargs=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                    attention_head_dim=8, norm_num_groups=8),
        adapter_kwargs=dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                            motion_num_attention_heads=4, motion_max_seq_length=32, use_motion_mid_block=True)),
    "wan-1.3b": dict(
        FULL["wan-1.3b"], model="wan_tiny", latents=(1, 16, 3, 4, 4), text=(1, 32, 32), lora_rank=4,
        kwargs=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                    out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", rope_max_seq_len=32)),
    "ltx-video": dict(
        FULL["ltx-video"], model="ltx_tiny", latents=(1, 8, 2, 4, 4), text=(1, 32, 32), lora_rank=4,
        geometry=dict(spatial=8, temporal=8, patch=1, patch_t=1),
        kwargs=dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
                    attention_head_dim=8, cross_attention_dim=32, num_layers=2, caption_channels=32)),
}


def build_denoiser(case: dict, lora: bool, device):
    """Random-weight denoiser built on ``device`` (``"meta"`` for FLOP counting)."""
    import diffusers as d

    with torch.device(device):
        transformers = {"cogvideox": d.CogVideoXTransformer3DModel, "wan": d.WanTransformer3DModel,
                        "ltx": d.LTXVideoTransformer3DModel}
        if case["family"] in transformers:
            return transformers[case["family"]](**case["kwargs"])
        if case["family"] == "modelscope":
            from t2v_exp.models.modelscope import lora_unet_class  # UNet3D + the PEFT adapter mixin

            return (lora_unet_class() if lora else d.UNet3DConditionModel)(**case["kwargs"])
        unet2d = d.UNet2DConditionModel(**case["kwargs"])
        return d.UNetMotionModel.from_unet2d(unet2d, d.MotionAdapter(**case["adapter_kwargs"]))


def noise_scheduler(family: str):
    """The published training schedules, as the t2v_exp adapters configure them."""
    from diffusers import CogVideoXDDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from t2v_exp.models.animatediff import MOTION_BETAS, SD15_SCHEDULER
    from t2v_exp.models.cogvideox import COGVIDEOX_SCHEDULER
    from t2v_exp.models.ltx import LTX_SCHEDULER
    from t2v_exp.models.modelscope import MODELSCOPE_SCHEDULER

    if family == "wan":  # training draws its own sigmas; only num_train_timesteps is read
        return FlowMatchEulerDiscreteScheduler()
    if family == "ltx":
        return FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER)
    if family == "cogvideox":
        return CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
    if family == "modelscope":
        return DDPMScheduler.from_config(MODELSCOPE_SCHEDULER)
    return DDPMScheduler.from_config({**SD15_SCHEDULER, **MOTION_BETAS}, prediction_type="epsilon")


def make_adapter(case: dict, model_cfg, denoiser, lora: bool):
    """The family's t2v_exp adapter around a prebuilt denoiser (its loaders and encoders unused)."""
    from hydra.utils import get_class

    from t2v_exp.config import LoraConfig
    from t2v_exp.models.lora import add_lora
    from t2v_exp.models.objectives import DDPMObjective

    adapter = get_class(model_cfg._target_).__new__(get_class(model_cfg._target_))
    adapter.cfg, adapter.denoiser = model_cfg, denoiser
    adapter.scheduler = adapter.train_scheduler = noise_scheduler(case["family"])
    adapter.vae_scale_spatial, adapter.max_text_tokens = 8, case["text"][1]
    if case["family"] == "wan":
        from t2v_exp.models.wan import flow_objective

        adapter.objective = flow_objective(model_cfg, adapter.scheduler)
    elif case["family"] == "ltx":  # its objective is a method (the shift depends on the token count)
        from t2v_exp.models.ltx import Geometry

        g = adapter.geometry = Geometry(**case["geometry"])
        adapter.rope_interpolation_scale = (g.temporal / model_cfg.fps, g.spatial, g.spatial)
    else:
        adapter.objective = DDPMObjective(adapter.train_scheduler)
    adapter.uses_rotary = bool(getattr(denoiser.config, "use_rotary_positional_embeddings", False))  # CogVideoX
    adapter.patch_size_t = getattr(denoiser.config, "patch_size_t", None)  # CogVideoX 1.5 pads latent frames
    adapter.lora = LoraConfig(rank=case["lora_rank"], alpha=case["lora_rank"], scope=case["scope"]) if lora else None
    if lora:
        add_lora(denoiser, adapter.lora)
    elif case["family"] == "animatediff":
        denoiser.freeze_unet2d_params()  # full = the motion modules, as in t2v_exp
    else:
        denoiser.requires_grad_(True)
    denoiser.train()
    return adapter


# -- FLOPs ---------------------------------------------------------------------------------------------
def model_flops(case: dict, model_cfg, lora: bool) -> tuple[float | None, str | None]:
    """FLOPs of one forward+backward on the meta device: shapes only, no memory, no recomputation."""
    from torch.utils.flop_counter import FlopCounterMode

    from t2v_exp.engine.randomness import sample_generators

    try:
        adapter = make_adapter(case, model_cfg, build_denoiser(case, lora, "meta"), lora)
        latents = torch.randn(case["latents"], device="meta")
        embeds = torch.randn(case["text"], device="meta")
        generators = sample_generators(0, 0, [f"k{i}" for i in range(case["latents"][0])])
        with FlopCounterMode(display=False) as counter:
            adapter.training_loss(latents, embeds, generators).backward()
        return float(counter.get_total_flops()), None
    except Exception as exc:  # noqa: BLE001 - a counting failure must not lose the timings
        return None, f"{type(exc).__name__}: {exc}"


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value, f"table entry '{key}'"
    return None, f"unknown card '{name}' (pass --peak-tflops)"


# -- the two sides -------------------------------------------------------------------------------------
class EngineStep:
    """``Trainer.train_step`` on a prebuilt model, built from ready parts exactly as a test would:
    loading checkpoints, VAE and text encoder from disk is skipped, and batches carry ``latents``
    (the engine's latent-cache path) with the text embeddings served by ``cache``."""

    def __init__(self, cfg, adapter, accelerator, latents, embeds, run_dir):
        from t2v_exp.engine.batches import DataPosition
        from t2v_exp.engine.optim import build_lr_scheduler
        from t2v_exp.engine.resume import Restored
        from t2v_exp.engine.setup import TrainingParts
        from t2v_exp.engine.trainer import Trainer

        optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=float(cfg.optimizer.lr),
                                      betas=tuple(cfg.optimizer.betas), eps=float(cfg.optimizer.eps),
                                      weight_decay=float(cfg.optimizer.weight_decay))
        adapter.denoiser, prepared = accelerator.prepare(adapter.denoiser, optimizer)
        parts = TrainingParts(
            accelerator=accelerator, model=adapter, dataset=None, optimizer=prepared,
            lr_scheduler=build_lr_scheduler(optimizer, schedule="constant", warmup_steps=0, max_steps=10**6),
            batches=SimpleNamespace(position=DataPosition()), tracker=SimpleNamespace(run=None),
            weight_dtype=latents.dtype, fingerprint={}, flat_settings={}, restored=Restored(),
            cache=SimpleNamespace(embeds=lambda prompts: embeds))
        trainer = Trainer(cfg, run_dir, parts)
        batch = {"latents": latents, "prompt": [""] * latents.shape[0], "key": [f"k{i}" for i in range(latents.shape[0])]}
        self.trainer, self.batches, self.raw_optimizer = trainer, itertools.repeat(batch), optimizer

    def __call__(self) -> float:
        return self.trainer.train_step(self.batches)["train/loss"]


def minimal_step(case, engine: EngineStep, latents, embeds, mixed_precision):
    """bench/minimal_loop.py's update on the same (already prepared) module and optimizer."""
    from bench.minimal_loop import MinimalLoop

    adapter = engine.trainer.model
    parts = SimpleNamespace(denoiser=adapter.denoiser, noise_scheduler=adapter.train_scheduler)
    loop = MinimalLoop(case["family"], parts, lr=0.0, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                       max_grad_norm=float(engine.trainer.cfg.train.max_grad_norm), warmup_steps=0,
                       max_steps=10**6, mixed_precision=mixed_precision, optimizer=engine.raw_optimizer,
                       accelerator=engine.trainer.accelerator, prepare=False)
    return lambda: loop.update(latents, embeds)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, steps: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(steps):
        sync(device)
        started = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# -- one configuration -----------------------------------------------------------------------------------
def run_config(name, case, mode, checkpointing, args, device, flops_cache) -> dict:
    from accelerate import Accelerator

    from t2v_exp.engine.setup import reset_single_process_accelerate_state
    from t2v_exp.models.common import place_components

    lora = mode == "lora"
    row = {"case": name, "mode": mode, "rank": case["lora_rank"] if lora else None,
           "checkpointing": checkpointing, "latents": list(case["latents"]), "text": list(case["text"])}
    mixed = args.precision
    dtype = {"no": torch.float32, "bf16": torch.bfloat16}[mixed]
    key = (name, mode)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as run_dir:
        cfg = compose_train([f"model={case['model']}", "logger=none", "validation.enabled=false",
                             f"precision={'bf16' if mixed == 'bf16' else 'fp32'}", "gpu.batch_size=1",
                             f"model.finetune={mode}", f"model.lora.rank={case['lora_rank']}",
                             f"model.lora.alpha={case['lora_rank']}"], run_dir=Path(run_dir))
        if key not in flops_cache:
            flops_cache[key] = model_flops(case, cfg.model, lora)
        row["model_flops"], flops_error = flops_cache[key]
        if flops_error:
            row["flops_error"] = flops_error
        accelerator = engine = denoiser = adapter = sides = latents = embeds = None
        try:
            reset_single_process_accelerate_state()
            accelerator = Accelerator(mixed_precision=mixed, cpu=device.type == "cpu")
            started = time.perf_counter()
            torch.manual_seed(0)
            denoiser = build_denoiser(case, lora, device)
            adapter = make_adapter(case, cfg.model, denoiser, lora)
            place_components([], denoiser, device, dtype)
            if checkpointing:  # as the engine does it (ModelScope: t2v_exp checkpoints the UNet3D's blocks)
                adapter.enable_memory_savers(gradient_checkpointing=True, vae_slicing=False, vae_tiling=False)
            counts = sum(p.numel() for p in denoiser.parameters())
            trainable = sum(p.numel() for p in adapter.trainable_parameters())
            row.update(params=counts, trainable=trainable, build_s=time.perf_counter() - started)
            latents = torch.randn(case["latents"], device=device, dtype=dtype)
            embeds = torch.randn(case["text"], device=device, dtype=dtype)
            engine = EngineStep(cfg, adapter, accelerator, latents, embeds, Path(run_dir))
            sides = {"engine": engine, "minimal": minimal_step(case, engine, latents, embeds, mixed)}
            for side in sides.values():
                timed_steps(side, args.warmup, device)
            raw = {side: [] for side in sides}
            peaks = dict.fromkeys(sides, 0.0)
            for round_index in range(args.rounds):
                order = list(sides) if round_index % 2 == 0 else list(sides)[::-1]
                for side in order:
                    reset_peak(device)
                    raw[side] += timed_steps(sides[side], args.steps, device)
                    peaks[side] = max(peaks[side], peak_mb(device) or 0.0)
            medians = {side: median(times) for side, times in raw.items()}
            tflops, _ = peak_tflops(device, args.peak_tflops)
            achieved = row["model_flops"] / medians["engine"] / 1e12 if row["model_flops"] else None
            row.update(
                status="ok", engine_step_s=medians["engine"], minimal_step_s=medians["minimal"],
                ratio_engine_over_minimal=medians["minimal"] / medians["engine"],
                peak_mem_gib=peaks["engine"] / 1024 if device.type == "cuda" else None,
                peak_mem_gib_minimal=peaks["minimal"] / 1024 if device.type == "cuda" else None,
                achieved_tflops=achieved, mfu=achieved / tflops if achieved and tflops else None,
                step_seconds=raw,
            )
        except torch.cuda.OutOfMemoryError as exc:
            row.update(status="oom", error=str(exc).splitlines()[0])
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next configuration
            row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
        finally:
            # Drop every reference (the accelerator keeps the prepared model and optimizer) before freeing.
            accelerator = engine = denoiser = adapter = sides = latents = embeds = None  # noqa: F841
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return row


def card_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default; skipped without CUDA) or cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny twins' architectures (for CPU checks)")
    parser.add_argument("--cases", nargs="+", default=list(FULL), choices=list(FULL))
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--precision", default=None, choices=["bf16", "no"],
                        help="accelerate mixed precision (default: bf16 on CUDA, no (fp32) on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the card's dense bf16 peak")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/gpu_<card>.json on CUDA")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: skipped: no CUDA (use --device cpu --tiny to exercise the code path on the CPU)")
        return 0
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "no")
    import logging

    logging.disable(logging.WARNING)
    cases = TINY if args.tiny else FULL
    tflops, peak_source = peak_tflops(device, args.peak_tflops)
    print(f"device {card_name(device)}; bf16 dense peak {tflops} TFLOP/s ({peak_source}); precision {args.precision}")
    flops_cache: dict = {}
    rows = []
    for name, mode, gc_flag in itertools.product(args.cases, args.modes, args.checkpointing):
        print(f"[{name} {mode} checkpointing={gc_flag}]", flush=True)
        row = run_config(name, cases[name], mode, gc_flag == "on", args, device, flops_cache)
        if row["status"] != "ok":
            print(f"  {row['status']}: {row.get('error')}", flush=True)
        rows.append(row)

    for row in rows:
        row["gflops"] = row["model_flops"] / 1e9 if row.get("model_flops") else None
        row["mfu_pct"] = 100 * row["mfu"] if row.get("mfu") else None
    print()
    print_table([("case", "case", 17), ("mode", "mode", 5), ("checkpointing", "ckpt", 5), ("status", "status", 11),
                 ("engine_step_s", "engine s", 9), ("minimal_step_s", "minimal s", 9),
                 ("ratio_engine_over_minimal", "ratio", 6), ("peak_mem_gib", "peak GiB", 8),
                 ("gflops", "GFLOP/step", 11), ("mfu_pct", "MFU %", 6)],
                [{**r, "checkpointing": "on" if r["checkpointing"] else "off"} for r in rows])
    out = args.out or (RESULTS / f"gpu_{card_name(device)}.json" if device.type == "cuda" else None)
    if out is not None:
        write_json(out, {"machine": machine_info(), "tiny": args.tiny, "precision": args.precision,
                         "peak_bf16_tflops": tflops, "peak_source": peak_source,
                         "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "results": rows})
    failed = [r for r in rows if r["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
