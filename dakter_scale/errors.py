"""The one base of the errors a user can fix. It imports nothing, so every layer may raise one."""


class UserError(Exception):
    """An input a user can fix: a config key, a flag, a data spec, a file, a folder, an output
    location; the message names it. The CLI (``cli.run``) prints the message as one line,
    ``error: <message>``, and exits 2. Every other exception is a bug and keeps its traceback.

    Each area subclasses it (ConfigError, DataError, ...), keeping a built-in second base
    (ValueError, RuntimeError, FileNotFoundError, PermissionError) where callers catch that.
    """
