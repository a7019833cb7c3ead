"""The one exception type for errors a user can cause and fix; the CLI prints its message as one line."""


class SpectraError(Exception):
    """Bad input (path, config, checkpoint, option): the message names the thing and the fix."""
