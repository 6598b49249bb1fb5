"""Error types shared by the whole toolkit."""


class DataError(ValueError):
    """Bad input: the message is one line naming the file or object and the problem."""


def raise_first(problems: list[tuple[bool, str]]) -> None:
    """DataError with the message of the first (condition, message) pair whose condition holds."""
    for bad, message in problems:
        if bad:
            raise DataError(message)
