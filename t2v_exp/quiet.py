"""Logs a researcher can read: third-party noise filtered, repeated warnings shown once with a count.

Every entrypoint calls :func:`quiet_logs` first. What is dropped is noise about the libraries
themselves (deprecation notices, dtype-cast advice that does not apply to how we place modules),
never a warning about the user's data or settings; a repeated warning of our own is shown the
first time and counted after, and the count is logged when the process ends.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import warnings
from collections import Counter

# Library notices that say nothing about this run (each matched against the formatted message).
THIRD_PARTY_NOISE = (
    re.compile(r"has been deprecated and will not receive bug fixes"),  # TextToVideoSDPipeline
    re.compile(r"should be kept in float32.*Casting directly with `to\(\)`"),  # we cast on purpose
    re.compile(r"`torch_dtype` is deprecated"),
    re.compile(r"Token indices sequence length is longer than"),  # counted by TruncatedPrompts instead
)
NOISY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "accelerate")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in THIRD_PARTY_NOISE)


class OncePerMessage(logging.Filter):
    """Lets each distinct warning through once; later copies are counted."""

    def __init__(self):
        super().__init__()
        self.repeats: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        self.repeats[message] += 1
        return self.repeats[message] == 1

    def summary(self) -> list[tuple[str, int]]:
        return [(message, count - 1) for message, count in self.repeats.items() if count > 1]


_ONCE = OncePerMessage()
_DROP = DropNoise()
_REGISTERED = False


def _report_repeats() -> None:
    repeated = _ONCE.summary()
    if repeated:
        total = sum(count for _, count in repeated)
        logging.getLogger("t2v_exp").info(
            "%d repeated warning(s) were shown once each; e.g. %d more of: %s", total, repeated[0][1],
            repeated[0][0][:160])


def _add_once(handler: logging.Handler, log_filter: logging.Filter) -> None:
    if log_filter not in handler.filters:
        handler.addFilter(log_filter)


def quiet_logs() -> None:
    """Install the filters on the handlers that print (idempotent; call after Hydra set logging up).

    Filters go on handlers, not loggers: a logger's own filter sees only records created at that
    logger, not those of its children (diffusers.pipelines...), while a handler sees them all.
    """
    # deferred: diffusers, transformers (~2 s); every CLI imports this module
    import diffusers.utils.logging  # noqa: F401 - creates the library loggers and their handlers
    import transformers.utils.logging  # noqa: F401

    drop = _DROP
    for name in NOISY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            _add_once(handler, drop)
    for handler in logging.getLogger().handlers:
        _add_once(handler, drop)
        _add_once(handler, _ONCE)
    global _REGISTERED
    if not _REGISTERED:
        atexit.register(_report_repeats)
        _REGISTERED = True
    for category in (FutureWarning, DeprecationWarning):
        for module in ("diffusers", "transformers", "torch", "huggingface_hub", "accelerate", "peft", "wandb"):
            warnings.filterwarnings("ignore", category=category, module=module)


def progress(iterable, **kwargs):
    """A tqdm bar with an ETA that stays readable in a log file: on a terminal it redraws twice a
    second; redirected (CI, a cluster's job log) it writes a line every 30 s instead of every 0.1 s."""
    from tqdm.auto import tqdm  # deferred: tqdm.auto (~50 ms, asyncio); only when a bar is shown

    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 30.0)
    return tqdm(iterable, **kwargs)
