"""The one exception type for problems with the user's input."""


class UserError(Exception):
    """Bad input (file, flag, config, checkpoint): the CLI prints it as one line and exits 2.

    The message names the file, key or shape at fault and what was expected.
    """
