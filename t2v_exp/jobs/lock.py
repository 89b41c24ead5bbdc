"""One process trains in a run dir at a time."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from ..errors import RunDirLockedError

log = logging.getLogger(__name__)


class RunDirLock:
    """An exclusive ``flock`` on ``<run_dir>/.train.lock``, held while a process trains there.

    The kernel drops it when the process dies (even by SIGKILL), so a stale lock file never
    blocks a restart; two live processes can never interleave checkpoints in one directory.
    """

    NAME = ".train.lock"

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / self.NAME
        self._handle = None

    def acquire(self) -> RunDirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        except OSError as exc:  # an unwritable run dir: the trainer's own check explains it
            log.warning("Cannot create %s (%s)", self.path, exc)
            return self
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirLockedError(
                f"Another process (pid {holder}) is training into {self.path.parent}; two runs in one directory "
                f"would overwrite each other's checkpoints. Wait for it to finish (then resume=auto continues it), "
                f"or give this run its own directory: hydra.run.dir=/path/to/another/run"
            ) from None
        except OSError as exc:  # e.g. a file system without locks: train, but say so
            log.warning("Cannot lock %s (%s); nothing stops a second process from training into this run dir",
                        self.path, exc)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None

    @classmethod
    def holder(cls, run_dir: Path) -> str | None:
        """The pid training in ``run_dir`` now, or None when nobody holds its lock."""
        path = Path(run_dir) / cls.NAME
        if not path.is_file():
            return None
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "unknown"
            except OSError:
                return None
            return None
