"""ModelScope text-to-video: UNet3D denoiser, frame-wise 2-D VAE, CLIP text tower, epsilon target."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import require_multiple
from . import common, published, tiny
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
SUBFOLDERS = ["unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "model_index.json"]


def text_to_video_pipeline_class():
    """``TextToVideoSDPipeline`` lives in diffusers' deprecated pipelines and may disappear."""
    try:
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import TextToVideoSDPipeline
    except ImportError as exc:  # pragma: no cover - depends on the installed diffusers
        raise ImportError(
            "This diffusers release no longer ships TextToVideoSDPipeline (ModelScope). "
            "Install a release that does, e.g. pip install 'diffusers<0.50'."
        ) from exc
    return TextToVideoSDPipeline


def unet3d_checkpoint_classes() -> tuple[type, ...]:
    """The UNet3D's repeated blocks: spatial resnets and transformers, temporal convs and transformers."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
    from diffusers.models.transformers.transformer_2d import Transformer2DModel  # deferred: as above
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel  # deferred: ditto

    return ResnetBlock2D, TemporalConvLayer, Transformer2DModel, TransformerTemporalModel


def lora_unet_class():
    """UNet3DConditionModel with diffusers' PEFT mixin.

    The stock UNet3D lacks ``add_adapter``/``load_lora_adapter``, so neither training with
    diffusers-style LoRA nor ``TextToVideoSDPipeline.load_lora_weights`` would work on it.
    Mixing the adapter API in changes no weights or config.
    """
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import UNet3DConditionModel
    from diffusers.loaders import PeftAdapterMixin  # deferred: diffusers, as above

    class UNet3DConditionModelWithLora(UNet3DConditionModel, PeftAdapterMixin):
        pass

    return UNet3DConditionModelWithLora


def load_pipeline(pretrained: str, lora_dir: str | None = None, torch_dtype=torch.float32):
    """A ModelScope pipeline that can take our exported LoRA with ``load_lora_weights``."""
    root = common.checkpoint_dir(pretrained, None, what="ModelScope", allow_patterns=SUBFOLDERS,
                                 tiny_builders=SPEC.tiny_builders)  # tiny:modelscope works here too
    unet = lora_unet_class().from_pretrained(root, subfolder="unet", torch_dtype=torch_dtype)
    pipe = text_to_video_pipeline_class().from_pretrained(root, unet=unet, torch_dtype=torch_dtype)
    if lora_dir:
        pipe.load_lora_weights(lora_dir)
    return pipe


# The published scheduler config (checked against the hub's scheduler_config.json).
MODELSCOPE_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1,
)


def build_tiny(out_dir: Path) -> None:
    """The tiny ModelScope twin: same classes and scheduler, narrow widths, the shared fitted 2-D VAE."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import DDIMScheduler, UNet3DConditionModel

    tokenizer = tiny.clip_tokenizer(out_dir)
    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=tiny.TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
    )
    pipeline = text_to_video_pipeline_class()(
        vae=tiny.fitted_image_vae(), text_encoder=tiny.clip_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**MODELSCOPE_SCHEDULER),
    )
    pipeline.save_pretrained(out_dir, safe_serialization=True)


# ali-vilab/text-to-video-ms-1.7b: UNet3D (diffusers defaults are its config), SD VAE, OpenCLIP ViT-H text.
PUBLISHED_ARCHITECTURES = {
    "modelscope": published.Architecture(
        geometry=(4, 128, 128), twin="modelscope_tiny", source="ali-vilab/text-to-video-ms-1.7b",
        components={"model.pretrained": {"unet": published.Part("UNet3DConditionModel"), "vae": published.SD_VAE,
                                         "text_encoder": published.OPEN_CLIP_H_ONE_LAYER}},
        published_parameters={"unet": 1_410_000_000}),
}


FAMILY = "modelscope"


