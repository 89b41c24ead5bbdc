"""CogVideoX: 3-D transformer over [B, F, C, H, W] latents, causal 3-D VAE, T5 text, v-prediction."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import ConfigError, require_multiple
from . import common
from .lora import add_lora, lora_metadata, lora_settings, lora_state_dict

log = logging.getLogger(__name__)
SUBFOLDERS = ["transformer/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "model_index.json"]


class CogVideoXModel:
    family = "cogvideox"
    denoiser_subfolder = "transformer"

    @staticmethod
    def resolve(cfg, cache_dir: str | None) -> str:
        return common.checkpoint_dir(cfg.pretrained, cache_dir, what="CogVideoX", allow_patterns=SUBFOLDERS)

    @staticmethod
    def validate(cfg, root: str) -> None:
        vae_cfg = json.loads((Path(root) / "vae" / "config.json").read_text())
        t = int(vae_cfg.get("temporal_compression_ratio", 4))
        if cfg.num_frames < 1 or (cfg.num_frames - 1) % t:
            lower = max(1, (cfg.num_frames - 1) // t * t + 1)
            raise ConfigError(
                f"model.num_frames={cfg.num_frames} must be {t}k+1 (the CogVideoX VAE compresses time {t}x, "
                f"keeping the first frame); nearest valid: {lower} or {lower + t}"
            )
        multiple = common.spatial_multiple(root, "transformer")
        why = "VAE 8x downsampling x transformer patch size"
        require_multiple("model.height", cfg.height, multiple, why)
        require_multiple("model.width", cfg.width, multiple, why)

    def __init__(self, cfg, root: str):
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
        from transformers import AutoTokenizer, T5EncoderModel

        self.cfg = cfg
        self.root = root
        self.tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        self.text_encoder = T5EncoderModel.from_pretrained(root, subfolder="text_encoder")
        self.vae = AutoencoderKLCogVideoX.from_pretrained(root, subfolder="vae")
        self.denoiser = CogVideoXTransformer3DModel.from_pretrained(root, subfolder="transformer")
        # The published scheduler (v-prediction, zero-terminal-SNR, SNR shift) is also the
        # training noise schedule, as in the reference fine-tuning code.
        self.scheduler = CogVideoXDDIMScheduler.from_pretrained(root, subfolder="scheduler")
        common.freeze(self.text_encoder, self.vae, self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        if self.lora:
            add_lora(self.denoiser, self.lora)
        else:
            self.denoiser.requires_grad_(True)
        self.denoiser.train()
        self.max_text_tokens = int(self.denoiser.config.max_text_seq_length)
        self.uses_rotary = bool(self.denoiser.config.use_rotary_positional_embeddings)
        self.vae_scale_spatial = 2 ** (len(self.vae.config.block_out_channels) - 1)

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
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_text_tokens, truncation=True,
            add_special_tokens=True, return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(common.first_parameter(self.text_encoder).device))[0]

    @torch.no_grad()
    def encode_videos(self, videos):
        # VAE wants [B, C, F, H, W]; the transformer wants [B, F, C, H, W].
        weight = common.first_parameter(self.vae)
        pixels = videos.permute(0, 2, 1, 3, 4).to(device=weight.device, dtype=weight.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor
        return latents.permute(0, 2, 1, 3, 4).contiguous()

    def rotary_embeddings(self, latents: torch.Tensor):
        """Only the 5B (and 1.5) models use rotary position embeddings; the 2B does not."""
        if not self.uses_rotary:
            return None
        config = common.unwrap(self.denoiser).config
        from diffusers import CogVideoXPipeline

        # Reuse the pipeline's own grid computation; it reads only these two attributes.
        shim = SimpleNamespace(vae_scale_factor_spatial=self.vae_scale_spatial, transformer=SimpleNamespace(config=config))
        _, frames, _, h, w = latents.shape
        return CogVideoXPipeline._prepare_rotary_positional_embeddings(
            shim, h * self.vae_scale_spatial, w * self.vae_scale_spatial, frames, latents.device
        )

    def training_loss(self, latents, prompt_embeds, generators):
        steps, noise, noisy = common.noised_latents(self.scheduler, latents, generators)
        prediction = self.denoiser(
            hidden_states=noisy, encoder_hidden_states=prompt_embeds, timestep=steps,
            image_rotary_emb=self.rotary_embeddings(latents), return_dict=False,
        )[0]
        # MSE on v equals the reference's x0-MSE weighted by 1 / (1 - alpha_bar_t).
        return common.mse(prediction, common.prediction_target(self.scheduler, latents, noise, steps))

    def pipeline(self):
        from diffusers import CogVideoXPipeline

        pipe = CogVideoXPipeline(
            tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae,
            transformer=common.unwrap(self.denoiser), scheduler=self.scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def generate(self, prompts, *, num_inference_steps, guidance_scale, generator):
        out = self.pipeline()(
            prompt=prompts, num_frames=self.cfg.num_frames, height=self.cfg.height, width=self.cfg.width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
            max_sequence_length=self.max_text_tokens, output_type="pt",
        )
        return common.to_unit_range(out.frames)

    def trainable_state_dict(self):
        return common.adapter_trainable_state_dict(self)

    def load_trainable_state_dict(self, state_dict):
        common.adapter_load_trainable_state_dict(self, state_dict)

    def export(self, out_dir: Path):
        from diffusers import CogVideoXPipeline

        model = common.unwrap(self.denoiser)
        if self.lora:
            CogVideoXPipeline.save_lora_weights(
                out_dir, transformer_lora_layers=lora_state_dict(model),
                transformer_lora_adapter_metadata=lora_metadata(self.lora),
            )
        else:
            model.save_pretrained(Path(out_dir) / "transformer", safe_serialization=True)
