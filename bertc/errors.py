"""The error types a user can cause; the CLI prints their message without a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message says what was wrong, where, and what to do."""


class ModelError(UserError):
    """The input model cannot be read, or is not a google-research-style BERT classifier."""


class ConfigError(UserError):
    """A config value matches nothing, or contradicts another."""


def first_line(error: BaseException) -> str:
    """An exception's first line, at most 200 characters (TensorFlow's messages run to pages)."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
