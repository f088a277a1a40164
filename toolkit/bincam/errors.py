"""The one exception type for user errors.

A ``BincamError`` carries a single line that says what is wrong and what to do. The CLI prints it
without a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""


class BincamError(Exception):
    """A problem with the user's input (files, arguments, data), not a bug in bincam."""


class OwnGraphError(BincamError):
    """A graph bincam appended (gradients, explanations) is invalid: bincam's bug, not the user's
    model; worded so, one line, with where to report it."""

    def __init__(self, reason: str):
        super().__init__(f"bincam's appended gradient graph is invalid ({reason}); please report "
                         "this at the bincam issue tracker, with the model and `pip show bincam`")
