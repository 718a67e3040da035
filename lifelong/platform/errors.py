"""The one exception type the command line turns into a clear one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a file, a field, a name): the message names the problem and what is allowed."""
