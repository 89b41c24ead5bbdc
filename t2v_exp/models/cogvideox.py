"""CogVideoX: 3-D transformer over [B, F, C, H, W] latents, causal 3-D VAE, T5 text, v-prediction."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from ..config import ModelConfig
from ..errors import ConfigError, require_multiple
from . import common, published, tiny
from .lora import add_lora, lora_settings
from .objectives import DDPMObjective, DDPMSettings, validate_ddpm_settings
from .spec import FamilySpec
from .tiny_vae import fit_video_vae, shapes_clips

log = logging.getLogger(__name__)
SUBFOLDERS = ["transformer/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "model_index.json"]


def load_pipeline(pretrained: str, lora_dir: str | None = None, torch_dtype=torch.float32):
    """The stock CogVideoXPipeline from a hub id or local dir, with our exported LoRA when given."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import CogVideoXPipeline

    root = common.checkpoint_dir(pretrained, None, what="CogVideoX", allow_patterns=SUBFOLDERS,
                                 tiny_builders=SPEC.tiny_builders, tiny_version=SPEC.tiny_version)
    pipe = CogVideoXPipeline.from_pretrained(root, torch_dtype=torch_dtype)
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    return pipe


# The published CogVideoX-2B scheduler config (checked against the hub's scheduler_config.json).
COGVIDEOX_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
    set_alpha_to_one=True, snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing",
)


# CogVideoX 1.5 (and the 5B): SNR shift 1 instead of the 2B's 3, same v-prediction schedule otherwise.
COGVIDEOX15_SCHEDULER = {**COGVIDEOX_SCHEDULER, "snr_shift_scale": 1.0}


def tiny_vae():
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 16, 16),
        down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4, sample_height=32, sample_width=32,
    )


def _fit_to_shape_clips(vae) -> dict:
    return fit_video_vae(vae, shapes_clips())


# The twins' 3-D VAE fitted to shapes clips: a random one decodes everything to 8x8 block noise.
build_tiny_vae = tiny.fitted_vae_builder(tiny_vae, _fit_to_shape_clips)


def fitted_tiny_vae():
    """The fitted 3-D VAE, built once per cache and shared by the 2B and 1.5 twins."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import AutoencoderKLCogVideoX

    return tiny.fitted_shared_vae("cogvideox_vae", AutoencoderKLCogVideoX, tiny_vae, build_tiny_vae,
                                  version=SPEC.tiny_version)


def build_tiny(out_dir: Path, *, version_15: bool = False) -> None:
    """The tiny CogVideoX twin: same classes and scheduler, a T5 tokenizer trained locally, narrow widths.

    ``version_15``: the CogVideoX 1.5 layout instead of the 2B's: patch_size_t=2 (two latent
    frames per token), rotary position embeddings, no patch bias, as the 1.5-5B config has.
    """
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import (
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel  # deferred: transformers (~0.4 s), as diffusers above

    tokenizer = tiny.t5_tokenizer(out_dir)
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=tiny.TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )
    )
    vae = fitted_tiny_vae()
    layout = dict(patch_size_t=2, use_rotary_positional_embeddings=True, patch_bias=False) if version_15 else {}
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16, time_embed_dim=32,
        text_embed_dim=tiny.TEXT_DIM, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=tiny.T5_MAX_TOKENS, **layout,
    )
    pipeline = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(**(COGVIDEOX15_SCHEDULER if version_15 else COGVIDEOX_SCHEDULER)),
    )
    pipeline.save_pretrained(out_dir, safe_serialization=True)


def build_tiny_15(out_dir: Path) -> None:
    build_tiny(out_dir, version_15=True)


_5B = dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
# THUDM's transformer/ and vae/ config.json; denoiser counts from the released safetensors sizes.
PUBLISHED_ARCHITECTURES = {
    "cogvideox": published.Architecture(
        geometry=(9, 64, 64), temporal_compression=4, twin="cogvideox_tiny", source="THUDM/CogVideoX-2b (diffusers defaults are its config)",
        components={"model.pretrained": {"transformer": published.Part("CogVideoXTransformer3DModel"),
                                         "vae": published.Part("AutoencoderKLCogVideoX"),
                                         "text_encoder": published.T5_XXL_ONE_LAYER}},
        published_parameters={"transformer": 1_690_000_000}),
    "cogvideox5b": published.Architecture(
        geometry=(9, 64, 64), temporal_compression=4, twin="cogvideox15_tiny", source="THUDM/CogVideoX-5b",
        components={"model.pretrained": {"transformer": published.Part("CogVideoXTransformer3DModel", _5B),
                                         "vae": published.Part("AutoencoderKLCogVideoX", dict(scaling_factor=0.7)),
                                         "text_encoder": published.T5_XXL_ONE_LAYER}},
        published_parameters={"transformer": 5_570_000_000}),
    "cogvideox15": published.Architecture(
        geometry=(9, 64, 64), temporal_compression=4, twin="cogvideox15_tiny", source="THUDM/CogVideoX1.5-5B",
        components={"model.pretrained": {
            "transformer": published.Part("CogVideoXTransformer3DModel", dict(
                _5B, patch_size_t=2, patch_bias=False, sample_frames=81, sample_height=300, sample_width=300,
                max_text_seq_length=224)),
            "vae": published.Part("AutoencoderKLCogVideoX", dict(scaling_factor=0.7, invert_scale_latents=True)),
            "text_encoder": published.T5_XXL_ONE_LAYER}},
        published_parameters={"transformer": 5_570_000_000}),
}


FAMILY = "cogvideox"


@dataclass
class Config(ModelConfig, DDPMSettings):
    """model.* for cogvideox: the shared model schema."""

    family: str = FAMILY
    # dtype the weights are read in (models/common.py LOAD_DTYPES): the 5B's released weights are bf16
    load_dtype: str = "float32"


# The 5B-class transformers (CogVideoX-5B, CogVideoX1.5-5B) have 48 heads of 64; the 2B has 30.
BF16_ONLY_HEADS = 48


def check_precision(cfg, root: str, mixed_precision: str) -> None:
    """CogVideoX-5B and 1.5-5B were trained in bf16 and overflow in fp16 (THUDM recommends fp16
    only for the 2B); told apart from the 2B by their transformer's width, not by a name."""
    if mixed_precision != "fp16":
        return
    heads = int(json.loads((Path(root) / "transformer" / "config.json").read_text())["num_attention_heads"])
    if heads >= BF16_ONLY_HEADS:
        raise ConfigError(
            f"model.pretrained={cfg.pretrained} has the CogVideoX-5B transformer ({heads} attention heads), "
            f"whose bf16 weights overflow in fp16: use precision=bf16 (or precision=fp32); fp16 suits "
            f"the 2B (model=cogvideox)")


