"""Error types shared by the whole toolkit."""


class DataError(ValueError):
    """Bad input: the message is one line naming the file or object and the problem."""
