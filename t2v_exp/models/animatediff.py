"""AnimateDiff: a frozen SD1.5 UNet + MotionAdapter -> UNetMotionModel; only motion modules train."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import ConfigError, require_multiple
from . import common
from .lora import add_lora, lora_metadata, lora_settings, lora_state_dict

log = logging.getLogger(__name__)
SD_SUBFOLDERS = ["unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "model_index.json"]
# The original motion-module training used linear betas, not SD's scaled_linear.
MOTION_BETAS = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)


class AnimateDiffModel:
    family = "animatediff"
    denoiser_subfolder = "unet"

    @staticmethod
    def resolve(cfg, cache_dir: str | None) -> tuple[str, str]:
        base = common.checkpoint_dir(cfg.pretrained, cache_dir, what="AnimateDiff base (SD1.5)",
                                     allow_patterns=SD_SUBFOLDERS)
        if not cfg.motion_adapter:
            raise ConfigError("model.motion_adapter is required for AnimateDiff, e.g. "
                              "guoyww/animatediff-motion-adapter-v1-5-2")
        adapter = common.checkpoint_dir(cfg.motion_adapter, cache_dir, what="AnimateDiff motion adapter")
        return base, adapter

    @staticmethod
    def validate(cfg, roots: tuple[str, str]) -> None:
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
        from diffusers import (
            AutoencoderKL,
            DDIMScheduler,
            DDPMScheduler,
            MotionAdapter,
            UNet2DConditionModel,
            UNetMotionModel,
        )
        from transformers import CLIPTextModel, CLIPTokenizer

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
        self.train_scheduler = DDPMScheduler.from_config(sd_scheduler.config, prediction_type="epsilon", **MOTION_BETAS)
        self.scheduler = DDIMScheduler.from_config(
            sd_scheduler.config, clip_sample=False, timestep_spacing="linspace", steps_offset=1, **MOTION_BETAS
        )
        common.freeze(self.text_encoder, self.vae, self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        if self.lora:
            add_lora(self.denoiser, self.lora)
        else:
            self.denoiser.freeze_unet2d_params()  # leaves exactly the motion modules trainable
        self.denoiser.train()

    def trainable_parameters(self):
        return common.trainable_params(self.denoiser)

    def parameter_counts(self):
        return common.adapter_parameter_counts(self)

    def place(self, device, weight_dtype, frozen_device=None):
        common.place_components([self.text_encoder, self.vae], self.denoiser, device, weight_dtype, frozen_device)

    def enable_memory_savers(self, **flags):
        common.adapter_enable_memory_savers(self, **flags)

    @torch.no_grad()
    def encode_prompts(self, prompts):
        return common.encode_clip_prompts(self.tokenizer, self.text_encoder, prompts)

    @torch.no_grad()
    def encode_videos(self, videos):
        return common.encode_frames_with_image_vae(self.vae, videos)

    def training_loss(self, latents, prompt_embeds, generators):
        steps, noise, noisy = common.noised_latents(self.train_scheduler, latents, generators)
        # UNetMotionModel runs the SD UNet per frame; it expects one text context per frame
        # (diffusers' AnimateDiff pipeline repeats the prompt embeddings the same way).
        per_frame_text = prompt_embeds.repeat_interleave(latents.shape[2], dim=0)
        prediction = self.denoiser(noisy, steps, encoder_hidden_states=per_frame_text, return_dict=False)[0]
        return common.mse(prediction, common.prediction_target(self.train_scheduler, latents, noise, steps))

    def pipeline(self):
        from diffusers import AnimateDiffPipeline

        # Given a UNetMotionModel the pipeline uses it as is; the adapter argument is then unused.
        pipe = AnimateDiffPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            unet=common.unwrap(self.denoiser), motion_adapter=None, scheduler=self.scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def generate(self, prompts, *, num_inference_steps, guidance_scale, generator):
        out = self.pipeline()(
            prompt=prompts, num_frames=self.cfg.num_frames, height=self.cfg.height, width=self.cfg.width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
            output_type="pt",
        )
        return common.to_unit_range(out.frames)

    def trainable_state_dict(self):
        return common.adapter_trainable_state_dict(self)

    def load_trainable_state_dict(self, state_dict):
        common.adapter_load_trainable_state_dict(self, state_dict)

    def export(self, out_dir: Path):
        from diffusers import AnimateDiffPipeline

        model = common.unwrap(self.denoiser)
        if self.lora:
            AnimateDiffPipeline.save_lora_weights(
                out_dir, unet_lora_layers=lora_state_dict(model), unet_lora_adapter_metadata=lora_metadata(self.lora)
            )
        else:  # a MotionAdapter checkpoint: MotionAdapter.from_pretrained(out_dir / "motion_adapter")
            model.save_motion_modules(str(Path(out_dir) / "motion_adapter"), safe_serialization=True)
