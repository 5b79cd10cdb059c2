"""User-facing errors: each becomes one line on stderr and a non-zero exit, never a traceback."""

import reprlib


class UserError(Exception):
    """A mistake the user can fix (params, missing or bad files, settings)."""


class ConfigError(UserError):
    """params.yaml is missing, malformed or has a value out of range."""


class DataError(UserError):
    """A data or model file is missing, unreadable or does not fit the others."""


class DivergenceError(UserError):
    """Training produced a NaN or infinite loss."""


# A value echoed in a message is cut to this many characters: a 1 MB string or a YAML alias
# bomb (a few lines that expand to a billion values) must give a short line, quickly.
MAX_SHOWN = 80
_repr = reprlib.Repr()
_repr.maxlevel = 2  # nested containers beyond this show as [...]: shared aliases never expand
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_SHOWN


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` as it may appear in a message: strings quoted, at most `limit` characters.

    Never calls str() on a container whole: reprlib stops at a fixed depth and breadth, so the
    work is bounded whatever the value holds.
    """
    try:
        text = _repr.repr(value)
    except ValueError:  # an int past Python's 4300-digit str() limit
        text = f"<{type(value).__name__} too long to show>"
    return clip(text, limit)


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked with '...' when cut."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def rebuild_advice(missing_hint: str | None) -> str:
    """'rebuild it (dvc repro train)' from a missing file's hint that ends in the command that
    makes the file, in parentheses; '' for no hint or a hint without one."""
    if not missing_hint or "(" not in missing_hint:
        return ""
    return f"rebuild it ({missing_hint.split('(', 1)[1]}"


def first_line(exc: BaseException) -> str:
    """An error's message as a reason in parentheses: its first line, at most 200 characters;
    its type's name if it has none."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
