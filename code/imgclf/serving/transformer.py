"""The toolkit ``Transformer`` wired to :mod:`imgclf.serving.handler`, with short JSON errors.

Two toolkit defaults are replaced:

- the handler functions come from :mod:`imgclf.serving.handler` directly, not from a user module
  found through ``SAGEMAKER_PROGRAM`` (which this image sets to ``train.py`` for training);
- ``handle_error`` answers ``{"error": ..., "status": ...}`` without the Python traceback the
  toolkit appends; the traceback goes to the server log instead;
- ``transform`` takes the whole list MMS hands over when the model is registered with a batch
  size (``serve`` does): each request is parsed with ITS OWN headers (the toolkit reads the
  first request's headers for every item), all good requests run as one forward
  (:func:`imgclf.serving.handler.predict_batch`), and each gets its own status, content type
  and body - a bad image fails only its own request.

No response header is set per request, not even Content-Type (every body is JSON; the front
labels it). MMS 1.1.11's Java decoder of a worker's reply reads each request's header map with
"what has arrived so far" as the length limit, so a reply split across socket reads inside a
header map is taken for a corrupt frame and the worker is killed (seen: "Message size exceed
limit: 19" with a batch of 48, then 500 "Worker died." for the whole batch).

(MMS requires the handler-service module to define exactly one class, so this lives here.)
"""

from __future__ import annotations

import json
import logging
import sys

import traceback

from sagemaker_inference import utils
from sagemaker_inference.errors import GenericInferenceToolkitError
from sagemaker_inference.transformer import Transformer

from imgclf.serving import content_types, handler
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

    def transform(self, data, context):
        try:
            self.validate_and_initialize(model_dir=context.system_properties.get("model_dir"),
                                         context=context)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            trace = traceback.format_exc()
            return [self._error(context, i, e, trace) for i in range(len(data))]
        out: list = [None] * len(data)
        parsed: list[tuple[int, handler.InferenceRequest, str | None]] = []
        for i, item in enumerate(data):
            headers = context.get_all_request_header(i) or {}
            accept = content_types.header(headers, "Accept")
            try:
                request = handler.parse_request(item.get("body"),
                                                utils.retrieve_content_type_header(headers),
                                                headers)
                parsed.append((i, request, accept))
            except Exception as e:  # noqa: BLE001 - mapped to this request's status
                out[i] = self._error(context, i, e, traceback.format_exc())
        try:
            results = handler.predict_batch([r for _, r, _ in parsed], self._model)
        except Exception as e:  # noqa: BLE001 - the forward itself failed: every request 500
            trace = traceback.format_exc()
            for i, _, _ in parsed:
                out[i] = self._error(context, i, e, trace)
            return out
        if len(parsed) > 1:
            log.info("one forward for %d requests (%d images)", len(parsed),
                     sum(len(r.images) for _, r, _ in parsed))
        for (i, _, accept), result in zip(parsed, results):
            try:
                if isinstance(result, Exception):
                    raise result
                out[i] = handler.output_fn(result, accept)[0]  # always JSON (see module doc)
            except Exception as e:  # noqa: BLE001
                out[i] = self._error(context, i, e, traceback.format_exc())
        return out

    @classmethod
    def _error(cls, context, idx: int, exc: Exception, trace: str) -> str:
        wrapped = exc if isinstance(exc, GenericInferenceToolkitError) else \
            GenericInferenceToolkitError(500, str(exc))
        return cls.handle_error(context, wrapped, trace, original=exc, idx=idx)[0]

    @staticmethod
    def handle_error(context, inference_exception, trace, original=None, idx: int = 0):
        """Short JSON body with the status; the detail (and traceback) only in the log."""
        if original is None:
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
        context.set_response_status(code=status, phrase=phrase, idx=idx)
        return [error_body(status, message)]
