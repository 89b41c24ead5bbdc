"""LTX-Video: a 3-D transformer over packed [B, tokens, C] latents, a 32x/8x causal video VAE whose
latents are normalised per channel, T5 text with an attention mask, rectified-flow (flow matching).

What differs from the other families, and where the choices come from:

- **Latent layout.** ``encode_videos`` returns plain normalised latents ``[B, C, F, H, W]`` (what the
  latent cache stores); ``training_loss`` packs them into the transformer's token sequence with the
  pipeline's own ``_pack_latents`` and passes the latent grid (frames, height, width) for the rotary
  embeddings, exactly as ``LTXPipeline.__call__`` does.
- **Normalisation.** ``(z - latents_mean) * scaling_factor / latents_std`` with the VAE's own buffers
  (``LTXPipeline._normalize_latents``), the inverse of what the pipeline applies before decoding.
- **Timesteps.** Lightricks' LTX-Video-Trainer samples sigma from a logit-normal whose mean is the
  resolution-dependent ``mu`` of ``calculate_shift`` (its "shifted_logit_normal"). That equals a
  logit-normal(0, std) sigma shifted by ``exp(mu)`` -- the same shift the scheduler applies at
  inference for this token count -- so ``model.shift: null`` (default) trains with the shift the
  checkpoint's scheduler uses at inference (for Lightricks/LTX-Video's dynamic-shifting scheduler
  exactly Lightricks' sampler; a scheduler without dynamic shifting gives its static shift); a number
  fixes the shift (finetrainers trains with 1.0). I2V first-frame conditioning is not done (T2V only).
  Target ``noise - x0``, plain MSE unless ``model.loss_weighting`` says otherwise.
- **Prompt mask.** The engine hands ``training_loss`` only the embeddings (and the latent cache stores
  only them), so ``encode_prompts`` zeroes the padded positions and ``training_loss`` recovers the
  mask from the non-zero rows. Masked keys get a -10000 bias in the transformer's cross-attention,
  so their values never matter: this is the pipeline's computation, not an approximation of it.
- **Geometry.** Frames ``t*k + 1`` (t: the VAE's temporal compression, 8 for the real model),
  height/width multiples of the VAE's spatial compression x patch size and of 32 (LTXPipeline's
  ``check_inputs``); read from the JSON configs before any weights load.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ConfigError, require_multiple
from . import common, published, tiny
from .lora import add_lora, lora_settings
from .objectives import FLOW_SAMPLINGS, FLOW_WEIGHTINGS, FlowMatchingObjective
from .spec import FamilySpec
from .tiny import TEXT_DIM, t5_tokenizer
from .tiny_vae import fit_video_vae, shapes_clips

log = logging.getLogger(__name__)

FAMILY = "ltx"
SUBFOLDERS = ["transformer/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "model_index.json"]
#: LTXPipeline.check_inputs rejects any height/width that is not a multiple of 32, whatever the VAE.
PIPELINE_SPATIAL_MULTIPLE = 32
#: The published scheduler of Lightricks/LTX-Video 0.9.0/0.9.1 (diffusers' conversion script):
#: resolution-dependent shift mu from 0.95 at 1024 tokens to 2.05 at 4096, stretched to end at 0.1.
LTX_SCHEDULER = dict(
    use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
    max_image_seq_len=4096, shift_terminal=0.1,
)


@dataclass
class Config(ModelConfig):
    """model.* for ltx: the shared model schema plus LTX-Video's flow-matching and decoding settings."""

    family: str = FAMILY
    max_sequence_length: int = 128  # T5 tokens (LTX-Video was trained with 128)
    timestep_sampling: str = "logit_normal"  # uniform | logit_normal (both LTX training references)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # null: the scheduler's resolution-dependent inference shift for the clip's token count (Lightricks'
    # trainer); a number: that fixed shift for every resolution (finetrainers uses 1.0).
    shift: float | None = None
    loss_weighting: str = "none"  # none | sigma_sqrt | cosmap
    # The timestep-aware VAE (0.9.1+) decodes from slightly re-noised latents; ignored by 0.9.0's VAE.
    decode_timestep: float = 0.0
    decode_noise_scale: float | None = None


