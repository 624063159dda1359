"""Errors the user can understand: bad input (exit 2) and runtime problems (exit 1)."""


class InputError(ValueError):
    """A folder, file or option the user gave cannot be used; the message says which and why.

    The command line maps it to exit code 2 and prints only the message.
    """


class RuntimeProblem(Exception):
    """A failure outside the user's request (a journal, a disk): exit 1, no traceback."""
