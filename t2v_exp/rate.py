"""Rating entrypoint: ``python -m t2v_exp.rate sweep_dir=... | run_dir=... | eval_dirs=[...]`` builds
(or resumes) a blind side-by-side study and serves it; ``python -m t2v_exp.rate analyze study_dir=...``
writes its results. Everything lives in ``t2v_exp.rating``; this file only reads the config.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .help import CONF_DIR
from .quiet import quiet_logs
from .rating import analysis_markdown, analyze, model_card_lines, rated_run_dirs
from .rating.server import ServerRefused, serve
from .rating.store import Store
from .rating.study import Settings, StudyError, normalise_questions, prepare, verify_media
from .scoring.model_card import quote_rating

log = logging.getLogger("t2v_exp.rate")
COMMANDS = ("serve", "analyze")


def settings_from(cfg: DictConfig):
    questions = OmegaConf.to_container(cfg.questions, resolve=True) if cfg.questions is not None else []
    return Settings(mode=str(cfg.mode), questions=normalise_questions(questions), pairs=str(cfg.pairs),
                    repeats=int(cfg.repeats), identical=int(cfg.identical),
                    items_per_rater=None if cfg.items_per_rater is None else int(cfg.items_per_rater), seed=int(cfg.seed))


def resolve_token(value) -> str | None:
    token = value if value not in (None, "") else os.environ.get("T2V_RATE_TOKEN") or None
    if token == "auto":
        return secrets.token_urlsafe(18)
    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{12,200}", str(token)):
        # It travels in a URL and a cookie: URL-safe characters only, and long enough not to guess.
        raise ValueError("token= must be 12-200 letters, digits or . _ ~ - (or token=auto for a random one)")
    return None if token is None else str(token)


def run(cfg: DictConfig) -> None:
    command = str(cfg.command)
    if command not in COMMANDS:
        raise ValueError(f"command={command}: expected serve or analyze")
    if command == "analyze":
        if not cfg.study_dir and not (cfg.sweep_dir or cfg.run_dir):
            raise ValueError("analyze needs study_dir= (or the sweep_dir=/run_dir= whose study to analyse)")
        study_dir = Path(cfg.study_dir or Path(cfg.sweep_dir or cfg.run_dir) / "rating").expanduser()
        results = analyze(study_dir, draws=int(cfg.draws), seed=int(cfg.seed))
        print(analysis_markdown(results), flush=True)
        log.info("Wrote %s (and results.md, results.html)", study_dir / "results.json")
        quote_in_model_cards(results)
        return
    eval_dirs = list(cfg.eval_dirs) if cfg.eval_dirs else None
    study_dir, manifest = prepare(cfg.study_dir, run_dir=cfg.run_dir, sweep_dir=cfg.sweep_dir, eval_dirs=eval_dirs,
                                  settings=settings_from(cfg))
    token = resolve_token(cfg.token)
    log.info("checking the %d video files of the study against their digests", len(manifest["media"]))
    verify_media(manifest)
    store = Store(study_dir, manifest)
    log.info("study %s: ratings in %s", study_dir, store.path)
    serve(store, host=str(cfg.host), port=int(cfg.port), token=token)


def quote_in_model_cards(results: dict) -> None:
    """Each rated run's model card (final/README.md) quotes the study's result for that run; the
    sweep report picks the study up by itself (python -m t2v_exp.report)."""
    for run_dir in rated_run_dirs(results):
        lines = model_card_lines(results, run_dir)
        if lines:
            quote_rating(run_dir / "final" / "README.md", lines)
            log.info("Model card %s quotes the study", run_dir / "final" / "README.md")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="rate")
def hydra_main(cfg: DictConfig) -> None:
    quiet_logs()
    try:
        run(cfg)
    except (StudyError, ServerRefused, ValueError, FileNotFoundError, OSError) as exc:
        log.error("%s", exc)
        raise SystemExit(f"error: {exc}") from None


def main() -> None:
    """``analyze`` / ``serve`` as a bare first word becomes ``command=...`` (Hydra takes key=value only)."""
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        sys.argv[1] = f"command={sys.argv[1]}"
    hydra_main()


if __name__ == "__main__":
    main()
