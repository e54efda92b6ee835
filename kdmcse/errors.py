"""The one error type that user-facing problems are reported with."""


class KdmcseError(RuntimeError):
    """A problem with the user's input (config, files, caches) that the message explains how to fix.

    `python -m kdmcse` prints these as one line without a traceback and exits with status 2.
    """
