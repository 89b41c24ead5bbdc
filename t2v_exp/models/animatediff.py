"""AnimateDiff: a frozen SD1.5 UNet + MotionAdapter -> UNetMotionModel; only motion modules train."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError, require_multiple
from . import comfyui, common, published, tiny
from .lora import (
    TextEncoderLoraSettings,
    add_lora,
    lora_metadata,
    lora_settings,
    lora_state_dict,
    validate_text_encoder_lora,
)
from .objectives import DDPMObjective, DDPMSettings, validate_ddpm_settings
from .spec import FamilySpec

log = logging.getLogger(__name__)
SD_SUBFOLDERS = ["unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "model_index.json"]
# The original motion-module training used linear betas, not SD's scaled_linear.
MOTION_BETAS = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)


def motion_schedulers(sd_scheduler_config):
    """(training, sampling) schedulers with the motion modules' linear betas (MODEL_FACTS.md)."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler.from_config(sd_scheduler_config, prediction_type="epsilon", **MOTION_BETAS)
    sample = DDIMScheduler.from_config(sd_scheduler_config, clip_sample=False, timestep_spacing="linspace",
                                       steps_offset=1, **MOTION_BETAS)
    return train, sample


def load_pipeline(pretrained: str, lora_dir: str | None = None, *, motion_adapter: str, torch_dtype=torch.float32):
    """The stock AnimateDiffPipeline (SD1.5 + motion adapter, sampled with the motion modules'
    linear betas), with our exported motion LoRA when given."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    base = common.checkpoint_dir(pretrained, None, what="AnimateDiff base (SD1.5)", allow_patterns=SD_SUBFOLDERS,
                                 tiny_builders=SPEC.tiny_builders)
    adapter_dir = common.checkpoint_dir(motion_adapter, None, what="AnimateDiff motion adapter",
                                        tiny_builders=SPEC.tiny_builders)
    adapter = MotionAdapter.from_pretrained(adapter_dir, torch_dtype=torch_dtype)
    pipe = AnimateDiffPipeline.from_pretrained(base, motion_adapter=adapter, torch_dtype=torch_dtype)
    pipe.scheduler = motion_schedulers(DDIMScheduler.from_pretrained(base, subfolder="scheduler").config)[1]
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    return pipe


# The published SD1.5 scheduler config; the motion modules train and sample with MOTION_BETAS instead.
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1,
)


def build_tiny_sd15(out_dir: Path) -> None:
    """A tiny SD1.5-layout base (UNet2D, the shared fitted 2-D VAE, CLIP text) for the AnimateDiff twin."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tiny.clip_tokenizer(out_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=tiny.TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
    )
    pipeline = StableDiffusionPipeline(
        vae=tiny.fitted_image_vae(), text_encoder=tiny.clip_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out_dir, safe_serialization=True)


