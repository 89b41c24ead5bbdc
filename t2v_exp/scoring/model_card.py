"""``final/README.md``: a Hugging Face model card for the fine-tuned weights, so ``hf upload`` publishes a page.

The YAML header follows the Hub's model-card metadata (base_model, library_name, tags, license,
pipeline_tag); the body says what was trained on what, how far, what it scored before and after
(with the paired CIs when the run was evaluated), shows a strip of sample frames, and how to load it.
``push_to_hub=true`` uploads the folder when the Hub can be reached and says why not when it cannot.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .comparison import change_text, p_text, verdict

log = logging.getLogger(__name__)
SAMPLE_STRIP = "sample.png"
TINY_PREFIX = "tiny:"
# The human rating section is written after training (a study needs the evaluations first); these
# markers let a later analysis, with more answers, replace it instead of appending a second one.
RATING_BEGIN = "<!-- t2v_exp human rating: begin -->"
RATING_END = "<!-- t2v_exp human rating: end -->"


def base_license(checkpoint_root: str | os.PathLike | None, default: str) -> str:
    """The base checkpoint's own card says its license (hub downloads carry README.md); else ``default``."""
    card = Path(checkpoint_root) / "README.md" if checkpoint_root else None
    if card is not None and card.is_file():
        match = re.match(r"^---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1)) or {}
            except yaml.YAMLError:
                meta = {}
            if isinstance(meta, dict) and meta.get("license"):
                return str(meta["license"])
    return default


def comparison_lines(eval_report: dict | None) -> list[str]:
    if not eval_report or not eval_report.get("comparison"):
        return ["Not evaluated against its base in this run (train.evaluate_base=true train.evaluate_at_end=true "
                "adds a paired before/after table here)."]
    protocol = eval_report.get("comparison_protocol") or {}
    lines = ["| score | role | base | fine-tuned | change [95% CI] | p | verdict |", "|---|---|---|---|---|---|---|"]
    rows = [(f"{metric}/{score}", row) for metric, scores in eval_report["comparison"].items()
            for score, row in scores.items()]
    for name, row in sorted(rows, key=lambda item: item[1].get("role") != "primary"):
        base, tuned = row.get("base_mean", row.get("base")), row.get("tuned_mean", row.get("tuned"))
        lines.append(f"| {name} | {row.get('role') or '-'} | {_num(base)} | {_num(tuned)} | {change_text(row)} | "
                     f"{p_text(row)} | {verdict(row)} |")
    lines.append("")
    lines.append(f"{protocol.get('n_pairs', '?')} videos ({protocol.get('n_prompts', '?')} held-out "
                 f"{eval_report.get('dataset', '')} prompts) paired by prompt and seed, "
                 f"{eval_report.get('num_inference_steps')} sampling steps, guidance {eval_report.get('guidance_scale')}. "
                 f"Intervals are 95% t-intervals over prompts (the prompt is the unit), p exact sign-flip. "
                 f"The primary score (`{protocol.get('primary') or 'none'}`, declared before the run) is the only "
                 "claim; the others are exploratory (Benjamini-Hochberg q). Accuracies change in percentage points. "
                 "One training run: the interval covers sampling, not training-seed variation.")
    return lines


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def card_text(cfg, *, family_module: str, license_name: str, steps: int, eval_report: dict | None,
              has_strip: bool) -> str:
    model = cfg.model
    pretrained = str(model.pretrained)
    lora = model.finetune == "lora"
    header: dict[str, Any] = {
        "library_name": "diffusers",
        "license": license_name,
        "pipeline_tag": "text-to-video",
        "tags": ["text-to-video", "diffusers", "t2v_exp", str(model.family), "lora" if lora else "full-fine-tune"],
    }
    if not pretrained.startswith(TINY_PREFIX):
        header["base_model"] = pretrained
    body = [
        f"# {cfg.model.name} fine-tuned on {cfg.dataset.name}",
        "",
        f"- **Family**: {model.family} (base: `{pretrained}`)",
        f"- **Fine-tune**: {'LoRA' if lora else 'full'}"
        + (f", rank {model.lora.rank}, alpha {model.lora.alpha}, targets {list(model.lora.target_modules)}"
           + (f", scope `{model.lora.scope}`" if model.lora.get("scope") else "") if lora else ""),
        f"- **Data**: `{cfg.dataset.name}`" + (f" (domain `{cfg.dataset.domain}`)" if cfg.dataset.get("domain") else ""),
        f"- **Training**: {steps} optimizer steps, learning rate {cfg.optimizer.lr}, "
        f"{model.num_frames} frames at {model.height}x{model.width}",
        "",
        "## Before and after",
        "",
        *comparison_lines(eval_report),
        "",
    ]
    if has_strip:
        body += ["## Sample", "", f"![frames of a validation sample]({SAMPLE_STRIP})", ""]
    extra = f', motion_adapter="{model.motion_adapter}"' if model.get("motion_adapter") else ""
    body += [
        "## How to load",
        "",
        "```python",
        f"from {family_module} import load_pipeline",
        "",
        f'pipe = load_pipeline("{pretrained}", lora_dir="<this folder>"{extra})' if lora else
        f'pipe = load_pipeline("{pretrained}"{extra})  # then replace its denoiser with the one in this folder',
        "```",
        "",
        *(["ComfyUI: the same LoRA in ComfyUI's layout is in `comfyui/` (see t2v_exp's README, ComfyUI).", ""]
          if lora and "comfyui" in (model.get("export_formats") or []) else []),
        "Made with t2v_exp (`python -m t2v_exp.train`); the run's config.yaml has every setting.",
        "",
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(body)


def write_sample_strip(final_dir: Path, samples_root: Path) -> bool:
    """A PNG strip of the newest validation sample's frames, beside the card."""
    from PIL import Image  # deferred: the card's picture only; writing its text needs neither PIL

    from .sampling import decoded_frames, frame_strip  # nor torch (sampling imports it)

    videos = sorted(samples_root.glob("step-*/*.mp4"))
    if not videos:
        return False
    first = sorted(videos[-1].parent.glob("*.mp4"))[0]  # the newest step's first prompt
    try:
        strip = frame_strip(decoded_frames(first), 4)
    except Exception as exc:  # noqa: BLE001 - a card without a picture is still a card
        log.warning("No sample strip in the model card (%s: %s)", type(exc).__name__, exc)
        return False
    Image.fromarray(strip).save(final_dir / SAMPLE_STRIP)
    return True


def write_model_card(final_dir: Path, cfg, *, model, steps: int, eval_report: dict | None, samples_root: Path) -> Path:
    from ..models.spec import spec_for  # the models package (torch) only once a card is written

    family_module = type(model).__module__
    roots = model.roots  # one directory, or several (AnimateDiff): then no single card to read
    license_name = base_license(roots if isinstance(roots, str | os.PathLike) else None, spec_for(model).base_license)
    has_strip = write_sample_strip(final_dir, samples_root)
    path = final_dir / "README.md"
    path.write_text(card_text(cfg, family_module=family_module, license_name=license_name, steps=steps,
                              eval_report=eval_report, has_strip=has_strip), encoding="utf-8")
    return path


def quote_rating(card: Path, lines: list[str]) -> None:
    """Put the human rating study's lines into a written model card: before "How to load" the first
    time, in place of the earlier section afterwards."""
    text = card.read_text(encoding="utf-8")
    block = "\n".join([RATING_BEGIN, "## Human rating", "", *lines, "", RATING_END])
    earlier = re.compile(re.escape(RATING_BEGIN) + ".*?" + re.escape(RATING_END), re.S)
    if earlier.search(text):
        text = earlier.sub(lambda _: block, text, count=1)
    elif "\n## How to load" in text:
        text = text.replace("\n## How to load", "\n" + block + "\n\n## How to load", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    card.write_text(text, encoding="utf-8")


def push_to_hub(final_dir: Path, repo_id: str | None) -> str:
    """Upload ``final_dir`` to ``repo_id``; returns what happened (logged by the caller)."""
    if not repo_id:
        return "push_to_hub=true needs hub_repo_id=<user>/<name>"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return (f"not uploaded: HF_HUB_OFFLINE is set; upload later with `hf upload {repo_id} {final_dir}`")
    try:
        from huggingface_hub import HfApi  # deferred: its HTTP client only when uploading

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(final_dir))
    except Exception as exc:  # noqa: BLE001 - no network, no token, no permission: all say "later"
        return (f"not uploaded ({type(exc).__name__}: {str(exc)[:200]}); upload later with "
                f"`hf upload {repo_id} {final_dir}`")
    return f"uploaded {final_dir} to https://huggingface.co/{repo_id}"


def publish(final_dir: Path, cfg, *, model, steps: int, eval_report: dict | None, samples_root: Path) -> Path:
    """The model card beside the exported weights; the upload when push_to_hub=true."""
    card = write_model_card(final_dir, cfg, model=model, steps=steps, eval_report=eval_report,
                            samples_root=samples_root)
    log.info("Model card: %s", card)
    if cfg.push_to_hub:
        log.info("push_to_hub: %s", push_to_hub(final_dir, cfg.hub_repo_id))
    return card
