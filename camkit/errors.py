"""The one exception type the CLI turns into a single line on stderr."""


class CamkitError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""


class Interrupted(CamkitError):
    """The user stopped the work (Ctrl-C) and camkit kept what it could: the sentence says what.
    The CLI exits 130 with it, as for any other Ctrl-C."""
