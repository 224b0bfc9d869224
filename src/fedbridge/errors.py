"""Errors a user can cause and fix. The CLI prints their message and exits with their code;
anything else reaching the user as a traceback is a bug."""


class FedbridgeError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""

    exit_code = 1


class ConfigError(FedbridgeError):
    """A config file, --set override or flag is wrong; raised before any training starts."""

    exit_code = 2


class DataError(FedbridgeError):
    """A dataset file is missing, truncated, corrupt or fails its checksum."""

    exit_code = 1