# -- geometry, from the JSON configs only ------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """What the checkpoint's configs imply for the clip shape."""

    spatial: int  # VAE spatial compression
    temporal: int  # VAE temporal compression
    patch: int  # transformer spatial patch
    patch_t: int  # transformer temporal patch

    @property
    def side_multiple(self) -> int:
        return math.lcm(self.spatial * self.patch, PIPELINE_SPATIAL_MULTIPLE)

    def frames_ok(self, frames: int) -> bool:
        return frames >= 1 and (frames - 1) % self.temporal == 0 and self.latent_frames(frames) % self.patch_t == 0

    def latent_frames(self, frames: int) -> int:
        # The causal VAE keeps the first frame and compresses the rest `temporal`x.
        return (frames - 1) // self.temporal + 1

    def nearest_frames(self, frames: int) -> list[int]:
        below = next((f for f in range(frames, 0, -1) if self.frames_ok(f)), None)
        above = next(f for f in itertools.count(max(frames, 1)) if self.frames_ok(f))
        return [f for f in (below, above) if f is not None and f != frames]


def read_json(root: str, relative: str) -> dict:
    path = Path(root) / relative
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model.pretrained={root} is not an LTX-Video checkpoint in diffusers layout: "
                          f"{path} is missing (expected model_index.json with transformer/, vae/, ...)") from None


def checkpoint_geometry(root: str) -> Geometry:
    """The compression ratios as AutoencoderKLLTXVideo derives them: explicit in the config (0.9.5+),
    else patch size x 2^(number of down-scaling blocks)."""
    vae = read_json(root, "vae/config.json")
    transformer = read_json(root, "transformer/config.json")
    scalings = 2 ** sum(bool(s) for s in vae.get("spatio_temporal_scaling", (True, True, True, False)))
    return Geometry(
        spatial=int(vae.get("spatial_compression_ratio") or vae.get("patch_size", 4) * scalings),
        temporal=int(vae.get("temporal_compression_ratio") or vae.get("patch_size_t", 1) * scalings),
        patch=int(transformer.get("patch_size", 1)),
        patch_t=int(transformer.get("patch_size_t", 1)),
    )


def validate_geometry(cfg, geometry: Geometry) -> None:
    if not geometry.frames_ok(cfg.num_frames):
        nearest = " or ".join(str(f) for f in geometry.nearest_frames(cfg.num_frames))
        raise ConfigError(
            f"model.num_frames={cfg.num_frames} must be {geometry.temporal}k+1 (the LTX-Video VAE compresses "
            f"time {geometry.temporal}x, keeping the first frame); nearest valid: {nearest}"
        )
    why = (f"the VAE compresses space {geometry.spatial}x, the transformer patch is {geometry.patch}, and "
           f"LTXPipeline takes multiples of {PIPELINE_SPATIAL_MULTIPLE}")
    require_multiple("model.height", cfg.height, geometry.side_multiple, why)
    require_multiple("model.width", cfg.width, geometry.side_multiple, why)


