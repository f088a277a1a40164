"""The one exception type for user errors.

A ``BincamError`` carries a single line that says what is wrong and what to do. The CLI prints it
without a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""


class BincamError(Exception):
    """A problem with the user's input (files, arguments, data), not a bug in bincam."""