class CogVideoXModel:
    family = FAMILY
    trainable_scope = None  # every trainable parameter belongs to the transformer
    denoiser_subfolder = "transformer"
    text_encoder_lora = None  # T5: no text-encoder LoRA

    @staticmethod
    def resolve(cfg, cache_dir: str | None) -> str:
        (root,) = common.resolve_all(cfg, [lambda: common.checkpoint_dir(
            cfg.pretrained, cache_dir, what="CogVideoX", allow_patterns=SUBFOLDERS, tiny_builders=SPEC.tiny_builders,
            tiny_version=SPEC.tiny_version)])
        return root

    @property
    def roots(self) -> str:
        return self.root

    @staticmethod
    def validate(cfg, root: str) -> None:
        validate_ddpm_settings(cfg)
        common.validate_load_dtype(cfg)
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
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
        from transformers import AutoTokenizer, T5EncoderModel  # deferred: transformers, as above

        self.cfg = cfg
        self.root = root
        self.tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        dtype = common.LOAD_DTYPES[cfg.load_dtype]
        self.text_encoder = T5EncoderModel.from_pretrained(root, subfolder="text_encoder", torch_dtype=dtype)
        self.vae = AutoencoderKLCogVideoX.from_pretrained(root, subfolder="vae", torch_dtype=dtype)
        self.denoiser = CogVideoXTransformer3DModel.from_pretrained(root, subfolder="transformer", torch_dtype=dtype)
        # The published scheduler (v-prediction, zero-terminal-SNR, SNR shift) is also the
        # training noise schedule, as in the reference fine-tuning code.
        self.scheduler = CogVideoXDDIMScheduler.from_pretrained(root, subfolder="scheduler")
        self.objective = DDPMObjective.from_config(self.scheduler, cfg)  # v-prediction, per the published scheduler
        common.freeze(self.text_encoder, self.vae, self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        if self.lora:
            add_lora(self.denoiser, self.lora)
        else:
            self.denoiser.requires_grad_(True)
        self.denoiser.train()
        self.max_text_tokens = int(self.denoiser.config.max_text_seq_length)
        self.uses_rotary = bool(self.denoiser.config.use_rotary_positional_embeddings)
        self.patch_size_t = self.denoiser.config.patch_size_t  # None on 1.0 models, 2 on CogVideoX 1.5
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
        tokens = common.tokenize_prompts(self.tokenizer, prompts, self.max_text_tokens)
        return self.text_encoder(tokens.input_ids.to(common.first_parameter(self.text_encoder).device))[0]

    @torch.no_grad()
    def encode_videos(self, videos):
        return self.encode_video_posteriors(videos)[0]

    @torch.no_grad()
    def encode_video_posteriors(self, videos):
        # VAE wants [B, C, F, H, W]; the transformer wants [B, F, C, H, W].
        weight = common.first_parameter(self.vae)
        pixels = videos.permute(0, 2, 1, 3, 4).to(device=weight.device, dtype=weight.dtype)
        scaling = self.vae.config.scaling_factor
        return common.posterior_in_model_space(self.vae.encode(pixels).latent_dist,
                                               lambda z: (z * scaling).permute(0, 2, 1, 3, 4).contiguous())

    def rotary_embeddings(self, latents: torch.Tensor):
        """Only the 5B (and 1.5) models use rotary position embeddings; the 2B does not."""
        if not self.uses_rotary:
            return None
        config = common.unwrap(self.denoiser).config
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import CogVideoXPipeline

        # Reuse the pipeline's own grid computation; it reads only these two attributes.
        shim = SimpleNamespace(vae_scale_factor_spatial=self.vae_scale_spatial, transformer=SimpleNamespace(config=config))
        _, frames, _, h, w = latents.shape
        return CogVideoXPipeline._prepare_rotary_positional_embeddings(
            shim, h * self.vae_scale_spatial, w * self.vae_scale_spatial, frames, latents.device
        )

    def pad_latent_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """CogVideoX 1.5 patches time in pairs: an odd latent frame count (49, 81 and 161 frames give
        13, 21, 41) is padded at the front with copies of the first latent frame, as the reference
        fine-tuning code does; the pipeline pads at the front too and drops those frames after sampling."""
        if not self.patch_size_t:
            return latents
        missing = -latents.shape[1] % self.patch_size_t
        if not missing:
            return latents
        return torch.cat([latents[:, :1].expand(-1, missing, -1, -1, -1), latents], dim=1)

    def training_loss(self, latents, prompt_embeds, generators):
        latents = self.pad_latent_frames(latents)
        draw = self.objective.draw(latents, generators)
        prediction = self.denoiser(
            hidden_states=draw.noisy, encoder_hidden_states=prompt_embeds, timestep=draw.timesteps,
            image_rotary_emb=self.rotary_embeddings(latents), return_dict=False,
        )[0]
        # MSE on v equals the reference's x0-MSE weighted by 1 / (1 - alpha_bar_t).
        return self.objective.loss(prediction, draw)

    def pipeline(self):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import CogVideoXPipeline

        pipe = CogVideoXPipeline(
            tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae,
            transformer=common.unwrap(self.denoiser), scheduler=self.scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generation_kwargs(self) -> dict:
        # The pipeline's default text length is 226; the twin's tokenizer and transformer take fewer.
        return {"num_frames": self.cfg.num_frames, "height": self.cfg.height, "width": self.cfg.width,
                "max_sequence_length": self.max_text_tokens}

    def stock_pipeline(self, lora_dir: str | None = None):
        # in the dtype the weights were read in: a 5B read as bf16 is 11 GB, as fp32 22
        return load_pipeline(self.root, lora_dir, torch_dtype=common.LOAD_DTYPES[self.cfg.load_dtype])

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
        from diffusers import CogVideoXPipeline

        common.export_transformer(CogVideoXPipeline, common.unwrap(self.denoiser), self.lora, Path(out_dir),
                                  Path(out_dir) / "transformer")


SPEC = FamilySpec(
    name=FAMILY, config=Config, adapter=CogVideoXModel,
    base_license="apache-2.0",  # the model card's license when the checkpoint's own card does not say
    check_precision=check_precision,
    tiny_builders={"cogvideox": build_tiny, "cogvideox15": build_tiny_15},
    tiny_version="2",  # 2: 32-token T5 tokenizer (every shapes caption whole), fitted 3-D VAE
    fitted_vaes={"cogvideox_vae": build_tiny_vae},
    published_architectures=PUBLISHED_ARCHITECTURES,
)
