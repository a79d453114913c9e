"""The one exception type the CLI turns into a single line on stderr."""


class CamkitError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""
