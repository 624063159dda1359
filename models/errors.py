"""The one error type the learning side raises for input a user can fix."""


class InputError(ValueError):
    """A folder, file or option the user gave cannot be used; the message says which and why.

    The command line maps it to exit code 2 and prints only the message.
    """
