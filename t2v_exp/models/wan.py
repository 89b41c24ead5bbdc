"""Wan 2.1 text-to-video: a 3-D DiT over [B, C, F, H, W] latents, a causal 3-D VAE whose latents are
normalised per channel, UMT5 text, rectified flow (flow matching).

Checked against diffusers 0.42 (``pipelines/wan/pipeline_wan.py``, ``transformer_wan.py``,
``autoencoder_kl_wan.py``) and ``scripts/convert_wan_to_diffusers.py``, which wrote the published
``Wan-AI/*-Diffusers`` repos:

- **Scheduler.** The published T2V repos (2.1 1.3B/14B, 2.2 A14B) ship ``UniPCMultistepScheduler``
  with ``prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
  flow_shift=3.0`` (the 480p shift; diffusers' docs use 5.0 at 720p: set it on the scheduler, it
  does not change training). The pipeline hands the transformer ``timestep = sigma * 1000``.
- **Latents.** The VAE's config holds per-channel ``latents_mean`` / ``latents_std`` instead of one
  scaling factor; the pipeline decodes ``z * std + mean``, so ``encode_videos`` returns
  ``(z - mean) / std`` of the posterior mean (deterministic, so the latent cache gives the same loss).
- **Text.** As ``WanPipeline._get_t5_prompt_embeds``: prompts cleaned (ftfy, whitespace), padded to
  ``model.max_sequence_length`` (512 real), encoded with the attention mask, and every position past a
  prompt's length set to zero -- the transformer takes no mask, the zeros are the padding.
- **Geometry.** Frames 4k+1 (the VAE keeps the first frame and compresses the rest 4x); height and
  width multiples of 16 (VAE 8x times the (1, 2, 2) patch). Read from the JSON configs before any load.
- **Objective** (``objectives.FlowMatchingObjective``): ``x_t = (1 - sigma) x0 + sigma * noise``,
  target ``noise - x0``, timestep ``sigma * 1000``. Default sampling as in finetrainers' Wan LoRA recipe
  (``examples/training/sft/wan/crush_smol_lora``): logit-normal(0, 1) sigmas, shift 1.0 (finetrainers'
  default ``flow_shift``), no loss weighting. ``model.shift=3`` gives musubi-tuner's Wan setting.
- **Export.** LoRA: ``WanPipeline.save_lora_weights`` -> ``<dir>/pytorch_lora_weights.safetensors``, loaded
  with ``WanPipeline.load_lora_weights(<dir>)``. ``model.finetune=full``: ``<dir>/transformer/`` via
  ``save_pretrained`` (``load_pipeline`` swaps it in).

Wan 2.2 A14B (two experts) lives in ``wan22.py`` and reuses everything here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, require_multiple
from . import comfyui, common, published, tiny
from .lora import add_lora, lora_settings, lora_state_dict
from .objectives import FLOW_SAMPLINGS, FLOW_WEIGHTINGS, FlowMatchingObjective
from .spec import FamilySpec, TinyBuilder
from .tiny import TEXT_DIM, t5_tokenizer
from .tiny_vae import fit_video_vae, shapes_clips, shapes_frames

log = logging.getLogger(__name__)

FAMILY = "wan"
#: diffusers module name -> the original Wan checkpoint's, which ComfyUI's LoRA loader (and diffusers'
#: own reader of such files) expects; the inverse of diffusers' convert_wan_to_diffusers renaming.
COMFYUI_NAMES = (
    (r"blocks\.(\d+)\.attn1\.to_([qkv])", r"blocks.\1.self_attn.\2"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0", r"blocks.\1.self_attn.o"),
    (r"blocks\.(\d+)\.attn2\.to_([qkv])", r"blocks.\1.cross_attn.\2"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0", r"blocks.\1.cross_attn.o"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj", r"blocks.\1.ffn.0"),
    (r"blocks\.(\d+)\.ffn\.net\.2", r"blocks.\1.ffn.2"),
    (r"condition_embedder\.time_embedder\.linear_1", "time_embedding.0"),
    (r"condition_embedder\.time_embedder\.linear_2", "time_embedding.2"),
    (r"condition_embedder\.text_embedder\.linear_1", "text_embedding.0"),
    (r"condition_embedder\.text_embedder\.linear_2", "text_embedding.2"),
    (r"condition_embedder\.time_proj", "time_projection.1"),
    (r"proj_out", "head.head"),
)
PIPELINE_PARTS = ["vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "model_index.json"]
SUBFOLDERS = ["transformer/*", *PIPELINE_PARTS]
#: The scheduler of the published T2V -Diffusers repos (diffusers' convert_wan_to_diffusers.py).
PUBLISHED_SCHEDULER = dict(
    prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0,
)


@dataclass
class Config(ModelConfig):
    """model.* for wan: the shared model schema plus Wan's flow-matching and text settings."""

    family: str = FAMILY
    shift: float = 1.0  # training sigma shift (finetrainers' default); inference uses the scheduler's flow_shift
    timestep_sampling: str = "logit_normal"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weighting: str = "none"  # none | sigma_sqrt | cosmap
    max_sequence_length: int = 512  # UMT5 tokens (Wan was trained with 512)
    # dtype the weights are read in: bfloat16 halves host RAM for the 14B transformers; trainable
    # weights become fp32 in place() whatever this says.
    load_dtype: str = "float32"