@dataclass
class Config(ModelConfig, DDPMSettings, TextEncoderLoraSettings):
    """model.* for modelscope: the shared model schema."""

    family: str = FAMILY


class ModelScopeModel:
    family = FAMILY
    trainable_scope = None  # every trainable parameter belongs to the UNet3D
    denoiser_subfolder = "unet"
    text_encoder_lora = None  # its settings once common.attach_text_encoder_lora adds one
    max_text_tokens = None  # CLIP's own 77 tokens

    @property
    def roots(self) -> str:
        return self.root

    @staticmethod
    def resolve(cfg, cache_dir: str | None) -> str:
        (root,) = common.resolve_all(cfg, [lambda: common.checkpoint_dir(
            cfg.pretrained, cache_dir, what="ModelScope", allow_patterns=SUBFOLDERS, tiny_builders=SPEC.tiny_builders)])
        return root

    @staticmethod
    def validate(cfg, root: str) -> None:
        validate_ddpm_settings(cfg)
        validate_text_encoder_lora(cfg)
        multiple = common.spatial_multiple(root, "unet")
        why = "VAE downsampling x UNet downsampling"
        require_multiple("model.height", cfg.height, multiple, why)
        require_multiple("model.width", cfg.width, multiple, why)

    def __init__(self, cfg, root: str):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet3DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer  # deferred: transformers, as above

        self.cfg = cfg
        self.root = root
        self.tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
        self.vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
        unet_class = lora_unet_class() if cfg.finetune == "lora" else UNet3DConditionModel
        self.denoiser = unet_class.from_pretrained(root, subfolder="unet")
        self.scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler")
        # Same betas and prediction type as the published scheduler; DDPM adds noise identically.
        self.train_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        self.objective = DDPMObjective.from_config(self.train_scheduler, cfg)  # epsilon, per the published scheduler
        common.freeze(self.text_encoder, self.vae, self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        if self.lora:
            add_lora(self.denoiser, self.lora)
        else:
            self.denoiser.requires_grad_(True)
        common.attach_text_encoder_lora(self, cfg)
        self.denoiser.train()

    # -- protocol -----------------------------------------------------------------------
    def trainable_parameters(self):
        return common.adapter_trainable_parameters(self)

    def parameter_counts(self):
        return common.adapter_parameter_counts(self)

    def place(self, device, weight_dtype, frozen_device=None):
        common.place_components([self.text_encoder, self.vae], self.denoiser, device, weight_dtype, frozen_device)

    def enable_memory_savers(self, **flags):
        # diffusers' UNet3DConditionModel has no gradient checkpointing: checkpoint its blocks ourselves.
        common.adapter_enable_memory_savers(self, **flags, checkpoint_classes=unet3d_checkpoint_classes())

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
        prediction = self.denoiser(draw.noisy, draw.timesteps, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        return self.objective.loss(prediction, draw)

    def pipeline(self):
        pipe = text_to_video_pipeline_class()(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            unet=common.unwrap(self.denoiser), scheduler=self.scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generation_kwargs(self) -> dict:
        return {"num_frames": self.cfg.num_frames, "height": self.cfg.height, "width": self.cfg.width}

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
        unet = common.unwrap(self.denoiser)
        if self.lora:
            text_to_video_pipeline_class().save_lora_weights(
                out_dir, unet_lora_layers=lora_state_dict(unet), unet_lora_adapter_metadata=lora_metadata(self.lora),
                **common.text_encoder_lora_export(self),
            )
        else:
            unet.save_pretrained(Path(out_dir) / "unet", safe_serialization=True)


SPEC = FamilySpec(
    name=FAMILY, config=Config, adapter=ModelScopeModel,
    base_license="cc-by-nc-4.0",  # the model card's license when the checkpoint's own card does not say
    supports_text_encoder_lora=True,
    tiny_builders={"modelscope": build_tiny},
    fitted_vaes={"image_vae": tiny.build_image_vae},
    published_architectures=PUBLISHED_ARCHITECTURES,
)
