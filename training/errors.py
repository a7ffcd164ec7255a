"""The one error type the training CLI turns into a single clear line and a non-zero exit."""


class TrainingError(Exception):
    """A user-facing failure: bad corpus, bad options, a bundle that does not match its manifest."""


def first_line(error: BaseException) -> str:
    """The first line of a library's (often multi-paragraph) error message, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
