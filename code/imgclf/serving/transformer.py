"""The toolkit ``Transformer`` wired to :mod:`imgclf.serving.handler`, with short JSON errors.

Two toolkit defaults are replaced:

- the handler functions come from :mod:`imgclf.serving.handler` directly, not from a user module
  found through ``SAGEMAKER_PROGRAM`` (which this image sets to ``train.py`` for training);
- ``handle_error`` answers ``{"error": ..., "status": ...}`` without the Python traceback the
  toolkit appends; the traceback goes to the server log instead.

(MMS requires the handler-service module to define exactly one class, so this lives here.)
"""

from __future__ import annotations

import json
import logging
import sys

from sagemaker_inference import content_types as toolkit_types
from sagemaker_inference.transformer import Transformer

from imgclf.serving import handler
from imgclf.serving.errors import BadRequest, ServingError

log = logging.getLogger("imgclf.serving")


def error_body(status: int, message: str) -> str:
    return json.dumps({"error": message, "status": status})


class ImgclfTransformer(Transformer):
    def _validate_user_module_and_set_functions(self):
        self._pre_model_fn = None
        self._model_warmup_fn = None  # model_fn already warms (handler.load_model)
        self._model_fn = handler.model_fn
        self._input_fn = handler.input_fn
        self._predict_fn = handler.predict_fn
        self._output_fn = handler.output_fn
        self._transform_fn = self._default_transform_fn

    @staticmethod
    def handle_error(context, inference_exception, trace):
        """Short JSON body with the status; the detail (and traceback) only in the log."""
        original = sys.exc_info()[1]  # still inside the toolkit's except block
        if isinstance(original, UnicodeDecodeError):
            err = BadRequest("body is not valid UTF-8 for its Content-Type")
        elif isinstance(original, ServingError):
            err = original
        elif isinstance(inference_exception, ServingError):
            err = inference_exception
        else:
            err = None
        if err is not None:
            status, phrase, message = err.status, err.phrase, err.message
            log.warning("request refused: %d %s", status, message)
        else:
            status, phrase = 500, "Internal Server Error"
            name = type(original or inference_exception).__name__
            message = f"internal error ({name}); details are in the server log"
            log.error("request failed: %s\n%s", inference_exception.message, trace)
        context.set_response_status(code=status, phrase=phrase)
        context.set_response_content_type(0, toolkit_types.JSON)
        return [error_body(status, message)]
