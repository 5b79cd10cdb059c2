"""User-facing errors: each becomes one line on stderr and a non-zero exit, never a traceback."""


class UserError(Exception):
    """A mistake the user can fix (params, missing or bad files, settings)."""


class ConfigError(UserError):
    """params.yaml is missing, malformed or has a value out of range."""


class DataError(UserError):
    """A data or model file is missing, unreadable or does not fit the others."""


class DivergenceError(UserError):
    """Training produced a NaN or infinite loss."""
