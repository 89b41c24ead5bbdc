"""Published architectures as facts: what ``python -m t2v_exp.preflight`` builds with random weights.

A family lists its real presets in its ``FamilySpec.published_architectures = {preset name: Architecture}``
(the registry gathers them, as it does tiny builders). Each names the tiny twin to start from (its
locally made tokenizer, its scheduler and ``model_index.json`` are kept) and the components to
replace, per config key that locates a checkpoint: the denoiser and VAE exactly as published (a
diffusers class and its non-default config values), the text encoder at the published width but
with ``text_layers`` layers. ``published_parameters`` are the denoiser counts of the released
checkpoints (their safetensors sizes over the bytes per parameter); preflight checks the built
architecture against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Part:
    """One component: its class (diffusers, or transformers for text encoders) and the config values
    that differ from the class's defaults (for text encoders: from the tiny twin's config, whose
    vocabulary and special tokens match its tokenizer)."""

    class_name: str
    config: dict[str, Any] = field(default_factory=dict)
    library: str = "diffusers"  # diffusers | transformers
    #: what the released component adds to ``config`` (text encoders: full depth and vocabulary), used
    #: only to count its parameters for the memory estimate
    released: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Architecture:
    twin: str  # conf/model/<twin>.yaml: the tiny twin whose directory layout is kept
    #: {config key: {subfolder ("" for the directory itself): Part}}
    components: dict[str, dict[str, Part]]
    #: {subfolder of model.pretrained: parameter count of the released weights}
    published_parameters: dict[str, int]
    source: str  # where the facts come from
    geometry: tuple[int, int, int]  # (frames, height, width) of preflight's training step: valid, small
    temporal_compression: int = 1  # latent frames = (frames - 1) // t + 1 for t > 1 (video VAEs), else frames


# Text encoders at their published widths, one layer (the depth is what preflight leaves out).
T5_XXL_ONE_LAYER = Part("T5EncoderModel", dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=1,
                                               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                                               is_gated_act=True, dense_act_fn="gelu_new"), library="transformers",
                        released=dict(num_layers=24, vocab_size=32128))
UMT5_XXL_ONE_LAYER = Part("UMT5EncoderModel", dict(T5_XXL_ONE_LAYER.config), library="transformers",
                          released=dict(num_layers=24, vocab_size=256384))
CLIP_L_ONE_LAYER = Part("CLIPTextModel", dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                              num_hidden_layers=1, projection_dim=768, hidden_act="quick_gelu"),
                        library="transformers", released=dict(num_hidden_layers=12, vocab_size=49408))
OPEN_CLIP_H_ONE_LAYER = Part("CLIPTextModel", dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                                   num_hidden_layers=1, projection_dim=1024, hidden_act="gelu"),
                             library="transformers", released=dict(num_hidden_layers=23, vocab_size=49408))
# The Stable Diffusion 2-D VAE (SD1.5, ModelScope): 83,653,863 parameters.
SD_VAE = Part("AutoencoderKL", dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                    sample_size=512, scaling_factor=0.18215))
