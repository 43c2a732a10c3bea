"""One exception type for problems the user can fix; the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """A bad input, setting or artefact, with a message that says what to do."""
