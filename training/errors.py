"""The one error type the training CLI turns into a single clear line and a non-zero exit."""


class TrainingError(Exception):
    """A user-facing failure: bad corpus, bad options, a bundle that does not match its manifest."""