def build_tiny_motion_adapter(out_dir: Path) -> None:
    """A tiny MotionAdapter matching the tiny SD1.5 UNet's block widths."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import MotionAdapter

    torch.manual_seed(1)
    adapter = MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
        motion_num_attention_heads=4, motion_max_seq_length=32, use_motion_mid_block=True,
    )
    adapter.save_pretrained(out_dir, safe_serialization=True)


# SD1.5 (UNet 859,520,964 parameters, SD VAE, CLIP ViT-L/14 text) + guoyww/animatediff-motion-adapter-v1-5-2
# (diffusers' MotionAdapter defaults are its config: 8 heads, 32 positions, a mid block).
PUBLISHED_ARCHITECTURES = {
    "animatediff": published.Architecture(
        geometry=(4, 128, 128), twin="animatediff_tiny", source="stable-diffusion-v1-5 + guoyww/animatediff-motion-adapter-v1-5-2",
        components={"model.pretrained": {"unet": published.Part("UNet2DConditionModel", dict(cross_attention_dim=768,
                                                                                          sample_size=64)),
                                         "vae": published.SD_VAE, "text_encoder": published.CLIP_L_ONE_LAYER},
                    "model.motion_adapter": {"": published.Part("MotionAdapter")}},
        published_parameters={"unet": 859_520_964}),
}


FAMILY = "animatediff"
# A motion-module attention projection (diffusers' names) -> its name in the original AnimateDiff
# motion LoRA files (guoyww's trainer; ComfyUI-AnimateDiff-Evolved loads them): the motion module
# keeps its temporal_transformer level, attn1/attn2 are attention_blocks.0/1, to_out.0 is to_out.
_MOTION_BLOCK = r"((?:down|up)_blocks\.\d+|mid_block)\.motion_modules\.(\d+)\.transformer_blocks\.(\d+)"
_ORIGINAL_BLOCK = r"\1.motion_modules.\2.temporal_transformer.transformer_blocks.\3"
COMFYUI_NAMES = tuple(
    rule
    for attn, original in (("attn1", "attention_blocks.0"), ("attn2", "attention_blocks.1"))
    for rule in (
        (rf"{_MOTION_BLOCK}\.{attn}\.to_([qkv])", rf"{_ORIGINAL_BLOCK}.{original}.processor.to_\4"),
        (rf"{_MOTION_BLOCK}\.{attn}\.to_out\.0", rf"{_ORIGINAL_BLOCK}.{original}.processor.to_out"),
    )
)


@dataclass
class Config(ModelConfig, DDPMSettings, TextEncoderLoraSettings):
    """model.* for animatediff: the shared model schema plus the motion adapter."""

    family: str = FAMILY
    # The motion module checkpoint (hub id, local dir or tiny:motion_adapter) joined to the SD1.5 UNet.
    motion_adapter: str | None = None
    # finetune=full only: train the SD1.5 UNet's spatial layers too, not just the motion modules. For
    # pretraining a base from random weights (experiment=pretrain_tiny_animatediff); AnimateDiff's own
    # recipe keeps the image model frozen. final/ then also holds the image UNet (final/unet/).
    train_spatial_layers: bool = False


class AnimateDiffModel:
    family = FAMILY
    trainable_scope = "motion_modules"  # the SD1.5 UNet stays frozen, LoRA or full
    denoiser_subfolder = "unet"
    text_encoder_lora = None  # its settings once common.attach_text_encoder_lora adds one
    max_text_tokens = None  # CLIP's own 77 tokens

    @staticmethod
    def resolve(cfg, cache_dir: str | None) -> tuple[str, str]:
        base, adapter = common.resolve_all(cfg, [
            lambda: common.checkpoint_dir(cfg.pretrained, cache_dir, what="AnimateDiff base (SD1.5)",
                                          allow_patterns=SD_SUBFOLDERS, tiny_builders=SPEC.tiny_builders),
            lambda: common.checkpoint_dir(cfg.motion_adapter, cache_dir, key="model.motion_adapter",
                                          what="AnimateDiff motion adapter, e.g. guoyww/animatediff-motion-adapter-v1-5-2",
                                          tiny_builders=SPEC.tiny_builders),
        ])
        return base, adapter

    @staticmethod
    def validate(cfg, roots: tuple[str, str]) -> None:
        validate_ddpm_settings(cfg)
        validate_text_encoder_lora(cfg)
        if cfg.train_spatial_layers and cfg.finetune != "full":
            raise ConfigError("model.train_spatial_layers=true trains the whole UNet and needs model.finetune=full")
        base, adapter = roots
        multiple = common.spatial_multiple(base, "unet")
        why = "VAE downsampling x UNet downsampling"
        require_multiple("model.height", cfg.height, multiple, why)
        require_multiple("model.width", cfg.width, multiple, why)
        max_frames = json.loads((Path(adapter) / "config.json").read_text()).get("motion_max_seq_length", 32)
        if not 1 <= cfg.num_frames <= max_frames:
            raise ConfigError(f"model.num_frames={cfg.num_frames} must be in 1..{max_frames} "
                              f"(the motion adapter's motion_max_seq_length); e.g. 16")

    def __init__(self, cfg, roots: tuple[str, str]):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import (
            AutoencoderKL,
            DDIMScheduler,
            MotionAdapter,
            UNet2DConditionModel,
            UNetMotionModel,
        )
        from transformers import CLIPTextModel, CLIPTokenizer  # deferred: transformers, as above

        base, adapter_dir = roots
        self.cfg = cfg
        self.roots = roots
        self.tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
        unet2d = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        adapter = MotionAdapter.from_pretrained(adapter_dir)
        self.denoiser = UNetMotionModel.from_unet2d(unet2d, adapter)
        del unet2d, adapter
        sd_scheduler = DDIMScheduler.from_pretrained(base, subfolder="scheduler")
        self.train_scheduler, self.scheduler = motion_schedulers(sd_scheduler.config)
        self.objective = DDPMObjective.from_config(self.train_scheduler, cfg)
        common.freeze(self.text_encoder, self.vae, self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        if self.lora:
            add_lora(self.denoiser, self.lora)
            if "comfyui" in cfg.export_formats:
                comfyui.check_names(self.denoiser, COMFYUI_NAMES, "AnimateDiff's motion LoRA")
        elif cfg.train_spatial_layers:
            self.denoiser.requires_grad_(True)
            self.trainable_scope = None  # the whole UNet: spatial layers and motion modules
        else:
            self.denoiser.freeze_unet2d_params()  # leaves exactly the motion modules trainable
        common.attach_text_encoder_lora(self, cfg)
        self.denoiser.train()

    def trainable_parameters(self):
        return common.adapter_trainable_parameters(self)

    def parameter_counts(self):
        return common.adapter_parameter_counts(self)

    def place(self, device, weight_dtype, frozen_device=None):
        common.place_components([self.text_encoder, self.vae], self.denoiser, device, weight_dtype, frozen_device)

    def enable_memory_savers(self, **flags):
        common.adapter_enable_memory_savers(self, **flags)

    def encode_prompts(self, prompts):
        return common.encode_clip_prompts(self.tokenizer, self.text_encoder, prompts,
                                          trainable=self.text_encoder_lora is not None)

    @torch.no_grad()
    def encode_videos(self, videos):
        return self.encode_video_posteriors(videos)[0]

    @torch.no_grad()
    def encode_video_posteriors(self, videos):
        return common.image_vae_posteriors(self.vae, videos)

    def training_loss(self, latents, prompt_embeds, generators):
        draw = self.objective.draw(latents, generators)
        # UNetMotionModel runs the SD UNet per frame; it expects one text context per frame
        # (diffusers' AnimateDiff pipeline repeats the prompt embeddings the same way).
        per_frame_text = prompt_embeds.repeat_interleave(latents.shape[2], dim=0)
        prediction = self.denoiser(draw.noisy, draw.timesteps, encoder_hidden_states=per_frame_text,
                                   return_dict=False)[0]
        return self.objective.loss(prediction, draw)

    def pipeline(self):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import AnimateDiffPipeline

        # Given a UNetMotionModel the pipeline uses it as is; the adapter argument is then unused.
        pipe = AnimateDiffPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            unet=common.unwrap(self.denoiser), motion_adapter=None, scheduler=self.scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generation_kwargs(self) -> dict:
        return {"num_frames": self.cfg.num_frames, "height": self.cfg.height, "width": self.cfg.width}

    def stock_pipeline(self, lora_dir: str | None = None):
        base, adapter = self.roots
        return load_pipeline(base, lora_dir, motion_adapter=adapter)

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
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import AnimateDiffPipeline

        model = common.unwrap(self.denoiser)
        if self.lora:
            AnimateDiffPipeline.save_lora_weights(
                out_dir, unet_lora_layers=lora_state_dict(model), unet_lora_adapter_metadata=lora_metadata(self.lora),
                **common.text_encoder_lora_export(self),
            )
            if "comfyui" in self.cfg.export_formats:  # for ComfyUI-AnimateDiff-Evolved's motion LoRA loader
                comfyui.save_motion_lora(Path(out_dir) / comfyui.DIRECTORY / f"{self.cfg.name}_motion_lora.safetensors",
                                         lora_state_dict(model), COMFYUI_NAMES, alpha=self.lora.alpha)
        else:  # a MotionAdapter checkpoint: MotionAdapter.from_pretrained(out_dir / "motion_adapter")
            model.save_motion_modules(str(Path(out_dir) / "motion_adapter"), safe_serialization=True)
            if self.cfg.train_spatial_layers:  # and the image UNet: UNet2DConditionModel.from_pretrained(out_dir / "unet")
                self.spatial_unet().save_pretrained(str(Path(out_dir) / "unet"), safe_serialization=True)

    def spatial_unet(self):
        """The UNetMotionModel's spatial layers as the SD1.5 UNet2DConditionModel they came from: the
        motion model names them exactly as the 2-D UNet does, its motion modules are the adapter's."""
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(self.roots[0], subfolder="unet")
        state = common.unwrap(self.denoiser).state_dict()
        unet.load_state_dict({k: v for k, v in state.items() if "motion_modules" not in k})  # strict: all keys
        return unet


SPEC = FamilySpec(
    name=FAMILY, config=Config, adapter=AnimateDiffModel,
    checkpoint_keys=("pretrained", "motion_adapter"),  # resolve() returns (base, adapter)
    export_formats=("diffusers", "comfyui"),
    base_license="creativeml-openrail-m",  # the model card's license when the checkpoint's own card does not say
    supports_text_encoder_lora=True,
    tiny_builders={"sd15": build_tiny_sd15, "motion_adapter": build_tiny_motion_adapter},
    fitted_vaes={"image_vae": tiny.build_image_vae},  # the SD1.5 twin's
    published_architectures=PUBLISHED_ARCHITECTURES,
)
