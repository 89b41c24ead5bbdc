"""Exceptions that carry a user-facing message (the CLI prints them without a traceback)."""


class UserError(Exception):
    """Something the user can fix; the message says what and how. Printed without a traceback."""


class ConfigError(UserError, ValueError):
    """A setting is wrong; the message names the key, the bad value and a valid one."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used: a file of it is damaged, or it belongs to another experiment."""


class RunDirLockedError(UserError, RuntimeError):
    """Another live process is already training into this run directory."""


def nearest_multiples(value: int, multiple: int) -> str:
    below = max(multiple, value // multiple * multiple)
    above = below + multiple if below <= value else below
    return f"{below} or {above}" if below != value else str(value)


def require_multiple(key: str, value: int, multiple: int, why: str) -> None:
    if value <= 0 or value % multiple:
        raise ConfigError(
            f"{key}={value} must be a positive multiple of {multiple} ({why}); nearest valid: "
            f"{nearest_multiples(value, multiple)}"
        )


# What every entrypoint prints as one line, without a traceback: errors the user can fix, a
# missing file, and ValueErrors that library code raises on bad input (a prompt file, a geometry)
# with a message naming what to change.
USER_ERRORS = (UserError, FileNotFoundError, ValueError)
