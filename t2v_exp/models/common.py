"""Helpers shared by the model families: plain functions, no base classes."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import tiny_bases
from ..errors import ConfigError, UserError
from .checkpointing import checkpoint_submodules
from .lora import add_lora, load_lora_state_dict, lora_metadata, lora_state_dict, text_encoder_lora_settings
from .objectives import sample_noise
from .tiny import pretrained_twin, tiny_checkpoint

log = logging.getLogger(__name__)


class CheckpointNotAvailableError(UserError, RuntimeError):
    """A pretrained checkpoint could not be found locally nor fetched from the hub."""


def download_command() -> str:
    """The installed huggingface_hub's download CLI: ``hf download`` (1.x and later), else ``huggingface-cli``."""
    try:
        major = int(metadata.version("huggingface_hub").split(".")[0])
    except Exception:  # noqa: BLE001 - no metadata: the name every release since 1.0 installs
        major = 1
    return "hf download" if major >= 1 else "huggingface-cli download"


def resolve_pretrained(name_or_path: str | None, *, what: str, key: str = "model.pretrained",
                       allow_patterns: list[str] | None = None) -> str:
    """Return a local directory for a hub id or local path, or raise one actionable error naming
    ``key``, the config key that holds it.

    Called before any weights are built, so a missing checkpoint fails in seconds, not after
    the text encoder has been loaded.
    """
    if not name_or_path:
        raise CheckpointNotAvailableError(f"{key} is not set ({what}): give a hub id or a local directory.")
    path = Path(os.path.expanduser(name_or_path))
    if path.is_dir():
        return str(path)
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1
    if looks_local:
        raise CheckpointNotAvailableError(
            f"{key}={name_or_path} ({what}): this local directory does not exist. "
            f"Point {key} at a directory in diffusers layout."
        )
    # deferred: huggingface_hub's HTTP client (~0.1 s); only when a checkpoint is fetched
    from huggingface_hub import snapshot_download

    try:  # cached by an earlier download: no network needed
        return snapshot_download(name_or_path, local_files_only=True, allow_patterns=allow_patterns)
    except Exception:  # noqa: BLE001 - any cache miss falls through to the download attempt
        pass
    try:
        return snapshot_download(name_or_path, allow_patterns=allow_patterns)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; one message for all
        local = f"/path/to/{name_or_path.split('/')[-1]}"
        raise CheckpointNotAvailableError(
            f"{key}={name_or_path} ({what}): not a local directory, not in the Hugging Face cache, and the "
            f"hub could not be reached ({type(exc).__name__}). On a machine with network run\n"
            f"    {download_command()} {name_or_path} --local-dir {local}\n"
            f"copy that directory here and set {key}={local}."
        ) from exc


def what_is_missing(missing: int, components: int) -> str:
    return "the checkpoint is not available" if components == 1 else \
        f"{missing} of {components} checkpoint components are not available"


def resolve_all(model_cfg, resolvers: list) -> list[str]:
    """Each resolver's directory (``resolvers``: one call per checkpoint component). When any is
    missing, one error lists every missing component, each with its key and download command, and
    names the family's tiny twin for an offline try-out: a user fixes them all in one go."""
    found, missing = [], []
    for resolver in resolvers:
        try:
            found.append(resolver())
        except CheckpointNotAvailableError as exc:
            missing.append(str(exc))
    if not missing:
        return found
    listed = "\n".join(f"  {i}. " + text.replace("\n", "\n     ") for i, text in enumerate(missing, 1))
    raise CheckpointNotAvailableError(
        f"{model_cfg.name}: {what_is_missing(len(missing), len(resolvers))}:\n{listed}\n"
        f"For an offline try-out use the tiny twin instead: model={model_cfg.family}_tiny"
    )


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    # Deduplicate by identity: tied weights must not be counted twice.
    seen: dict[int, int] = {id(p): p.numel() for p in params}
    return sum(seen.values())


def freeze(*modules: nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False)
        module.eval()


def trainable_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def cast_trainable_to_fp32(module: nn.Module) -> None:
    """Keep trainable weights in fp32 while the frozen base sits in fp16/bf16.

    Optimizer updates to half-precision weights underflow (and GradScaler refuses fp16
    master weights), so adapters and fully trained blocks must stay fp32.
    """
    for param in module.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def mixed_precision_dtype(mixed_precision: str) -> torch.dtype:
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """Pipeline output [B, F, C, H, W] in [0, 1] as float32 on the CPU."""
    return frames.detach().float().clamp(0, 1).cpu()


def frames_to_pixels(videos: torch.Tensor) -> torch.Tensor:
    """[B, F, C, H, W] -> [B*F, C, H, W] for image VAEs applied frame by frame."""
    b, f, c, h, w = videos.shape
    return videos.reshape(b * f, c, h, w)


