"""Python client and `nextword` command line for the nextword next-word-prediction service.
Talks to it over HTTP only; knows nothing of models, Redis or Flask.

    from nextword_client import Client, SessionNotFound
"""

from nextword_client.client import Client, Generation, Token, split_typed
from nextword_client.errors import ERROR_CLASSES, APIError, NextwordError, StreamInterrupted, TransportError

globals().update({cls.__name__: cls for cls in ERROR_CLASSES})  # SessionNotFound, InvalidInput, ...

__all__ = ["Client", "Generation", "Token", "split_typed", "NextwordError", "APIError", "TransportError", "StreamInterrupted",
           *(cls.__name__ for cls in ERROR_CLASSES)]