def validate_settings(cfg) -> None:
    """LTX's own keys, checked before any load so a typo fails in seconds."""
    if cfg.max_sequence_length < 1:
        raise ConfigError(f"model.max_sequence_length={cfg.max_sequence_length} must be >= 1 (T5 tokens), "
                          f"e.g. model.max_sequence_length=128")
    if cfg.timestep_sampling not in FLOW_SAMPLINGS:
        raise ConfigError(f"model.timestep_sampling={cfg.timestep_sampling} must be one of {', '.join(FLOW_SAMPLINGS)}, "
                          f"e.g. model.timestep_sampling=logit_normal")
    if cfg.loss_weighting not in FLOW_WEIGHTINGS:
        raise ConfigError(f"model.loss_weighting={cfg.loss_weighting} must be one of {', '.join(FLOW_WEIGHTINGS)}, "
                          f"e.g. model.loss_weighting=none")
    if cfg.shift is not None and not 0 < cfg.shift < float("inf"):
        raise ConfigError(f"model.shift={cfg.shift} must be a finite number > 0, or null for the scheduler's "
                          f"resolution-dependent shift, e.g. model.shift=null")
    if not 0 < cfg.logit_std < float("inf"):
        raise ConfigError(f"model.logit_std={cfg.logit_std} must be a finite number > 0, e.g. model.logit_std=1.0")
    if not 0 <= cfg.decode_timestep <= 1:
        raise ConfigError(f"model.decode_timestep={cfg.decode_timestep} must be in [0, 1], e.g. model.decode_timestep=0.03")
    if cfg.decode_noise_scale is not None and not 0 <= cfg.decode_noise_scale <= 1:
        raise ConfigError(f"model.decode_noise_scale={cfg.decode_noise_scale} must be in [0, 1] or null "
                          f"(= decode_timestep), e.g. model.decode_noise_scale=0.025")


# -- the scheduler's shift, mirrored for training ----------------------------------------------


def inference_shift(scheduler_config, num_tokens: int) -> float:
    """The shift FlowMatchEulerDiscreteScheduler applies at inference for `num_tokens` latent tokens,
    with the mu that LTXPipeline computes (calculate_shift over the scheduler's config)."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    mu = calculate_shift(
        num_tokens, scheduler_config.get("base_image_seq_len", 256), scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15),
    )
    # exponential: sigma' = e^mu / (e^mu + 1/sigma - 1) = shift_sigmas(sigma, e^mu); linear: shift mu.
    return math.exp(mu) if scheduler_config.get("time_shift_type", "exponential") == "exponential" else mu


# -- latents and prompts, in the pipeline's own terms ------------------------------------------


def normalize_latents(latents: torch.Tensor, vae) -> torch.Tensor:
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import LTXPipeline

    return LTXPipeline._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)


def pack(latents: torch.Tensor, patch: int, patch_t: int) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, tokens, C * patch_t * patch^2], as LTXPipeline.prepare_latents packs noise."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import LTXPipeline

    return LTXPipeline._pack_latents(latents, patch, patch_t)


def prompt_mask(prompt_embeds: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the T5 positions that held tokens (encode_prompts zeroes the padding)."""
    return prompt_embeds.detach().abs().amax(dim=-1) > 0


# -- the tiny twin ------------------------------------------------------------------------------


def tiny_text_encoder(vocab_size: int):
    # deferred: transformers (~0.4 s); reading the family's spec (train --help) must not load it
    from transformers import T5Config, T5EncoderModel


    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def require_sampling_steps(steps: int, scheduler_config) -> None:
    # A schedule stretched to end at shift_terminal divides by (1 - its last sigma): with one step that
    # sigma is the first, 1, and diffusers divides by zero.
    if steps < 2 and scheduler_config.get("shift_terminal"):
        raise ConfigError(f"num_inference_steps={steps}: LTX-Video's schedule (stretched to shift_terminal="
                          f"{scheduler_config['shift_terminal']}) needs at least 2 steps; e.g. model.num_inference_steps=4 "
                          f"(validation/evaluation.num_inference_steps follow it)")


