"""Errors the user caused: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a config key, a path, a file): shown as one line, no traceback."""


class ConfigError(UserError, ValueError):
    """A config that fails validation; the message names the key and what is expected."""
