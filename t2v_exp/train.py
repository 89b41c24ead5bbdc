"""Training entrypoint: ``python -m t2v_exp.train [group=option ...] [key=value ...]``.

Compose the config -> build the run -> train -> finish. Everything lands in Hydra's run dir.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import register_configs
from .errors import ConfigError
from .models.common import CheckpointNotAvailableError

log = logging.getLogger("t2v_exp.train")
USER_ERRORS = (ConfigError, CheckpointNotAvailableError, FileNotFoundError)

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from .engine.trainer import run_training

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run_training(cfg, run_dir)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        raise SystemExit(f"error: {exc}") from None
    log.info("Done: final loss %s; run dir %s", summary.get("final_loss"), run_dir)
    return summary.get("final_loss")


if __name__ == "__main__":
    main()
