"""A hand-written minimal accelerate + diffusers fine-tuning loop: the baseline the engine is timed against.

Only diffusers / transformers / peft / accelerate: the components are loaded straight from a
checkpoint directory in diffusers layout (the tiny twins under ``$T2V_EXP_CACHE/tiny``), noise and
timesteps come from the global RNG, and one step is encode -> noise -> denoise -> MSE -> backward ->
clip -> AdamW -> LR schedule. Nothing from t2v_exp is used here except, in ``main``, locating the
tiny checkpoint directories.

Usage: .venv/bin/python bench/minimal_loop.py --family modelscope --steps 20
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

#: AnimateDiff's motion modules were trained with linear betas (SD1.5 itself uses scaled_linear).
MOTION_BETAS = dict(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)


def load_components(family: str, root: str, adapter_dir: str | None = None) -> SimpleNamespace:
    """Tokenizer, text encoder, VAE, denoiser and training noise scheduler of one family."""
    import diffusers as d
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    if family == "cogvideox":
        return SimpleNamespace(
            tokenizer=AutoTokenizer.from_pretrained(root, subfolder="tokenizer"),
            text_encoder=T5EncoderModel.from_pretrained(root, subfolder="text_encoder"),
            vae=d.AutoencoderKLCogVideoX.from_pretrained(root, subfolder="vae"),
            denoiser=d.CogVideoXTransformer3DModel.from_pretrained(root, subfolder="transformer"),
            noise_scheduler=d.CogVideoXDDIMScheduler.from_pretrained(root, subfolder="scheduler"))
    scheduler_config = d.DDIMScheduler.load_config(root, subfolder="scheduler")
    if family == "modelscope":
        denoiser = d.UNet3DConditionModel.from_pretrained(root, subfolder="unet")
        noise_scheduler = d.DDPMScheduler.from_config(scheduler_config)
    else:  # animatediff: SD1.5 UNet + motion adapter
        unet2d = d.UNet2DConditionModel.from_pretrained(root, subfolder="unet")
        denoiser = d.UNetMotionModel.from_unet2d(unet2d, d.MotionAdapter.from_pretrained(adapter_dir))
        noise_scheduler = d.DDPMScheduler.from_config(scheduler_config, prediction_type="epsilon", **MOTION_BETAS)
    return SimpleNamespace(
        tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder"),
        vae=d.AutoencoderKL.from_pretrained(root, subfolder="vae"), denoiser=denoiser,
        noise_scheduler=noise_scheduler)


def add_lora(denoiser, rank: int, alpha: float, targets=("to_q", "to_k", "to_v", "to_out.0"), scope=None):
    """Freeze the denoiser and inject peft LoRA layers (``scope``: only modules whose name contains it)."""
    from peft import LoraConfig, inject_adapter_in_model

    denoiser.requires_grad_(False)
    leaves = "|".join(re.escape(t) for t in targets)
    pattern = list(targets) if not scope else rf".*{re.escape(scope)}.*\.({leaves})"
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=pattern), denoiser)


def flow_matching_loss(family, denoiser, noise_scheduler, latents, embeds):
    """Rectified flow as the Wan and LTX-Video references train: logit-normal sigma, x_t = (1 - sigma) x0
    + sigma noise, target noise - x0, timestep 1000 sigma. latents [B, C, F, h, w]; LTX takes them as
    patch-1 tokens [B, F*h*w, C] with the clip's latent shape beside them."""
    batch = latents.shape[0]
    sigmas = torch.sigmoid(torch.randn(batch, device=latents.device))
    noise = torch.randn_like(latents)
    s = sigmas.view(batch, 1, 1, 1, 1).to(latents.dtype)
    noisy, target = (1 - s) * latents + s * noise, noise - latents
    steps = sigmas * noise_scheduler.config.num_train_timesteps
    if family == "wan":
        pred = denoiser(hidden_states=noisy, timestep=steps, encoder_hidden_states=embeds, return_dict=False)[0]
    else:
        _, _, frames, height, width = latents.shape
        mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        pred = denoiser(hidden_states=noisy.flatten(2).transpose(1, 2), encoder_hidden_states=embeds, timestep=steps,
                        encoder_attention_mask=mask, num_frames=frames, height=height, width=width,
                        return_dict=False)[0]
        target = target.flatten(2).transpose(1, 2)
    return F.mse_loss(pred.float(), target.float())