def tiny_vae():
    """0.9.1-like (timestep-conditioned decoder), 8x time like the real VAE, 8x space; no decoder noise
    injection, which draws from the global RNG and would make generate() irreproducible."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import AutoencoderKLLTXVideo

    return AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=True,
        patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )


@torch.no_grad()
def fit_latent_statistics(vae) -> None:
    """Set latents_mean/std to the per-channel statistics of the twin's own latents of shapes clips, as
    the real VAE ships those of its training data: normalised latents are then ~unit scale."""
    latents = vae.encode(shapes_clips(num_videos=8)).latent_dist.mode()
    vae.latents_mean.copy_(latents.mean(dim=(0, 2, 3, 4)))
    vae.latents_std.copy_(latents.std(dim=(0, 2, 3, 4)).clamp(min=1e-3))


def _decode_at_timestep_zero(vae, latents: torch.Tensor) -> torch.Tensor:
    # The timestep-conditioned decoder at model.decode_timestep's default (0: a clean latent).
    return vae.decode(latents, torch.zeros(latents.shape[0]), return_dict=False)[0]


# The narrow VAE learns position and brightness first, colour late: after 300 steps every colour came back grey.
VAE_FIT_STEPS = 2400


def _fit_to_shape_clips(vae) -> dict:
    figures = fit_video_vae(vae, shapes_clips(), steps=VAE_FIT_STEPS, decode=_decode_at_timestep_zero, scale_latents=False)
    fit_latent_statistics(vae)
    return figures


# The twin's VAE fitted to shapes clips: a random one decodes noise.
build_tiny_vae = tiny.fitted_vae_builder(tiny_vae, _fit_to_shape_clips)


def fitted_tiny_vae():
    """The fitted VAE, committed in t2v_exp/tiny_bases/ltx_vae (else fitted once per cache)."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import AutoencoderKLLTXVideo

    return tiny.fitted_shared_vae("ltx_vae", AutoencoderKLLTXVideo, tiny_vae, build_tiny_vae, version=SPEC.tiny_version)


def build_tiny(out_dir: Path) -> None:
    """A tiny random LTXPipeline in diffusers layout: the real classes, scheduler and latent layout."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel


    tokenizer = t5_tokenizer(out_dir)
    torch.manual_seed(0)
    text_encoder = tiny_text_encoder(len(tokenizer))
    vae = fitted_tiny_vae()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=2, caption_channels=TEXT_DIM,
    )
    pipeline = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )
    pipeline.save_pretrained(out_dir, safe_serialization=True)


# Lightricks/LTX-Video: diffusers' LTXVideoTransformer3DModel and AutoencoderKLLTXVideo defaults are its
# config (28 layers of 32x64, 128 latent channels); T5-XXL text.
PUBLISHED_ARCHITECTURES = {
    "ltx": published.Architecture(
        geometry=(9, 64, 64), temporal_compression=8, twin="ltx_tiny", source="Lightricks/LTX-Video",
        components={"model.pretrained": {"transformer": published.Part("LTXVideoTransformer3DModel"),
                                         "vae": published.Part("AutoencoderKLLTXVideo"),
                                         "text_encoder": published.T5_XXL_ONE_LAYER}},
        published_parameters={"transformer": 1_920_000_000}),
}


def resolve_checkpoint(pretrained: str, cache_dir: str | None) -> str:
    return common.checkpoint_dir(pretrained, cache_dir, what="LTX-Video", allow_patterns=SUBFOLDERS,
                                 tiny_builders=SPEC.tiny_builders, tiny_version=SPEC.tiny_version)


def load_pipeline(pretrained: str, lora_dir: str | None = None, torch_dtype=torch.float32):
    """The stock LTXPipeline of a checkpoint (hub id, directory or tiny:ltx) with our export applied:
    a LoRA export through ``load_lora_weights``; a full fine-tune export (its transformer/) replaces
    the transformer."""
    # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
    from diffusers import LTXPipeline, LTXVideoTransformer3DModel

    root = resolve_checkpoint(pretrained, None)
    full = lora_dir is not None and (Path(lora_dir) / "transformer" / "config.json").is_file()
    extra = {}
    if full:
        extra["transformer"] = LTXVideoTransformer3DModel.from_pretrained(
            Path(lora_dir) / "transformer", torch_dtype=torch_dtype)
    pipe = LTXPipeline.from_pretrained(root, torch_dtype=torch_dtype, **extra)
    if lora_dir and not full:
        pipe.load_lora_weights(lora_dir)
    return pipe


def load_tokenizer(root: str):
    """The tokenizer class model_index.json names, so our prompts tokenize exactly as the stock
    pipeline's do (AutoTokenizer could swap in a fast tokenizer converted on the fly)."""
    # deferred: transformers (~0.4 s); reading the family's spec (train --help) must not load it
    import transformers

    index = read_json(root, "model_index.json")
    _, class_name = index.get("tokenizer", ["transformers", "AutoTokenizer"])
    return getattr(transformers, class_name).from_pretrained(root, subfolder="tokenizer")


