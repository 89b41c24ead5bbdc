"""Sweep report: ``python -m t2v_exp.report sweep_dir=outputs/sweeps/<sweep>``.

Reads every job directory of a sweep and writes report.md, report.html and PNG plots (into the
sweep dir by default), and logs the table to W&B. The sweep calls ``write_report`` itself after a
multirun; this entrypoint rebuilds the report of any sweep, finished or not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .help import CONF_DIR, help_text
from .quiet import quiet_logs
from .reporting.write import write_report

log = logging.getLogger("t2v_exp.report")
OmegaConf.register_new_resolver("t2v_help", help_text, replace=True)  # --help (conf/report.yaml)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def main(cfg: DictConfig) -> None:
    quiet_logs()
    if OmegaConf.is_missing(cfg, "sweep_dir"):
        raise SystemExit("error: sweep_dir is required: python -m t2v_exp.report sweep_dir=outputs/sweeps/<sweep>")
    try:
        write_report(Path(cfg.sweep_dir), Path(cfg.out_dir) if cfg.out_dir else None, bool(cfg.wandb), cfg.logger)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
