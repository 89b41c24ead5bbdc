"""Tiny random twins of the real checkpoints, built locally and saved in diffusers layout.

Each twin uses the same diffusers/transformers classes, latent layout, scheduler type and
prediction type as the real model, only narrower. It is written to disk once and then loaded
through exactly the same ``from_pretrained`` code as a real checkpoint, so a test on a twin
exercises the real loading path. No hub access: tokenizers are built from the BPE vocabulary
that ships with clip-anytorch (CLIP) and a SentencePiece model trained in under a second (T5).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import sentencepiece as spm
import torch

from .. import tiny_bases
from .tiny_vae import fit_image_vae, shapes_frames

log = logging.getLogger(__name__)

#: Bump when a builder changes so stale twins in users' caches are rebuilt.
TINY_VERSION = "4"  # 4: shared fitted VAEs in a vae/ subfolder, committed fits
CLIP_MERGES = 2000  # first N merges of CLIP's BPE: a valid, much smaller vocabulary
TEXT_DIM = 32
T5_MAX_TOKENS = 32  # every shapes caption fits (26 tokens at most); 16 cut 46 of 61

def clip_bpe_merges(count: int) -> list[str]:
    """The first ``count`` merge rules of the BPE vocabulary that ships with clip-anytorch."""
    import clip  # deferred: clip-anytorch (~1.5 s); only when a tiny tokenizer is built

    bpe_path = Path(clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe_path) as handle:
        return handle.read().decode("utf-8").split("\n")[1 : 1 + count]


def clip_tokenizer(out_dir: Path):
    """A CLIPTokenizer over CLIP's own byte-level BPE, cut to the first merges."""
    # deferred: clip-anytorch (~1.5 s); only when a tiny tokenizer is built
    from clip.simple_tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer  # deferred: transformers, as above

    merges = [tuple(line.split()) for line in clip_bpe_merges(CLIP_MERGES)]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    raw = out_dir / "raw_clip_tokenizer"
    raw.mkdir(parents=True)
    (raw / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (raw / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(raw, model_max_length=77)
    shutil.rmtree(raw)
    return tokenizer


def t5_tokenizer(out_dir: Path):
    """A T5Tokenizer from a small SentencePiece unigram model trained on CLIP's vocabulary words."""
    # deferred: transformers (~0.4 s); every models import loads this module (via models.common)
    from transformers import T5Tokenizer

    joined = (m.replace(" ", "") for m in clip_bpe_merges(20000))
    words = sorted({w[:-4] for w in joined if w.endswith("</w>") and w[:-4].isalpha()})
    rng = random.Random(0)
    raw = out_dir / "raw_t5_tokenizer"
    raw.mkdir(parents=True)
    corpus = raw / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(3000)))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(raw / "spiece"), vocab_size=256, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    corpus.unlink()
    (raw / "spiece.vocab").unlink()
    tokenizer = T5Tokenizer.from_pretrained(raw, extra_ids=0, model_max_length=T5_MAX_TOKENS)
    shutil.rmtree(raw)
    return tokenizer


def clip_text_encoder(vocab_size: int):
    # deferred: transformers (~0.4 s); every models import loads this module (via models.common)
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_DIM,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def image_vae():
    """2-D KL VAE, 4x spatial compression, 4 latent channels, SD's scaling factor."""
    # deferred: diffusers (~1.5 s); every models import loads this module (via models.common)
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=32, scaling_factor=0.18215,
    )


def fitted_vae_builder(make_vae: Callable, fit: Callable) -> Callable[[Path], None]:
    """A builder that fits a fresh ``make_vae()`` with ``fit(vae) -> figures`` and saves it as
    ``vae/`` with the figures in ``fit.json``."""

    def build(out_dir: Path) -> None:
        torch.manual_seed(0)
        vae = make_vae()
        figures = fit(vae)
        vae.save_pretrained(out_dir / "vae", safe_serialization=True)
        (out_dir / "fit.json").write_text(json.dumps(figures, indent=2) + "\n")

    return build


def _fit_to_shape_frames(vae) -> dict:
    return fit_image_vae(vae, shapes_frames())


# The 2-D VAE the ModelScope and SD1.5 twins share, fitted to the shapes data (tiny_vae.py); both
# families declare it in their FamilySpec.fitted_vaes.
build_image_vae = fitted_vae_builder(image_vae, _fit_to_shape_frames)