# -- the adapter --------------------------------------------------------------------------------


class LTXModel:
    family = FAMILY
    trainable_scope = None  # every trainable parameter belongs to the transformer
    denoiser_subfolder = "transformer"
    text_encoder_lora = None  # T5: no text-encoder LoRA
    # None although encode_prompts cuts at model.max_sequence_length: the latent cache's text entries have
    # always been keyed without it (a known gap: changing the length reuses the other length's entries).
    max_text_tokens = None

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
        require_sampling_steps(cfg.num_inference_steps, LTX_SCHEDULER)
        validate_geometry(cfg, checkpoint_geometry(root))

    def __init__(self, cfg, root: str):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import (
            AutoencoderKLLTXVideo,
            FlowMatchEulerDiscreteScheduler,
            LTXVideoTransformer3DModel,
        )
        from transformers import T5EncoderModel  # deferred: transformers (~0.4 s), as diffusers above

        self.cfg = cfg
        self.root = root
        self.geometry = checkpoint_geometry(root)
        self.tokenizer = load_tokenizer(root)
        self.text_encoder = T5EncoderModel.from_pretrained(root, subfolder="text_encoder")
        self.vae = AutoencoderKLLTXVideo.from_pretrained(root, subfolder="vae")
        self.denoiser = LTXVideoTransformer3DModel.from_pretrained(root, subfolder="transformer")
        # Sampling only; its config also holds the inference shift that training mirrors.
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler")
        common.freeze(self.text_encoder, self.vae, self.denoiser)
        self.lora = lora_settings(cfg.lora) if cfg.finetune == "lora" else None
        if self.lora:
            add_lora(self.denoiser, self.lora)
        else:
            self.denoiser.requires_grad_(True)
        self.denoiser.train()
        # What LTXPipeline passes the transformer for frame_rate=model.fps (the rate the data is
        # sampled at): latent frames per second, and the spatial compression, for the rotary grid.
        g = self.geometry
        self.rope_interpolation_scale = (g.temporal / cfg.fps, g.spatial, g.spatial)

    def objective(self, num_tokens: int) -> FlowMatchingObjective:
        """Per token count: with model.shift=null the shift depends on the clip's resolution."""
        shift = self.cfg.shift if self.cfg.shift is not None else inference_shift(self.scheduler.config, num_tokens)
        return FlowMatchingObjective(
            shift=shift, sampling=self.cfg.timestep_sampling, logit_mean=self.cfg.logit_mean,
            logit_std=self.cfg.logit_std, weighting=self.cfg.loss_weighting,
            num_train_timesteps=int(self.scheduler.config.num_train_timesteps),
        )

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
        """T5 states [B, L, D] with the padded positions zeroed (the mask travels in the zeros)."""
        tokens = common.tokenize_prompts(self.tokenizer, prompts, self.cfg.max_sequence_length)
        device = common.first_parameter(self.text_encoder).device
        # Like LTXPipeline._get_t5_prompt_embeds: T5 itself runs unmasked; the mask acts in the transformer.
        embeds = self.text_encoder(tokens.input_ids.to(device))[0]
        return embeds * tokens.attention_mask.to(device=device, dtype=embeds.dtype).unsqueeze(-1)

    def encode_videos(self, videos):
        return self.encode_video_posteriors(videos)[0]

    @torch.no_grad()
    def encode_video_posteriors(self, videos):
        """[B, F, C, H, W] pixels in [-1, 1] -> (mean, std) of the normalised latents [B, C, F', H', W']
        (model.latent_sampling=mode trains on the mean; =sample draws, as the references do)."""
        weight = common.first_parameter(self.vae)
        pixels = videos.permute(0, 2, 1, 3, 4).to(device=weight.device, dtype=weight.dtype)
        return common.posterior_in_model_space(self.vae.encode(pixels).latent_dist,
                                               lambda z: normalize_latents(z, self.vae))

    def training_loss(self, latents, prompt_embeds, generators):
        _, _, frames, height, width = latents.shape
        g = self.geometry
        objective = self.objective(frames * height * width)  # the token count LTXPipeline computes mu from
        draw = objective.draw(latents, generators)  # noise/target drawn unpacked: per-sample, layout-free
        prediction = self.denoiser(
            hidden_states=pack(draw.noisy, g.patch, g.patch_t), encoder_hidden_states=prompt_embeds,
            timestep=draw.timesteps, encoder_attention_mask=prompt_mask(prompt_embeds),
            num_frames=frames, height=height, width=width,
            rope_interpolation_scale=self.rope_interpolation_scale, return_dict=False,
        )[0]
        # Packing only permutes elements, so the MSE is the same as over the unpacked tensors.
        return objective.loss(prediction, replace(draw, target=pack(draw.target, g.patch, g.patch_t)))

    def pipeline(self):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import LTXPipeline

        pipe = LTXPipeline(
            scheduler=self.scheduler, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            transformer=common.unwrap(self.denoiser),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generation_kwargs(self) -> dict:
        """Every LTXPipeline call of this model: the clip geometry, the frame rate training told the
        rotary embeddings, the T5 length, and the timestep-aware VAE's decode settings."""
        cfg = self.cfg
        return dict(
            num_frames=cfg.num_frames, height=cfg.height, width=cfg.width, frame_rate=cfg.fps,
            max_sequence_length=cfg.max_sequence_length, decode_timestep=cfg.decode_timestep,
            decode_noise_scale=cfg.decode_noise_scale,
        )

    def stock_pipeline(self, lora_dir: str | None = None):
        return load_pipeline(self.root, lora_dir)

    def prompt_kwargs(self, embeds, negative):
        """LTXPipeline takes precomputed text states only with their masks (rebuilt from the zeroed padding)."""
        kwargs = {"prompt_embeds": embeds, "prompt_attention_mask": prompt_mask(embeds)}
        if negative is not None:
            kwargs.update(negative_prompt_embeds=negative, negative_prompt_attention_mask=prompt_mask(negative))
        return kwargs

    def generate(self, prompts, *, num_inference_steps, guidance_scale, generator):
        require_sampling_steps(num_inference_steps, self.scheduler.config)
        return common.adapter_generate(self, prompts, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, generator=generator)

    def trainable_state_dict(self):
        return common.adapter_trainable_state_dict(self)

    def load_trainable_state_dict(self, state_dict):
        common.adapter_load_trainable_state_dict(self, state_dict)

    def export(self, out_dir: Path):
        # deferred: diffusers (~1.5 s); reading the family's spec (train --help) must not load it
        from diffusers import LTXPipeline

        common.export_transformer(LTXPipeline, common.unwrap(self.denoiser), self.lora, Path(out_dir),
                                  Path(out_dir) / "transformer")


def objective_label(model: LTXModel) -> str:
    # The objective is built per token count (model.shift=null: the shift depends on the resolution), so
    # there is no one objective to read a label from.
    return "flow matching"


SPEC = FamilySpec(
    name=FAMILY, config=Config, adapter=LTXModel,
    objective_label=objective_label,
    base_license="other",  # the model card's license when the checkpoint's own card does not say
    tiny_builders={"ltx": build_tiny},
    tiny_version="3",  # 2: 32-token T5 tokenizer; 3: VAE fitted to shapes clips
    fitted_vaes={"ltx_vae": build_tiny_vae},
    published_architectures=PUBLISHED_ARCHITECTURES,
)
