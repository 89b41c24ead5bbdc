"""Exceptions that carry a user-facing message (the CLI prints them without a traceback)."""


class ConfigError(ValueError):
    """A setting is wrong; the message names the key, the bad value and a valid one."""


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
