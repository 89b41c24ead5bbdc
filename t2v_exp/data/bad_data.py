"""Bad samples: report them (warning + ``bad_samples.jsonl`` in the run dir), count them, and stop
when there are too many to be an accident.

A few unreadable files in a large crawl are normal and should not stop a run; a quarter of the
data set failing usually means a wrong path or a broken mount, and training on the rest would
quietly change the experiment. ``max_bad_fraction`` draws that line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import ConfigError
from .sources import Problem

log = logging.getLogger(__name__)
REPORT_NAME = "bad_samples.jsonl"
LOGGED_INDIVIDUALLY = 10  # then only a summary, so 10,000 bad files do not flood the log


class TooManyBadSamplesError(ConfigError):
    pass


class BadSampleReport:
    """Collects bad samples of one data set; appends each to ``<report_dir>/bad_samples.jsonl``.

    Appending (one short line per write) lets DataLoader workers record decode failures met
    during training into the same file without coordination.
    """

    def __init__(self, report_dir: str | os.PathLike | None, *, dataset: str, split: str):
        self.file = Path(report_dir) / REPORT_NAME if report_dir else None
        self.dataset, self.split = dataset, split
        self.problems: list[Problem] = []

    def add(self, path: str, reason: str, *, phase: str = "index") -> None:
        self.problems.append(Problem(path, reason))
        if len(self.problems) <= LOGGED_INDIVIDUALLY or phase != "index":
            log.warning("%s/%s: skipping bad sample %s (%s)", self.dataset, self.split, path, reason)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            line = {"path": path, "reason": reason, "phase": phase, "dataset": self.dataset, "split": self.split}
            with self.file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")

    def check(self, total: int, max_bad_fraction: float, *, root: str | os.PathLike | None = None) -> None:
        """Raise when more than ``max_bad_fraction`` of ``total`` entries are bad (or none is good).

        ``root``: the dataset root, searched for the missing files when they are most of the bad ones,
        so the error can say where the videos are (one folder down, in the archive's own folder name)."""
        bad = len(self.problems)
        if bad > LOGGED_INDIVIDUALLY:
            log.warning("%s/%s: %d bad samples in all (see %s)", self.dataset, self.split, bad,
                        self.file or "the log")
        if total == 0:
            raise TooManyBadSamplesError(f"dataset {self.dataset} ({self.split}): no samples found; check dataset.root")
        if bad > max_bad_fraction * total or bad == total:
            examples = "; ".join(f"{p.path}: {p.reason}" for p in self.problems[:5])
            raise TooManyBadSamplesError(
                f"dataset {self.dataset} ({self.split}): {bad} of {total} samples are bad "
                f"({bad / total:.0%} > dataset.max_bad_fraction={max_bad_fraction}). Examples: {examples}. "
                f"Full list: {self.file or 'set report_dir to get bad_samples.jsonl'}; raise "
                "dataset.max_bad_fraction=0.5 only if that much loss is expected."
                + (missing_files_hint(self.problems, Path(root)) if root else "")
            )


MISSING = "missing file"
SEARCH_LIMIT = 200_000  # directory entries looked at before giving up (a whole disk is not searched)


def missing_files_hint(problems: list[Problem], root: Path, *, sample: int = 20) -> str:
    """Where under ``root`` the missing files are, and the setting that points there; '' if nowhere."""
    missing = [Path(p.path) for p in problems if p.reason == MISSING]
    if len(missing) * 2 < len(problems) or not root.is_dir():
        return ""
    wanted = {m.name for m in missing[:sample]}
    expected_dirs = {m.parent for m in missing[:sample]}
    found: dict[Path, int] = {}
    for seen, path in enumerate(root.rglob("*")):
        if seen >= SEARCH_LIMIT:
            break
        if path.name in wanted and path.parent not in expected_dirs:
            found[path.parent] = found.get(path.parent, 0) + 1
    if not found:
        return (f" None of the first {len(wanted)} missing files is anywhere under {root}: check dataset.root "
                f"(expected e.g. {missing[0]}).")
    folder = max(found, key=found.get)
    relative = folder.relative_to(root).as_posix()
    return (f" The videos are in {folder} ({found[folder]} of the first {len(wanted)} missing files found there): "
            f"set dataset.videos_dir={relative} (relative to dataset.root).")
