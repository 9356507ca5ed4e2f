"""`ConfigError`: an invalid configuration, reported in one line naming the file and key.

Its own module so that `config.py` and the modules whose checks it calls (`fsdp.py`) both import it
without importing each other; `config.py` re-exports it.
"""


class ConfigError(ValueError):
    """Invalid configuration; the message names the file and key."""