# -- settings and geometry, from the JSON configs only -----------------------------------------


def read_json(root: str, relative: str) -> dict:
    path = Path(root) / relative
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model.pretrained={root} is not a Wan checkpoint in diffusers layout: {path} is "
                          f"missing (expected model_index.json with transformer/, vae/, text_encoder/, ...)") from None


def vae_compression(vae_cfg: dict) -> tuple[int, int]:
    """(temporal, spatial) compression as AutoencoderKLWan declares it; older configs lack the keys,
    then the encoder's structure says it (one 2x per temporal downsample / per level but the last)."""
    temporal = vae_cfg.get("scale_factor_temporal") or 2 ** sum(map(bool, vae_cfg.get("temperal_downsample",
                                                                                       [False, True, True])))
    spatial = vae_cfg.get("scale_factor_spatial") or 2 ** (len(vae_cfg.get("dim_mult", [1, 2, 4, 4])) - 1)
    return int(temporal), int(spatial)


def validate_geometry(cfg, root: str, denoiser_subfolder: str = "transformer") -> None:
    temporal, spatial = vae_compression(read_json(root, "vae/config.json"))
    frames = cfg.num_frames
    if frames < 1 or (frames - 1) % temporal:
        below = max(1, (frames - 1) // temporal * temporal + 1)
        raise ConfigError(
            f"model.num_frames={frames} must be {temporal}k+1 (the Wan VAE keeps the first frame and compresses "
            f"the rest {temporal}x); nearest valid: {below} or {below + temporal}"
        )
    patch = read_json(root, f"{denoiser_subfolder}/config.json").get("patch_size", [1, 2, 2])
    for key, value, step in (("model.height", cfg.height, patch[1]), ("model.width", cfg.width, patch[2])):
        require_multiple(key, value, spatial * int(step),
                         f"the VAE compresses space {spatial}x and the transformer patch is {int(step)}")


def validate_settings(cfg) -> None:
    """Wan's own keys, checked before any load so a typo fails in seconds."""
    if cfg.max_sequence_length < 1:
        raise ConfigError(f"model.max_sequence_length={cfg.max_sequence_length} must be >= 1 (UMT5 tokens), "
                          f"e.g. model.max_sequence_length=512")
    if cfg.timestep_sampling not in FLOW_SAMPLINGS:
        raise ConfigError(f"model.timestep_sampling={cfg.timestep_sampling} must be one of "
                          f"{', '.join(FLOW_SAMPLINGS)}, e.g. model.timestep_sampling=logit_normal")
    if cfg.loss_weighting not in FLOW_WEIGHTINGS:
        raise ConfigError(f"model.loss_weighting={cfg.loss_weighting} must be one of {', '.join(FLOW_WEIGHTINGS)}, "
                          f"e.g. model.loss_weighting=none")
    if not 0 < cfg.shift < float("inf"):
        raise ConfigError(f"model.shift={cfg.shift} must be a finite number > 0, e.g. model.shift=1.0")
    if not 0 < cfg.logit_std < float("inf"):
        raise ConfigError(f"model.logit_std={cfg.logit_std} must be a finite number > 0, e.g. model.logit_std=1.0")
    common.validate_load_dtype(cfg)


def validate_scheduler(root: str) -> None:
    """Training mirrors a flow-matching scheduler; a DDPM-style one would make it the wrong objective."""
    config = read_json(root, "scheduler/scheduler_config.json")
    name = config.get("_class_name")
    flow = name == "FlowMatchEulerDiscreteScheduler" or (
        name == "UniPCMultistepScheduler" and config.get("prediction_type") == "flow_prediction"
        and config.get("use_flow_sigmas", False))
    if not flow:
        raise ConfigError(f"model.pretrained={root}: scheduler {name} (prediction_type="
                          f"{config.get('prediction_type')}) is not a flow-matching scheduler; Wan checkpoints ship "
                          f"UniPCMultistepScheduler with prediction_type=flow_prediction, use_flow_sigmas=true")


def experts_in(root: str) -> list[str]:
    """The denoisers model_index.json declares (Wan 2.2 A14B: transformer and transformer_2)."""
    index = read_json(root, "model_index.json")
    return [name for name in ("transformer", "transformer_2") if (index.get(name) or [None])[0] is not None]


# -- the tiny twin ------------------------------------------------------------------------------


def tiny_text_encoder(vocab_size: int):
    # deferred: transformers (~0.4 s); reading the family's spec (train --help) must not load it
    from transformers import UMT5Config, UMT5EncoderModel


    return UMT5EncoderModel(UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def tiny_vae():
    """The real VAE's structure (16 latent channels, 8x space in three steps, 4x time), narrow."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def tiny_transformer():
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import WanTransformer3DModel


    # 64 wide, 4 layers: a (1, 2, 2) patch of 16 latent channels is 64 numbers, and the 32-wide, 2-layer
    # transformer of version 3 squeezed them so hard that its base never learned the motion's direction
    # (0.31 on domain A after 12000 steps; 64 wide: 0.75; 64 wide and 4 layers: 0.84).
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=128, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )


@torch.no_grad()
def fit_latent_statistics(vae) -> None:
    """latents_mean/std := the per-channel statistics of the twin's own latents of shapes clips, as the
    real VAE ships those of its training data: normalised latents are then ~unit scale, as flow matching
    assumes, and a normalisation bug cannot hide behind mean 0 / std 1."""
    clips = shapes_frames(num_videos=8, num_frames=9, size=32).reshape(8, 9, 3, 32, 32).permute(0, 2, 1, 3, 4)
    latents = vae.encode(clips).latent_dist.mode()
    vae.register_to_config(latents_mean=latents.mean(dim=(0, 2, 3, 4)).tolist(),
                           latents_std=latents.std(dim=(0, 2, 3, 4)).clamp(min=1e-3).tolist())


# The narrow VAE learns position and brightness first, colour late: after 300 steps every colour came back grey.
VAE_FIT_STEPS = 1200


def _fit_to_shape_clips(vae) -> dict:
    figures = fit_video_vae(vae, shapes_clips(), steps=VAE_FIT_STEPS, scale_latents=False)  # Wan normalises per channel
    fit_latent_statistics(vae)
    return figures


# The twins' VAE fitted to shapes clips (shared by Wan 2.1 and 2.2): a random one decodes noise.
build_tiny_vae = tiny.fitted_vae_builder(tiny_vae, _fit_to_shape_clips)


def fitted_tiny_vae():
    """The fitted VAE, committed in t2v_exp/tiny_bases/wan_vae (else fitted once per cache)."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import AutoencoderKLWan

    return tiny.fitted_shared_vae("wan_vae", AutoencoderKLWan, tiny_vae, build_tiny_vae, version=SPEC.tiny_version)


def tiny_pipeline_parts(out_dir: Path) -> dict:
    """Tokenizer, text encoder, VAE and the published scheduler: what Wan 2.1 and 2.2 twins share."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import UniPCMultistepScheduler


    tokenizer = t5_tokenizer(out_dir)
    torch.manual_seed(0)
    text_encoder = tiny_text_encoder(len(tokenizer))
    vae = fitted_tiny_vae()
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                scheduler=UniPCMultistepScheduler(**PUBLISHED_SCHEDULER))


def build_tiny(out_dir: Path) -> None:
    """A tiny random WanPipeline (2.1 layout: one transformer) saved in diffusers layout."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import WanPipeline

    parts = tiny_pipeline_parts(out_dir)
    torch.manual_seed(0)
    WanPipeline(**parts, transformer=tiny_transformer()).save_pretrained(out_dir, safe_serialization=True)


# Wan-AI/Wan2.1-T2V-1.3B-Diffusers: 12 heads of 128, 30 layers, FFN 8960 (the class defaults are the 14B);
# AutoencoderKLWan's defaults are the released VAE (with its latent statistics); UMT5-XXL text.
PUBLISHED_ARCHITECTURES = {
    "wan": published.Architecture(
        geometry=(5, 64, 64), temporal_compression=4, twin="wan_tiny", source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        components={"model.pretrained": {
            "transformer": published.Part("WanTransformer3DModel", dict(num_attention_heads=12, ffn_dim=8960,
                                                                        num_layers=30)),
            "vae": published.Part("AutoencoderKLWan"), "text_encoder": published.UMT5_XXL_ONE_LAYER}},
        published_parameters={"transformer": 1_420_000_000}),
}


def resolve_checkpoint(pretrained: str, cache_dir: str | None, *, what: str = "Wan 2.1",
                       allow_patterns: list[str] = SUBFOLDERS, builders: Mapping[str, TinyBuilder] | None = None) -> str:
    """``builders``: the twins ``tiny:<name>`` may name (default: Wan 2.1's); Wan 2.2's share Wan 2.1's tiny version."""
    return common.checkpoint_dir(pretrained, cache_dir, what=what, allow_patterns=allow_patterns,
                                 tiny_builders=SPEC.tiny_builders if builders is None else builders,
                                 tiny_version=SPEC.tiny_version)


def load_pipeline(pretrained: str, lora_dir: str | None = None, torch_dtype=torch.float32):
    """The stock WanPipeline of a checkpoint (hub id, directory or tiny:wan) with our export applied:
    a LoRA export through ``load_lora_weights``; a full fine-tune export (its transformer/) replaces
    the transformer."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import WanPipeline, WanTransformer3DModel

    root = resolve_checkpoint(pretrained, None)
    full = lora_dir is not None and (Path(lora_dir) / "transformer" / "config.json").is_file()
    extra = {}
    if full:
        extra["transformer"] = WanTransformer3DModel.from_pretrained(Path(lora_dir) / "transformer",
                                                                     torch_dtype=torch_dtype)
    pipe = WanPipeline.from_pretrained(root, torch_dtype=torch_dtype, **extra)
    if lora_dir and not full:
        pipe.load_lora_weights(lora_dir)
    return pipe


# -- loading and placing components --------------------------------------------------------------


def load_tokenizer(root: str):
    """The tokenizer class model_index.json names, as WanPipeline.from_pretrained loads it, so our
    prompts tokenize exactly like the stock pipeline's."""
    # deferred: transformers (~0.4 s); reading the family's spec (train --help) must not load it
    import transformers

    _, class_name = read_json(root, "model_index.json").get("tokenizer", ["transformers", "AutoTokenizer"])
    return getattr(transformers, class_name).from_pretrained(root, subfolder="tokenizer")


def load_transformer(root: str, subfolder: str, dtype: torch.dtype):
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(root, subfolder=subfolder, torch_dtype=dtype)


def make_trainable(transformer: nn.Module, lora, export_formats=()) -> None:
    """LoRA adapters (only they train) or the whole transformer."""
    if lora:
        add_lora(transformer, lora)
        if "comfyui" in export_formats:
            comfyui.check_names(transformer, COMFYUI_NAMES, "Wan")
    else:
        transformer.requires_grad_(True)
    transformer.train()


def restore_fp32_modules(module: nn.Module) -> None:
    """Put the class's ``_keep_in_fp32_modules`` (Wan: rope, time embedder, norms, modulation tables;
    UMT5: ``wo``) back in fp32 after a cast to half precision, as ``from_pretrained(torch_dtype=...)``
    keeps them: the time embedding of t ~ 999 and the rotary tables lose too much in bf16."""
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if not keep:
        return
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and any(part in keep for part in name.split(".")):
            tensor.data = tensor.data.float()


def place(model, device, weight_dtype: torch.dtype, frozen_device=None) -> None:
    """Text encoder and denoiser as ``common.place_components`` does (trainable weights fp32); the VAE
    stays fp32, as diffusers recommends for Wan (it is small: ~127M parameters for the real one)."""
    common.place_components([model.text_encoder], model.denoiser, device, weight_dtype, frozen_device)
    model.vae.to(frozen_device or device)  # loaded in fp32 and kept there
    restore_fp32_modules(model.text_encoder)
    for expert in model.experts().values():
        restore_fp32_modules(expert)


def flow_objective(cfg, scheduler, sigma_range: tuple[float, float] = (0.0, 1.0)) -> FlowMatchingObjective:
    return FlowMatchingObjective(
        shift=cfg.shift, sampling=cfg.timestep_sampling, logit_mean=cfg.logit_mean, logit_std=cfg.logit_std,
        weighting=cfg.loss_weighting, num_train_timesteps=int(scheduler.config.num_train_timesteps),
        sigma_range=sigma_range,
    )


# -- prompts and latents, in the pipeline's own terms ------------------------------------------


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_sequence_length: int) -> torch.Tensor:
    """UMT5 states [B, L, D] exactly as WanPipeline computes them (the tests compare the two)."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tokens = common.tokenize_prompts(tokenizer, [prompt_clean(p) for p in prompts], max_sequence_length,
                                     return_attention_mask=True)
    device = common.first_parameter(text_encoder).device
    mask = tokens.attention_mask.to(device)
    states = text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
    # The pipeline cuts each prompt at its length and pads with zeros: the same as zeroing by the mask
    # (T5 masks are a prefix of ones).
    return states * mask.unsqueeze(-1).to(states.dtype)


def latent_statistics(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) from the VAE's config, shaped to broadcast over [B, C, F, H, W]."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(shape)
    return mean.to(like.device), std.to(like.device)


@torch.no_grad()
def encode_video_posteriors(vae, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, F, C, H, W] pixels in [-1, 1] -> (mean, std) of the normalised latents [B, C, F', H', W']
    (the transformer's layout). model.latent_sampling=mode trains on the mean (deterministic: the
    latent cache and on-the-fly encoding agree); =sample draws from it, as finetrainers does."""
    weight = common.first_parameter(vae)
    pixels = videos.permute(0, 2, 1, 3, 4).to(device=weight.device, dtype=weight.dtype)

    def normalised(latents):
        mean, std = latent_statistics(vae, latents)
        return (latents.float() - mean) / std  # the inverse of the pipeline's `latents / (1 / std) + mean`

    return common.posterior_in_model_space(vae.encode(pixels).latent_dist, normalised)


def encode_videos(vae, videos: torch.Tensor) -> torch.Tensor:
    return encode_video_posteriors(vae, videos)[0]


# -- the adapter --------------------------------------------------------------------------------


class WanModel:
    family = FAMILY
    trainable_scope = None  # every trainable parameter belongs to the transformer
    denoiser_subfolder = "transformer"
    text_encoder_lora = None  # UMT5: no text-encoder LoRA

    @staticmethod
    def resolve(cfg, cache_dir: str | None) -> str:
        (root,) = common.resolve_all(cfg, [lambda: resolve_checkpoint(cfg.pretrained, cache_dir)])
        return root

    @property
    def roots(self) -> str:
        return self.root

    @staticmethod
    def validate(cfg, root: str) -> None:
        validate_settings(cfg)
        validate_scheduler(root)
        if "transformer_2" in experts_in(root):
            raise ConfigError(f"model.pretrained={cfg.pretrained} holds two experts (transformer and "
                              f"transformer_2, Wan 2.2 A14B); train it with model=wan22")
        validate_geometry(cfg, root)

    def __init__(self, cfg, root: str):
        self.cfg = cfg
        self.root = root
        dtype = common.LOAD_DTYPES[cfg.load_dtype]
        self.load_shared_parts(root, dtype)
        self.denoiser = load_transformer(root, "transformer", dtype)
        common.freeze(self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        make_trainable(self.denoiser, self.lora, cfg.export_formats)
        self.objective = flow_objective(cfg, self.scheduler)

    def load_shared_parts(self, root: str, dtype: torch.dtype) -> None:
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        import diffusers
        from transformers import UMT5EncoderModel  # deferred: transformers (~0.4 s), as diffusers above

        self.tokenizer = load_tokenizer(root)
        self.text_encoder = UMT5EncoderModel.from_pretrained(root, subfolder="text_encoder", dtype=dtype)
        self.vae = diffusers.AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32)
        # For sampling only (training draws its sigmas itself); the class the checkpoint names, as the
        # pipeline loads it (validate_scheduler admitted only flow-matching ones).
        scheduler_class = getattr(diffusers, read_json(root, "scheduler/scheduler_config.json")["_class_name"])
        self.scheduler = scheduler_class.from_pretrained(root, subfolder="scheduler")
        common.freeze(self.text_encoder, self.vae)
        self.max_text_tokens = int(self.cfg.max_sequence_length)  # also keys the latent cache's text entries

    def experts(self) -> dict[str, nn.Module]:
        """{pipeline component name: transformer}, unwrapped from DDP."""
        return {"transformer": common.unwrap(self.denoiser)}

    def trainable_parameters(self):
        return common.trainable_params(self.denoiser)

    def parameter_counts(self):
        return common.adapter_parameter_counts(self)

    def place(self, device, weight_dtype, frozen_device=None):
        place(self, device, weight_dtype, frozen_device)

    def enable_memory_savers(self, **flags):
        common.adapter_enable_memory_savers(self, **flags)

    def encode_prompts(self, prompts):
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.max_text_tokens)

    def encode_videos(self, videos):
        return encode_videos(self.vae, videos)

    def encode_video_posteriors(self, videos):
        return encode_video_posteriors(self.vae, videos)

    def training_loss(self, latents, prompt_embeds, generators):
        draw = self.objective.draw(latents, generators)
        prediction = self.denoiser(
            hidden_states=draw.noisy, timestep=draw.timesteps, encoder_hidden_states=prompt_embeds,
            return_dict=False,
        )[0]
        return self.objective.loss(prediction, draw)

    def pipeline(self):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import WanPipeline

        pipe = WanPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae,
                           scheduler=self.scheduler, **self.experts())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generation_kwargs(self) -> dict:
        # The pipeline's default text length is 512; the twin's tokenizer takes 16.
        return {"num_frames": self.cfg.num_frames, "height": self.cfg.height, "width": self.cfg.width,
                "max_sequence_length": self.max_text_tokens}

    def stock_pipeline(self, lora_dir: str | None = None):
        return load_pipeline(self.root, lora_dir)

    def prompt_kwargs(self, embeds, negative):
        return common.prompt_embeds_kwargs(embeds, negative)

    def generate(self, prompts, *, num_inference_steps, guidance_scale, generator):
        return common.adapter_generate(self, prompts, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, generator=generator)

    def trainable_state_dict(self):
        return common.adapter_trainable_state_dict(self)

    def load_trainable_state_dict(self, state_dict):
        common.adapter_load_trainable_state_dict(self, state_dict)

    def export(self, out_dir: Path):
        transformer = self.experts()["transformer"]
        export_expert(transformer, self.lora, Path(out_dir), Path(out_dir) / "transformer")
        if self.lora and "comfyui" in self.cfg.export_formats:
            export_comfyui(transformer, self.lora, Path(out_dir) / comfyui.DIRECTORY / f"{self.cfg.name}.safetensors")


