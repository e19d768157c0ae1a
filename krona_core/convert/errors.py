"""The converters' error."""


class ConvertError(ValueError):
    """A source file that cannot be converted; the message names the file and key."""
