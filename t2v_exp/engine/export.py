"""The final weights, written so that a crash mid-export never leaves half a ``final/``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def export_final(model, run_dir: Path, accelerator) -> Path:
    """Write ``final/`` into a fresh directory and rename it into place: a crash mid-export never
    leaves half a final/, and files another dir hard-links (a reused sweep job) never change."""
    out_dir = run_dir / "final"
    if accelerator.is_main_process:
        staging = run_dir / f".final-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model.export(staging)
        replaced = run_dir / f".final-replaced-{os.getpid()}"
        if out_dir.exists():
            os.replace(out_dir, replaced)
        os.replace(staging, out_dir)
        shutil.rmtree(replaced, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out_dir