def diffusion_loss(family, denoiser, noise_scheduler, latents, embeds):
    """latents: [B, C, F, h, w] (UNets, Wan, LTX) or [B, F, C, h, w] (CogVideoX); embeds: [B, L, D]."""
    if family in ("wan", "ltx"):
        return flow_matching_loss(family, denoiser, noise_scheduler, latents, embeds)
    noise = torch.randn_like(latents)
    steps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, steps)
    if family == "cogvideox":
        pred = denoiser(hidden_states=noisy, encoder_hidden_states=embeds, timestep=steps, return_dict=False)[0]
    else:  # AnimateDiff runs the SD UNet per frame: one text context per frame
        context = embeds.repeat_interleave(latents.shape[2], dim=0) if family == "animatediff" else embeds
        pred = denoiser(noisy, steps, encoder_hidden_states=context, return_dict=False)[0]
    v_pred = noise_scheduler.config.prediction_type == "v_prediction"
    target = noise_scheduler.get_velocity(latents, noise, steps) if v_pred else noise
    return F.mse_loss(pred.float(), target.float())


class MinimalLoop:
    """The loop itself. ``step(batch)`` encodes pixels and prompts; ``update`` starts from latents."""

    def __init__(self, family, parts, *, lr, weight_decay, betas, eps, max_grad_norm, warmup_steps,
                 max_steps, mixed_precision="no", cpu=True, optimizer=None, accelerator=None, prepare=True):
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler

        self.family, self.parts, self.max_grad_norm = family, parts, max_grad_norm
        self.accelerator = accelerator or Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        self.dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
        self.params = [p for p in parts.denoiser.parameters() if p.requires_grad]
        optimizer = optimizer or torch.optim.AdamW(self.params, lr=lr, betas=tuple(betas), eps=eps,
                                                   weight_decay=weight_decay)
        self.lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup_steps,
                                          num_training_steps=max_steps)
        # prepare=False: module and optimizer already prepared elsewhere (bench_gpu shares them)
        self.denoiser, self.optimizer = (self.accelerator.prepare(parts.denoiser, optimizer) if prepare
                                         else (parts.denoiser, optimizer))

    @torch.no_grad()
    def encode(self, batch):
        p, device = self.parts, self.accelerator.device
        ids = p.tokenizer(batch["prompt"], padding="max_length", truncation=True, return_tensors="pt",
                          max_length=getattr(p.denoiser.config, "max_text_seq_length", p.tokenizer.model_max_length))
        embeds = p.text_encoder(ids.input_ids.to(device))[0].to(self.dtype)
        video = batch["video"].to(device, self.dtype)  # [B, F, C, H, W] in [-1, 1]
        if self.family == "cogvideox":  # causal 3-D VAE on [B, C, F, H, W]; transformer wants [B, F, C, h, w]
            latents = p.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode() * p.vae.config.scaling_factor
            return latents.permute(0, 2, 1, 3, 4).contiguous(), embeds
        b, f = video.shape[:2]  # 2-D VAE frame by frame, back to [B, C, F, h, w]
        latents = p.vae.encode(video.flatten(0, 1)).latent_dist.mode() * p.vae.config.scaling_factor
        return latents.unflatten(0, (b, f)).permute(0, 2, 1, 3, 4).contiguous(), embeds

    def update(self, latents, embeds) -> float:
        with self.accelerator.autocast():
            loss = diffusion_loss(self.family, self.denoiser, self.parts.noise_scheduler, latents, embeds)
            self.accelerator.backward(loss)
            self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def step(self, batch) -> float:
        return self.update(*self.encode(batch))


def endless(loader):
    while True:
        yield from loader


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import InMemoryClips
    from t2v_exp.models.registry import tiny_twin

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["modelscope", "cogvideox", "animatediff"], default="modelscope")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    from accelerate.utils import set_seed

    set_seed(42)
    base = {"modelscope": "modelscope", "cogvideox": "cogvideox", "animatediff": "sd15"}[args.family]
    parts = load_components(args.family, tiny_twin(base),
                            tiny_twin("motion_adapter") if args.family == "animatediff" else None)
    for module in (parts.text_encoder, parts.vae):
        module.requires_grad_(False).eval()
    add_lora(parts.denoiser, 4, 4, scope="motion_modules" if args.family == "animatediff" else None)
    parts.denoiser.train()
    frames = 9 if args.family == "cogvideox" else 8
    data = torch.utils.data.DataLoader(InMemoryClips(16, frames, 32, 32), batch_size=args.batch_size,
                                       shuffle=True, drop_last=True)
    loop = MinimalLoop(args.family, parts, lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8,
                       max_grad_norm=1.0, warmup_steps=10, max_steps=200)
    batches, started = endless(data), time.perf_counter()
    for step in range(args.steps):
        loss = loop.step(next(batches))
        print(f"step {step + 1}: loss {loss:.4f}")
    print(f"{args.steps / (time.perf_counter() - started):.2f} steps/s")


if __name__ == "__main__":
    main()