def first_parameter(module: nn.Module) -> torch.Tensor:
    """Device and dtype of a module in O(1); diffusers' ``.device``/``.dtype`` walk every submodule."""
    return next(module.parameters())


def unwrap(module: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers (what pipelines and exports need)."""
    # deferred: accelerate; train --help imports this module
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(module)


class TruncatedPrompts:
    """Prompts cut by a tokenizer in this process: counted, warned about once with an example.

    A caption that loses its last words ("... moving down quickly" -> "... moving") trains the model
    on the wrong text without any error, so the count goes into the run's summary.json.
    """

    count = 0
    example: str | None = None

    @classmethod
    def add(cls, prompts: list[str], max_length: int) -> None:
        if not prompts:
            return
        if cls.example is None:
            log.warning("%d of %d prompts are longer than the tokenizer's %d tokens and are cut, e.g. %r; "
                        "later cuts are only counted (summary.json: prompts_truncated)",
                        len(prompts), len(prompts), max_length, prompts[0])
            cls.example = prompts[0]
        cls.count += len(prompts)


def tokenize_prompts(tokenizer, prompts: list[str], max_length: int, **kwargs):
    """``tokenizer(prompts)`` padded and cut to ``max_length``, counting the prompts that were cut."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True, truncation=False).input_ids]
    TruncatedPrompts.add([p for p, n in zip(prompts, lengths, strict=True) if n > max_length], max_length)
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                     add_special_tokens=True, return_tensors="pt", **kwargs)


def encode_clip_prompts(tokenizer, text_encoder, prompts: list[str], *, trainable: bool = False) -> torch.Tensor:
    """CLIP hidden states; with ``trainable`` (a text-encoder LoRA) autograd records them when enabled."""
    tokens = tokenize_prompts(tokenizer, prompts, tokenizer.model_max_length)
    ids = tokens.input_ids.to(first_parameter(text_encoder).device)
    with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
        return text_encoder(ids)[0]


# model.load_dtype of the families that offer it: the dtype weights are read in (bfloat16 halves host RAM
# of the big checkpoints); trainable weights become fp32 in place() whatever it says.
LOAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def validate_load_dtype(cfg) -> None:
    if cfg.load_dtype not in LOAD_DTYPES:
        raise ConfigError(f"model.load_dtype={cfg.load_dtype} must be one of {', '.join(LOAD_DTYPES)}, "
                          f"e.g. model.load_dtype=bfloat16")


