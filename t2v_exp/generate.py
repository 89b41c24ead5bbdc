"""Generation entrypoint: ``python -m t2v_exp.generate run_dir=<run> prompt="a red circle moving up"``.

Compose -> adopt the run's model (or take ``model=`` as a base) -> apply frame/size overrides within
the family's rules -> generate each (prompt, seed) -> write ``NNN_<prompt>_seed<S>.mp4``, a PNG strip
of a few frames per video and ``prompts.jsonl`` (prompt, seed, file, settings) in the output dir.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from .config import CONF_DIR, register_configs
from .errors import USER_ERRORS, ConfigError
from .quiet import quiet_logs

log = logging.getLogger("t2v_exp.generate")

register_configs()


def prompt_list(cfg: DictConfig) -> list[str]:
    from .scoring.evaluation import read_prompts_file  # deferred: torch; generate --help stays light

    if bool(cfg.prompt) == bool(cfg.prompts):
        raise ConfigError('give exactly one of prompt="a red circle moving up" or prompts=FILE '
                          "(.txt: one prompt per line; .jsonl: a \"prompt\" field per line)")
    return [str(cfg.prompt)] if cfg.prompt else read_prompts_file(cfg.prompts)


def apply_geometry(cfg: DictConfig) -> None:
    """num_frames / height / width override the model's (after a run's config is adopted)."""
    with open_dict(cfg):
        for key in ("num_frames", "height", "width"):
            if cfg.get(key) is not None:
                if int(cfg[key]) < 1:
                    raise ConfigError(f"{key}={cfg[key]} must be >= 1")
                cfg.model[key] = int(cfg[key])


def write_png(path: Path, image) -> None:
    from PIL import Image  # deferred: only when a frame strip is written

    Image.fromarray(image).save(path)


def generate(cfg: DictConfig, out_dir: Path) -> list[dict]:
    """Generate every (prompt, seed) of ``cfg`` into ``out_dir``; returns the prompts.jsonl records."""
    # deferred: the model, its families and torch load only once generation starts (not for --help)
    from .jobs.adopt import adopt_run_config, autocast_for, device_and_precision, load_model
    from .models import resolve_and_validate  # deferred: as above
    from .scoring.sampling import frame_strip, generate_videos, write_videos  # deferred: as above

    prompts = prompt_list(cfg)
    if cfg.seeds_per_prompt < 1:
        raise ConfigError(f"seeds_per_prompt={cfg.seeds_per_prompt} must be >= 1")
    if cfg.num_inference_steps < 1:
        raise ConfigError(f"num_inference_steps={cfg.num_inference_steps} must be >= 1, e.g. 25")
    checkpoint = adopt_run_config(cfg) if cfg.run_dir else None
    apply_geometry(cfg)
    resolve_and_validate(cfg.model, cfg.paths.cache_dir)  # the family's frame/size rules, before loading
    model = load_model(cfg, checkpoint)
    device, mixed = device_and_precision(cfg)

    jobs = [(p, cfg.seed + i * cfg.seeds_per_prompt + k) for i, p in enumerate(prompts)
            for k in range(cfg.seeds_per_prompt)]
    job_prompts, seeds = [p for p, _ in jobs], [s for _, s in jobs]
    videos = generate_videos(model, job_prompts, seeds=seeds, num_inference_steps=cfg.num_inference_steps,
                             guidance_scale=cfg.guidance_scale, autocast=autocast_for(device, mixed))
    names = write_videos(videos, job_prompts, out_dir, fps=int(cfg.model.fps), seeds=seeds)
    settings = {"model": str(cfg.model.name), "pretrained": str(cfg.model.pretrained),
                "run_dir": str(cfg.run_dir) if cfg.run_dir else None,
                "checkpoint": str(checkpoint) if checkpoint else None,
                "num_inference_steps": int(cfg.num_inference_steps), "guidance_scale": float(cfg.guidance_scale),
                "num_frames": int(cfg.model.num_frames), "height": int(cfg.model.height),
                "width": int(cfg.model.width), "fps": int(cfg.model.fps)}
    records = []
    for video, name, prompt, seed in zip(videos, names, job_prompts, seeds, strict=True):
        strip = Path(name).with_suffix(".png").name
        write_png(out_dir / strip, frame_strip(video, cfg.strip_frames))
        records.append({"file": name, "strip": strip, "prompt": prompt, "seed": seed, **settings})
    (out_dir / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="generate")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    quiet_logs()
    try:
        records = generate(cfg, out_dir)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        raise SystemExit(f"error: {exc}") from None
    log.info("Wrote %d video(s), their PNG strips and prompts.jsonl to %s", len(records), out_dir)


if __name__ == "__main__":
    main()
