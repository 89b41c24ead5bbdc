"""Check a real preset before renting GPUs: ``python -m t2v_exp.preflight model=cogvideox [gpu=a100_80gb] [...]``.

From the preset's published architecture (models/published.py, random weights; the text encoder at
its real width with one layer) it builds a checkpoint directory, then, on whatever device is here:

1. counts the denoiser's parameters against the released checkpoint's;
2. measures the activations one training step saves for backward at a small valid geometry and at
   twice its height and width, with and without gradient checkpointing
   (``torch.autograd.graph.saved_tensors_hooks``; weights not counted), and fits them as a fixed part
   (text tokens) plus a part per latent element;
3. trains one step through the normal engine (``run_training``: LoRA or full as the preset says),
   which samples one validation video and exports ``final/``;
4. reloads the export through the family's stock diffusers pipeline and fails on any missing or
   unexpected key;
5. prints trainable / total parameters and a memory estimate for the preset's real geometry on the
   chosen card (weights, gradients, optimizer state, activations with and without checkpointing,
   offload) with a fits / does not fit verdict; on a GPU also the estimate for the step it ran vs
   the peak it measured.

Activations are extrapolated linearly in latent elements (true of attention with SDPA's flash /
memory-efficient kernels, as on GPUs); VAE encoding at the real geometry is not included (none with
``dataset.cache=latents``). The report is printed and written to ``<run dir>/preflight.json``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import compose_job_config, enum_value
from .errors import ConfigError
from .models import resolve_and_validate
from .models.registry import published_architectures, tiny_twin
from .quiet import quiet_logs
from .train import run_training

log = logging.getLogger("t2v_exp.preflight")
GIB = 1024**3
# CUDA context, allocator fragmentation, cuDNN/cuBLAS workspaces: added to every estimate.
OVERHEAD_FRACTION, OVERHEAD_GIB = 0.10, 1.0
OPTIMIZER_BYTES = {"torch.optim.AdamW": 8, "t2v_exp.engine.optim.adamw_8bit": 2}  # per trainable parameter


# -- the checkpoint ------------------------------------------------------------------------------
def build_part(part, twin_dir: Path, *, meta: bool = False, released: bool = False) -> torch.nn.Module:
    """One component with random weights (bf16; on the meta device when ``meta``: for counting)."""
    import diffusers  # deferred: diffusers (~1.5 s); only when a component is built
    import transformers  # deferred: transformers, as above

    config = {**part.config, **(part.released if released else {})}
    device = torch.device("meta") if meta else torch.device("cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # halves the host memory of a 5B build
    try:
        with device:
            if part.library == "diffusers":
                return getattr(diffusers, part.class_name)(**config)
            module_class = getattr(transformers, part.class_name)
            twin_config = json.loads((twin_dir / "config.json").read_text())  # its vocabulary and special tokens
            twin_config = {k: v for k, v in twin_config.items() if not k.startswith("_") and k != "architectures"}
            return module_class(module_class.config_class(**{**twin_config, **config}))
    finally:
        torch.set_default_dtype(previous)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def architecture_digest(architecture) -> str:
    return hashlib.sha1(repr(architecture).encode()).hexdigest()[:12]


def build_checkpoint(architecture, twins: dict[str, str], out_dir: Path) -> dict[str, str]:
    """``{config key: directory}``: each twin directory copied (tokenizer, scheduler, model_index.json)
    with the architecture's components in published form. Reused when already complete."""
    roots = {key: str(out_dir / key.replace(".", "_")) for key in architecture.components}
    if (out_dir / "complete").is_file():
        return roots
    shutil.rmtree(out_dir, ignore_errors=True)
    for key, parts in architecture.components.items():
        root = Path(roots[key])
        shutil.copytree(twins[key], root)
        for subfolder, part in parts.items():
            target = root / subfolder
            twin_part = Path(twins[key]) / subfolder
            log.info("preflight: building %s %s (%s) with random weights", key, subfolder or ".", part.class_name)
            torch.manual_seed(0)
            module = build_part(part, twin_part)
            if subfolder:
                shutil.rmtree(target)
            else:  # the directory is the component (a motion adapter): keep nothing of the twin's weights
                for old in target.glob("*.safetensors"):
                    old.unlink()
            module.save_pretrained(target, safe_serialization=True)
            del module
            gc.collect()
    (out_dir / "complete").write_text(architecture_digest(architecture))
    return roots


# -- activations -----------------------------------------------------------------------------------
@contextmanager
def saved_activation_bytes(parameters):
    """Bytes of the tensors autograd saves for backward inside the block (each storage once),
    parameters excluded: what one training step holds between forward and backward."""
    weights = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    result = {}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["bytes"] = sum(storages.values())


