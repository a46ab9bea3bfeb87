"""Client errors mapped to HTTP status codes.

They subclass the toolkit's ``GenericInferenceToolkitError`` so the ``Transformer`` sets the
status; :mod:`imgclf.serving.transformer` turns them into a short JSON body (no traceback).
"""

from __future__ import annotations

from sagemaker_inference.errors import GenericInferenceToolkitError


def error_doc(status: int, message: str) -> dict:
    """The JSON body of every error this server answers, the front's and the workers'."""
    return {"error": message, "status": status}


class ServingError(GenericInferenceToolkitError):
    """A request the server refuses; ``message`` goes to the client as is, so keep it short."""

    status = 500
    phrase = "Internal Server Error"

    def __init__(self, message: str):
        super().__init__(self.status, message, self.phrase)


class BadRequest(ServingError):
    """Empty body, undecodable image, malformed JSON or base64, bad top-k."""

    status, phrase = 400, "Bad Request"


class NotAcceptable(ServingError):
    """The ``Accept`` header asks for a type the server cannot produce."""

    status, phrase = 406, "Not Acceptable"


class PayloadTooLarge(ServingError):
    """The body or the number of images is over the configured limit."""

    status, phrase = 413, "Payload Too Large"


class UnsupportedMediaType(ServingError):
    """The ``Content-Type`` is not one the handler reads."""

    status, phrase = 415, "Unsupported Media Type"
