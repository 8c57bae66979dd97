"""The error types a user can cause; the CLI prints their message without a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message says what was wrong, where, and what to do."""


class ModelError(UserError):
    """The input model cannot be read, or is not a google-research-style BERT classifier."""


class ConfigError(UserError):
    """A config value matches nothing, or contradicts another."""
