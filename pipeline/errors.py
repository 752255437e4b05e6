"""The one exception type a user can cause (part of the contracts layer: imports nothing).

Everything a user can get wrong (a bad option, a missing or corrupt file, parameters off the grid)
raises :class:`SpecdenoiseError` with a one-line message that names the thing and what to do.
The CLI prints that line and exits with status 2, without a traceback.
"""


class SpecdenoiseError(Exception):
    """A user-facing error; its message is one line meant for the person at the terminal."""