def random_vae_builder(make_vae: Callable) -> Callable[[Path], None]:
    """A builder that saves an unfitted VAE in the fitted one's layout: a committed fit is written over it."""

    def build(out_dir: Path) -> None:
        torch.manual_seed(0)
        make_vae().save_pretrained(out_dir / "vae", safe_serialization=True)

    return build


def shared_vae_dir(name: str, fit_builder: Callable[[Path], None], make_vae: Callable, version: str = "") -> str:
    """Directory (with a ``vae/`` subfolder) of the shared fitted VAE ``name``: the committed fit in
    t2v_exp/tiny_bases when there is one (no fitting on any user or CI machine), else fitted here once."""
    if tiny_bases.bundle_dir(name) is not None:
        return pretrained_twin(name, None, builder=random_vae_builder(make_vae), version=version)
    return tiny_checkpoint(name, builder=fit_builder, version=version)


_VAE_FROM_BUNDLE = False


@contextlib.contextmanager
def vae_weights_from_bundle():
    """Inside this block twins get an unfitted image VAE: a committed base (t2v_exp/tiny_bases) is about
    to write its own fitted VAE over it, so the ~40 s fit would be thrown away."""
    global _VAE_FROM_BUNDLE
    previous, _VAE_FROM_BUNDLE = _VAE_FROM_BUNDLE, True
    try:
        yield
    finally:
        _VAE_FROM_BUNDLE = previous


def building_from_bundle() -> bool:
    """True inside :func:`vae_weights_from_bundle`: a family's fitted-VAE helper returns an unfitted one."""
    return _VAE_FROM_BUNDLE


def fitted_shared_vae(name: str, vae_class, make_vae: Callable, fit_builder: Callable[[Path], None],
                      version: str = ""):
    """Shared VAE ``name`` (a ``vae_class``), fitted to the shapes data: the committed fit, else fitted once
    in the default cache and shared by every twin in every cache dir. Unfitted (``make_vae()``) inside
    :func:`vae_weights_from_bundle`, where a committed base brings its own."""
    if building_from_bundle():
        return make_vae()
    return vae_class.from_pretrained(shared_vae_dir(name, fit_builder, make_vae, version=version), subfolder="vae")


def fitted_image_vae():
    """The fitted 2-D VAE of the ModelScope and SD1.5 twins."""
    # deferred: diffusers (~1.5 s); every models import loads this module (via models.common)
    from diffusers import AutoencoderKL

    return fitted_shared_vae("image_vae", AutoencoderKL, image_vae, build_image_vae)


def default_cache_dir() -> Path:
    return Path(os.environ.get("T2V_EXP_CACHE", Path.home() / ".cache" / "t2v_exp"))


def tiny_checkpoint(name: str, cache_dir: str | os.PathLike | None = None, *,
                    builder: Callable[[Path], None], version: str = "") -> str:
    """Directory of the tiny twin ``name``, built on first use by ``builder`` (one of a family's
    ``FamilySpec.tiny_builders``, or a shared VAE's fitting builder), so this module never imports a
    family. ``version`` is the family's own builder version: bumping it rebuilds that family's twins only.

    Built into a temporary directory and renamed into place, so a crash mid-build never leaves
    a half-written twin that a later run would load.
    """
    import diffusers  # deferred: diffusers (~1.5 s); every models import loads this module (via models.common)
    import transformers  # deferred: transformers, as above

    fingerprint = hashlib.sha1(
        f"{TINY_VERSION}|{version}|{diffusers.__version__}|{transformers.__version__}".encode()
    ).hexdigest()[:10]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / "tiny" / f"{name}-{fingerprint}"
    if (target / ".complete").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        log.info("Building tiny checkpoint %s in %s", name, target)
        builder(staging)
        (staging / ".complete").write_text(fingerprint)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def pretrained_twin(name: str, cache_dir, *, builder: Callable[[Path], None], version: str) -> str:
    """The directory of twin ``name`` with its committed base (t2v_exp/tiny_bases) written over the
    random twin ``builder`` makes; built once per cache, rebuilt when the committed files change."""
    def build(out_dir: Path) -> None:
        with vae_weights_from_bundle() if "vae" in tiny_bases.bundle_files(name) else contextlib.nullcontext():
            builder(out_dir)
        tiny_bases.apply_bundle(out_dir, name)

    return tiny_checkpoint(f"{name}_base", cache_dir, builder=build,
                           version=f"{version}|base-{tiny_bases.bundle_fingerprint(name)}")