def saved_bytes(model, geometry, device, dtype, checkpointing: bool) -> tuple[int, int]:
    """(saved-activation bytes, latent elements) of one clip's training loss at ``geometry``."""
    frames, height, width = geometry
    videos = torch.rand(1, frames, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = model.encode_videos(videos.to(device)).to(device=device, dtype=dtype)
        embeds = model.encode_prompts(["a red circle moving left"]).to(device=device, dtype=dtype)
    parameters = [p for module in (model.denoiser, model.vae, model.text_encoder) for p in module.parameters()]
    model.enable_memory_savers(gradient_checkpointing=checkpointing, vae_slicing=False, vae_tiling=False)
    with torch.autocast(device.type, dtype=dtype), saved_activation_bytes(parameters) as saved:
        loss = model.training_loss(latents, embeds, [torch.Generator().manual_seed(0)])
    del loss
    return saved["bytes"], latents.numel()


def measure_activations(model, geometry, device, dtype) -> dict:
    """Saved activations of one clip as ``fixed + per_element * latent elements``, fitted to two
    measurements (at ``geometry`` and at twice its height and width), without and with the family's
    gradient checkpointing. The fixed part is what does not grow with the video: the text tokens
    the denoiser attends over, the timestep embedding."""
    frames, height, width = geometry
    measured = {}
    for checkpointing in (False, True):
        small, small_elements = saved_bytes(model, geometry, device, dtype, checkpointing)
        large, large_elements = saved_bytes(model, (frames, 2 * height, 2 * width), device, dtype, checkpointing)
        per_element = (large - small) / (large_elements - small_elements)
        mode = "with_checkpointing" if checkpointing else "without_checkpointing"
        measured[mode] = {"per_element": per_element, "fixed": max(0.0, small - per_element * small_elements)}
    measured["latent_elements"] = small_elements
    return measured


def activation_bytes(fit: dict, elements: float) -> float:
    return fit["fixed"] + fit["per_element"] * elements


def latent_elements(architecture, measured: dict, geometry, real) -> float:
    """Latent elements of one clip at ``real`` (frames, height, width), from those measured at ``geometry``."""
    def latent_frames(frames: int) -> int:
        t = architecture.temporal_compression
        return (frames - 1) // t + 1 if t > 1 else frames

    (frames, height, width), (real_frames, real_height, real_width) = geometry, real
    return (measured["latent_elements"] * latent_frames(real_frames) / latent_frames(frames)
            * (real_height * real_width) / (height * width))


# -- the estimate ------------------------------------------------------------------------------------
@dataclass
class Estimate:
    rows: list[tuple[str, float]]  # (what, GiB)
    total_gib: float
    card_gib: float | None

    @property
    def verdict(self) -> str:
        if self.card_gib is None:
            return "no card given (gpu=a100_80gb | h100_80gb | h200_141gb | rtx4090_24gb)"
        return "fits" if self.total_gib <= self.card_gib else "does not fit"


def memory_estimate(cfg, counts: dict, activation_bytes: float, *, checkpointing: bool) -> Estimate:
    """GPU memory of one training step: ``counts`` holds parameter counts (denoiser total, trainable,
    released text encoder, VAE), ``activation_bytes`` the saved activations of one batch."""
    mixed = str(enum_value(cfg.precision.mixed_precision))
    weight_bytes = 2 if mixed in ("bf16", "fp16") else 4
    trainable = counts["trainable"]
    frozen_denoiser = counts["denoiser"] - (trainable if cfg.model.finetune == "full" else 0)
    rows = [("denoiser weights (frozen part)", frozen_denoiser * weight_bytes),
            ("trainable weights (fp32)", trainable * 4),
            ("gradients (fp32)", trainable * 4),
            ("optimizer state", trainable * OPTIMIZER_BYTES.get(cfg.optimizer._target_, 8))]
    if cfg.gpu.cpu_offload:
        rows.append(("text encoder + VAE (offloaded to the CPU)", 0.0))
    else:
        rows.append(("text encoder + VAE weights", (counts["text_encoder"] + counts["vae"]) * weight_bytes))
    rows.append((f"activations ({'with' if checkpointing else 'without'} checkpointing)", activation_bytes))
    subtotal = sum(b for _, b in rows)
    overhead = subtotal * OVERHEAD_FRACTION + OVERHEAD_GIB * GIB
    rows.append(("CUDA context, workspaces, fragmentation", overhead))
    card = cfg.gpu.get("memory_gb")
    return Estimate([(what, b / GIB) for what, b in rows], (subtotal + overhead) / GIB,
                    None if card is None else float(card) * 1e9 / GIB)


# -- the run -----------------------------------------------------------------------------------------
def preflight(overrides: list[str], work_dir: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="preflight-compose-") as compose_dir:  # only ${hydra:} needs one
        cfg = compose_job_config(overrides, run_dir=compose_dir)
    architectures = published_architectures()
    name = cfg.model.name
    if name not in architectures:
        raise ConfigError(f"model={name}: no published architecture to check; preflight knows "
                          f"{', '.join(f'model={n}' for n in sorted(architectures))}")
    architecture = architectures[name]
    # The built checkpoint is kept for reruns (a 5B takes minutes to build): T2V_EXP_PREFLIGHT_DIR moves it.
    work_dir = work_dir or os.environ.get("T2V_EXP_PREFLIGHT_DIR") or Path(cfg.paths.cache_dir) / "preflight"
    work = Path(work_dir) / f"{name}-{architecture_digest(architecture)}"
    roots = build_checkpoint(architecture, twin_directories(architecture, cfg.paths.cache_dir), work / "checkpoint")

    counts = count_parameters(architecture, roots)
    cuda = torch.cuda.is_available() and str(cfg.gpu.device) != "cpu"
    frames, height, width = architecture.geometry
    step = [*overrides, *(f"{key}={root}" for key, root in roots.items()),
            f"model.num_frames={frames}", f"model.height={height}", f"model.width={width}",
            "train.max_steps=1", "train.warmup_steps=0", "train.checkpoint_every=0", "train.evaluate_at_end=false",
            # two sampling steps: LTX's stretched-to-terminal schedule divides by zero with one
            "train.evaluate_base=false", "validation.num_videos=1", "validation.num_inference_steps=2",
            "dataset=shapes", "dataset.num_videos=2", "dataset.cache=none", "logger=none",
            "gpu.batch_size=1", "gpu.gradient_accumulation_steps=1", "gpu.num_workers=0"]
    if not cuda:
        step += ["gpu=cpu", "precision=bf16"]  # bf16 on the CPU: a 5B's frozen weights in 11 GB, not 22
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    step_cfg = compose_job_config(step, run_dir=run_dir)
    summary = run_training(step_cfg, run_dir)
    gc.collect()

    model_cls, step_roots = resolve_and_validate(step_cfg.model, step_cfg.paths.cache_dir)
    model = model_cls(step_cfg.model, step_roots)
    counts["trainable"] = int(model.parameter_counts()["trainable"])
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16
    model.place(device, dtype)
    measured = measure_activations(model, architecture.geometry, device, dtype)
    reload = reload_export(model, run_dir / "final")
    del model
    gc.collect()

    real = (int(cfg.model.num_frames), int(cfg.model.height), int(cfg.model.width))
    elements = latent_elements(architecture, measured, architecture.geometry, real)
    batch = int(cfg.gpu.batch_size)
    estimates = {mode: memory_estimate(cfg, counts, batch * activation_bytes(measured[f"{mode}_checkpointing"], elements),
                                       checkpointing=mode == "with")
                 for mode in ("without", "with")}
    chosen = "with" if cfg.gpu.gradient_checkpointing else "without"
    report = {"model": name, "source": architecture.source, "gpu": cfg.gpu.name, "device": device.type,
              "geometry_step": list(architecture.geometry), "geometry_real": list(real),
              "batch_size": batch, "parameters": counts, "activations_per_clip": measured,
              "final_loss": summary.get("final_loss"), "export_reload": reload,
              "estimates_gib": {m: {"rows": e.rows, "total": e.total_gib, "verdict": e.verdict}
                                for m, e in estimates.items()},
              "card_gib": estimates[chosen].card_gib, "verdict": estimates[chosen].verdict,
              "checkpointing": chosen == "with"}
    if cuda:
        report["step_measured_peak_gib"] = read_peak_gib(run_dir)
        report["step_estimate_gib"] = memory_estimate(
            step_cfg, counts, activation_bytes(measured[f"{chosen}_checkpointing"], measured["latent_elements"]),
            checkpointing=chosen == "with").total_gib
    (work / "preflight.json").write_text(json.dumps(report, indent=2))
    report["report_path"] = str(work / "preflight.json")
    return report


def twin_directories(architecture, cache_dir: str | None) -> dict[str, str]:
    """{config key: directory} of the architecture's tiny twin (``tiny:<name>`` specs, built on first use)."""
    twin = compose_job_config([f"model={architecture.twin}"]).model
    return {key: tiny_twin(str(twin[key.split(".", 1)[1]]).removeprefix("tiny:").split("@")[0], cache_dir)
            for key in architecture.components}


def count_parameters(architecture, roots: dict[str, str]) -> dict:
    """Denoiser, VAE and released text encoder counts, from the architecture on the meta device; the
    denoiser must match the released checkpoint's count within 0.5%."""
    parts = architecture.components["model.pretrained"]
    twin_root = Path(roots["model.pretrained"])
    counts = {"text_encoder": parameter_count(build_part(parts["text_encoder"], twin_root / "text_encoder", meta=True,
                                                         released=True)),
              "vae": parameter_count(build_part(parts["vae"], twin_root / "vae", meta=True))}
    denoiser = 0
    for subfolder, published_count in architecture.published_parameters.items():
        built = parameter_count(build_part(parts[subfolder], twin_root / subfolder, meta=True))
        if abs(built - published_count) > 0.005 * published_count:
            raise AssertionError(f"{subfolder}: the published architecture has {built:,} parameters, the released "
                                 f"checkpoint {published_count:,}: the facts in models/published.py are wrong")
        denoiser += built
    for key, key_parts in architecture.components.items():  # AnimateDiff: the motion adapter joins the UNet
        if key != "model.pretrained":
            denoiser += sum(parameter_count(build_part(p, Path(roots[key]), meta=True)) for p in key_parts.values())
    counts["denoiser"] = denoiser
    return counts


def reload_export(model, final_dir: Path) -> dict:
    """The export through the family's stock pipeline: no missing or unexpected key may be logged, and
    a LoRA export must leave adapter weights in it. The model's own weights are dropped first (the
    pipeline loads its own copy), so a 5B is in memory once."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    model.denoiser = model.vae = model.text_encoder = None
    gc.collect()
    try:
        pipe = model.stock_pipeline(str(final_dir))
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    # diffusers and peft name them "unexpected keys" / "missing keys" (the note that a LoRA holds no
    # text-encoder part, "No LoRA keys associated to CLIPTextModel found", is not a failure)
    complaints = [r.getMessage() for r in records
                  if any(word in r.getMessage().lower() for word in ("unexpected keys", "missing keys"))]
    if complaints:
        raise AssertionError(f"reloading {final_dir} through the stock pipeline: {complaints[0]}")
    lora = sum(p.numel() for component in pipe.components.values() if isinstance(component, torch.nn.Module)
               for n, p in component.named_parameters() if "lora" in n)
    result = {"pipeline": type(pipe).__name__, "lora_parameters": lora, "warnings": [r.getMessage() for r in records]}
    del pipe
    gc.collect()
    return result


def read_peak_gib(run_dir: Path) -> float | None:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    peaks = [json.loads(line).get("train/peak_mem_mb") for line in lines]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) / 1024 if peaks else None


def format_report(report: dict) -> str:
    counts = report["parameters"]
    lines = [f"preflight {report['model']} ({report['source']}) on {report['device']}, card {report['gpu']}",
             f"  parameters: trainable {counts['trainable']:,} / denoiser {counts['denoiser']:,} "
             f"(+ text encoder {counts['text_encoder']:,}, VAE {counts['vae']:,} as released)",
             f"  one step at {'x'.join(map(str, report['geometry_step']))}: loss {report['final_loss']:.4g}; "
             f"export reloaded into {report['export_reload']['pipeline']} "
             f"({report['export_reload']['lora_parameters']:,} LoRA parameters)",
             f"  memory for {'x'.join(map(str, report['geometry_real']))}, batch {report['batch_size']} (GiB):"]
    estimates = report["estimates_gib"]
    width = max(len(what) for what, _ in estimates["without"]["rows"])
    for (what, without), (_, with_ckpt) in zip(estimates["without"]["rows"], estimates["with"]["rows"], strict=True):
        label = "activations" if what.startswith("activations") else what
        lines.append(f"    {label:<{width}}  {without:9.2f}  {with_ckpt:9.2f}")
    lines.append(f"    {'total (without / with checkpointing)':<{width}}  {estimates['without']['total']:9.2f}  "
                 f"{estimates['with']['total']:9.2f}")
    card = report["card_gib"]
    lines.append(f"  verdict ({'with' if report['checkpointing'] else 'without'} checkpointing, as gpu="
                 f"{report['gpu']}{f', {card:.1f} GiB' if card else ''}): {report['verdict']}")
    if "step_measured_peak_gib" in report:
        lines.append(f"  this step: estimated {report['step_estimate_gib']:.2f} GiB, measured peak "
                     f"{report['step_measured_peak_gib']:.2f} GiB")
    lines.append(f"  report: {report['report_path']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_logs()
    try:
        report = preflight(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
