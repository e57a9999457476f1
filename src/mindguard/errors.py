"""User-facing errors: one exception type whose message is a complete, one-line explanation.

The CLI prints `mindguard: error: <message>` and exits non-zero for these; anything else is a bug.
"""


class MindGuardError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class DataError(MindGuardError):
    """Malformed or invalid data (file, line, field named in the message)."""


class MissingExtraError(MindGuardError):
    """A command needs an optional dependency group that is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"this needs the optional dependency '{module}': install it with "
            f"pip install 'mindguard[{extra}]'"
        )


def require(module: str, extra: str) -> object:
    """Import `module` or raise a MissingExtraError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(extra, module) from exc
