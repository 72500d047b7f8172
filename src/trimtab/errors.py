"""One exception type for problems the user can fix; the CLI prints it without a traceback."""


class TrimtabError(Exception):
    """A problem with the user's input or setup; the message names the problem and the fix."""