def posterior_in_model_space(posterior, to_model_space) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of a VAE posterior (diffusers' DiagonalGaussianDistribution) mapped into the
    denoiser's latent space by ``to_model_space``.

    Every family's map is affine per channel (a scale, a shift, a transpose), so a std maps as
    ``f(mean + std) - f(mean)``; computed in float32, where a std of 1e-3 beside a mean of 10 survives.
    The mean is the deterministic latent (``model.latent_sampling=mode``), exactly as before.
    """
    mean = to_model_space(posterior.mean)
    base = to_model_space(posterior.mean.float())
    std = (to_model_space(posterior.mean.float() + posterior.std.float()) - base).abs()
    return mean, std.to(mean.dtype)


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """``model.latent_sampling=sample``: mean + std * noise, sample i's noise from ``generators[i]``
    (drawn before the objective's timestep and noise, so cached and on-the-fly runs draw alike)."""
    return mean + std * sample_noise(mean, generators)


def image_vae_posteriors(vae, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, F, C, H, W] pixels -> (mean, std) of [B, C, F, h, w] scaled latents, one frame at a time
    through a 2-D VAE."""
    b, f = videos.shape[:2]
    weight = first_parameter(vae)
    pixels = frames_to_pixels(videos).to(device=weight.device, dtype=weight.dtype)

    def to_model_space(latents):
        c, h, w = latents.shape[1:]
        latents = latents * vae.config.scaling_factor
        return latents.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).contiguous()

    return posterior_in_model_space(vae.encode(pixels).latent_dist, to_model_space)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def load_full_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise KeyError(f"Trainable weights do not match: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state_dict.items():
            params[name].copy_(value.to(params[name].dtype))


def place_components(frozen: list[nn.Module], trainable: nn.Module, device, weight_dtype: torch.dtype,
                     frozen_device=None) -> None:
    """Frozen parts in the compute dtype (halves memory); trainable weights stay fp32.

    With ``frozen_device="cpu"`` (gpu.cpu_offload) the text encoder and VAE stay on the CPU in
    fp32 (half-precision CPU kernels are slow or missing) and only the denoiser uses the GPU.
    """
    offloaded = frozen_device is not None and torch.device(frozen_device) != torch.device(device)
    for module in frozen:
        if offloaded:
            module.to(device=frozen_device, dtype=torch.float32)
        else:
            module.to(device=device, dtype=weight_dtype)
        cast_trainable_to_fp32(module)  # a text encoder's LoRA (model.text_encoder_lora) trains too
    trainable.to(device=device, dtype=weight_dtype)
    cast_trainable_to_fp32(trainable)


def spatial_multiple(pretrained_dir: str, denoiser_subfolder: str, vae_subfolder: str = "vae") -> int:
    """Pixel height/width must be a multiple of this: VAE downsampling x denoiser downsampling/patching."""
    root = Path(pretrained_dir)
    vae_cfg = json.loads((root / vae_subfolder / "config.json").read_text())
    den_cfg = json.loads((root / denoiser_subfolder / "config.json").read_text())
    vae_factor = 2 ** (len(vae_cfg.get("block_out_channels", [0])) - 1)
    if "patch_size" in den_cfg:
        return vae_factor * int(den_cfg["patch_size"])
    return vae_factor * 2 ** (len(den_cfg["block_out_channels"]) - 1)


TINY_PREFIX = "tiny:"


def checkpoint_dir(spec: str | None, cache_dir: str | None, *, what: str, allow_patterns: list[str] | None = None,
                   tiny_builders: dict | None = None, tiny_version: str = "", key: str = "model.pretrained") -> str:
    """``tiny:<name>`` builds/loads a local random twin; anything else is a hub id or directory.

    A family passes its own twin builders (its ``FamilySpec.tiny_builders``), so the tiny-twin cache
    never needs to know the families.
    """
    if spec and spec.startswith(TINY_PREFIX):
        name, pretrained = tiny_bases.parse_tiny_spec(spec[len(TINY_PREFIX):])
        builder = (tiny_builders or {}).get(name)
        if builder is None:
            raise ValueError(f"{key}={spec} ({what}): no such tiny twin; valid: "
                             f"{', '.join(TINY_PREFIX + n for n in sorted(tiny_builders or {}))}")
        if pretrained:
            return pretrained_twin(name, cache_dir, builder=builder, version=tiny_version)
        return tiny_checkpoint(name, cache_dir, builder=builder, version=tiny_version)
    return resolve_pretrained(spec, what=what, key=key, allow_patterns=allow_patterns)


# -- protocol methods that every family implements the same way ------------------------------
# Plain functions over the adapter's standard attributes (tokenizer, text_encoder, vae,
# denoiser, lora); each family's method is a one-line call, so a family can still differ.


def adapter_parameter_counts(model) -> dict[str, int]:
    modules = [model.text_encoder, model.vae, unwrap(model.denoiser)]
    total = count_parameters(p for m in modules for p in m.parameters())
    return {"trainable": count_parameters(adapter_trainable_parameters(model)), "total": total}


def adapter_enable_memory_savers(model, *, gradient_checkpointing: bool, vae_slicing: bool, vae_tiling: bool,
                                 checkpoint_classes: tuple[type, ...] = ()):
    """``checkpoint_classes``: the denoiser's building blocks to checkpoint ourselves when its diffusers
    class has no gradient checkpointing (ModelScope's UNet3D)."""
    if gradient_checkpointing:
        if getattr(model.denoiser, "_supports_gradient_checkpointing", True):
            model.denoiser.enable_gradient_checkpointing()
        elif checkpoint_classes:
            count = checkpoint_submodules(unwrap(model.denoiser), checkpoint_classes)
            log.info("Gradient checkpointing: %d blocks of %s recompute their activations in backward",
                     count, type(unwrap(model.denoiser)).__name__)
        else:
            log.warning("%s does not support gradient checkpointing in this diffusers release; "
                        "training without it (gpu.gradient_checkpointing ignored)", type(model.denoiser).__name__)
    if vae_slicing:
        model.vae.enable_slicing()
    if vae_tiling:
        model.vae.enable_tiling()


TEXT_ENCODER_PREFIX = "text_encoder."  # the text encoder's LoRA keys in a trainable state dict


def attach_text_encoder_lora(model, cfg) -> None:
    """``model.text_encoder_lora=true`` (CLIP families): LoRA of the denoiser's rank and alpha on the
    text encoder's attention; ``model.text_encoder_lora`` holds its settings (None when off)."""
    model.text_encoder_lora = None
    if cfg.text_encoder_lora and model.lora:
        model.text_encoder_lora = text_encoder_lora_settings(model.lora)
        add_lora(model.text_encoder, model.text_encoder_lora)


def text_encoder_lora_export(model) -> dict:
    """``save_lora_weights`` keywords for the text encoder's LoRA (none when it has none)."""
    if model.text_encoder_lora is None:
        return {}
    return {"text_encoder_lora_layers": lora_state_dict(model.text_encoder),
            "text_encoder_lora_adapter_metadata": lora_metadata(model.text_encoder_lora)}


def adapter_trainable_parameters(model) -> list[nn.Parameter]:
    extra = trainable_params(model.text_encoder) if model.text_encoder_lora is not None else []
    return trainable_params(model.denoiser) + extra


def adapter_trainable_state_dict(model) -> dict[str, torch.Tensor]:
    denoiser = unwrap(model.denoiser)
    state = lora_state_dict(denoiser) if model.lora else full_state_dict(denoiser)
    if model.text_encoder_lora is not None:
        state.update({TEXT_ENCODER_PREFIX + k: v for k, v in lora_state_dict(model.text_encoder).items()})
    return state


def adapter_load_trainable_state_dict(model, state_dict: dict[str, torch.Tensor]) -> None:
    denoiser = unwrap(model.denoiser)
    text = {k[len(TEXT_ENCODER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TEXT_ENCODER_PREFIX)}
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(TEXT_ENCODER_PREFIX)}
    if bool(text) != (model.text_encoder_lora is not None):
        raise KeyError("the checkpoint's text-encoder LoRA does not match model.text_encoder_lora "
                       f"({'present' if text else 'absent'} in the checkpoint)")
    if text:
        load_lora_state_dict(model.text_encoder, text)
    if model.lora:
        load_lora_state_dict(denoiser, state_dict)
    else:
        load_full_state_dict(denoiser, state_dict)


def prompt_embeds_kwargs(embeds: torch.Tensor, negative: torch.Tensor | None) -> dict[str, Any]:
    """The stock pipelines' keywords for precomputed text states: every family's ``prompt_kwargs`` but
    LTX's, which adds the masks (ltx.py)."""
    kwargs: dict[str, Any] = {"prompt_embeds": embeds}
    if negative is not None:
        kwargs["negative_prompt_embeds"] = negative
    return kwargs


@contextmanager
def decode_where_the_vae_lives(vae: nn.Module):
    """While sampling, ``vae.decode`` takes its inputs to the VAE's device and returns to the caller's.

    With ``gpu.cpu_offload`` the VAE stays on the CPU while the pipeline denoises on the accelerator,
    and every stock pipeline ends with ``self.vae.decode(latents, ...)`` on the accelerator's latents."""
    original = vae.decode

    def moved(value, device):
        return value.to(device) if isinstance(value, torch.Tensor) else value

    def decode(*args, **kwargs):
        here = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        home = first_parameter(vae).device
        out = original(*(moved(a, home) for a in args), **{k: moved(v, home) for k, v in kwargs.items()})
        if here is None or here == home:
            return out
        if isinstance(out, tuple):
            return tuple(moved(v, here) for v in out)
        out.sample = out.sample.to(here)
        return out

    vae.decode = decode
    try:
        yield
    finally:
        del vae.decode  # the instance attribute; the class's method shows through again


@torch.no_grad()
def adapter_generate(model, prompts: list[str], *, num_inference_steps: int, guidance_scale: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Sample with the family's own pipeline and geometry: [B, F, C, H, W] floats in [0, 1] on the CPU.

    The prompts (and, with classifier-free guidance, the empty negative prompt the pipelines default
    to) are encoded by the family's ``encode_prompts`` wherever the text encoder lives, and handed to
    the pipeline as embeddings: its own text path would move token ids to the accelerator, where an
    offloaded text encoder is not. Always in eval mode: a denoiser left in training mode would sample
    with its dropout on (UNet3D's temporal convs drop 10%), so the same prompt and seed would not give
    the stock pipeline's video."""
    embeds = model.encode_prompts(list(prompts))
    negative = model.encode_prompts([""] * len(prompts)) if guidance_scale > 1 else None
    prompt_kwargs = model.prompt_kwargs(embeds, negative)
    denoiser = model.denoiser
    was_training = denoiser.training
    denoiser.eval()
    try:
        with decode_where_the_vae_lives(model.vae):
            out = model.pipeline()(
                **prompt_kwargs, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                generator=generator, output_type="pt", **model.generation_kwargs(),
            )
    finally:
        denoiser.train(was_training)
    return to_unit_range(out.frames)


def export_transformer(pipeline_class, transformer: nn.Module, lora, lora_dir: Path, full_dir: Path) -> None:
    """A transformer family's export: its LoRA as ``pipeline_class.save_lora_weights`` writes it
    (``transformer.``-prefixed keys plus adapter metadata), or the whole transformer via save_pretrained."""
    if lora:
        pipeline_class.save_lora_weights(lora_dir, transformer_lora_layers=lora_state_dict(transformer),
                                         transformer_lora_adapter_metadata=lora_metadata(lora))
    else:
        transformer.save_pretrained(full_dir, safe_serialization=True)