def export_expert(transformer: nn.Module, lora, lora_dir: Path, full_dir: Path) -> None:
    """A LoRA as WanPipeline.save_lora_weights writes it (``transformer.``-prefixed keys, adapter
    metadata), or the whole transformer via save_pretrained."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import WanPipeline

    common.export_transformer(WanPipeline, transformer, lora, lora_dir, full_dir)


def export_comfyui(transformer: nn.Module, lora, path: Path) -> Path:
    """The LoRA in ComfyUI's layout (LoraLoaderModelOnly on a Wan model; also what
    ``WanPipeline.load_lora_weights`` reads as a non-diffusers file)."""
    return comfyui.save_comfyui_lora(path, lora_state_dict(transformer), COMFYUI_NAMES, alpha=lora.alpha)


SPEC = FamilySpec(
    name=FAMILY, config=Config, adapter=WanModel,
    export_formats=("diffusers", "comfyui"),
    base_license="apache-2.0",  # the model card's license when the checkpoint's own card does not say
    tiny_builders={"wan": build_tiny},
    # Bump when a builder here (or in wan22.py, whose twins share it) changes so stale twins are rebuilt.
    tiny_version="4",  # 2: 32-token T5 tokenizer; 3: VAE fitted to shapes clips; 4: 64-wide, 4-layer transformer
    fitted_vaes={"wan_vae": build_tiny_vae},
    published_architectures=PUBLISHED_ARCHITECTURES,
)
