"""User-facing errors: the CLI prints their message as one line and exits 1."""


class UserError(Exception):
    """Something the user can fix (input, configuration), reported without a traceback."""
