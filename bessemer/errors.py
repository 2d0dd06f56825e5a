"""Errors the CLI turns into one line: each message names the file, key or tensor and the fix."""


class BessemerError(Exception):
    """Base class for errors a user can act on; the CLI prints the message and exits non-zero."""


class ConfigError(BessemerError):
    """A config file, key or value is wrong."""


class DataError(BessemerError):
    """Input data or a prepared dataset is missing, malformed or does not match."""


class CheckpointError(BessemerError):
    """A checkpoint is missing, incomplete or of another model shape."""


class ConversionError(BessemerError):
    """A Hugging Face folder cannot be converted as asked."""


class TokenizerError(BessemerError):
    """A tokenizer folder cannot be loaded."""
