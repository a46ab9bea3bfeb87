"""The toolkit ``Transformer`` wired to :mod:`imgclf.serving.handler`, with short JSON errors.

Two toolkit defaults are replaced:

- the handler functions come from :mod:`imgclf.serving.handler` directly, not from a user module
  found through ``SAGEMAKER_PROGRAM`` (which this image sets to ``train.py`` for training);
- ``transform`` answers every request MMS hands over (one, or several when the model is
  registered with a batch size) and every part of a bundle the front sent
  (:mod:`imgclf.serving.bundle`): each request is parsed with ITS OWN headers (the toolkit
  reads the first request's headers for every item), all good requests run as one forward
  (:func:`imgclf.serving.handler.predict_batch`), and each gets its own status and body - a
  bad image fails only its own request. Errors are ``{"error": ..., "status": ...}`` without the
  Python traceback the toolkit appends; the traceback goes to the server log instead.

No response header is set per request, not even Content-Type (the front labels each answer:
a 200 with the type its request's ``Accept`` negotiated, JSON or JSON Lines, an error JSON).
MMS 1.1.11's Java decoder of a worker's reply reads each request's header map with
"what has arrived so far" as the length limit, so a reply split across socket reads inside a
header map is taken for a corrupt frame and the worker is killed (seen: "Message size exceed
limit: 19" with a batch of 48, then 500 "Worker died." for the whole batch).

(MMS requires the handler-service module to define exactly one class, so this lives here.)
"""

from __future__ import annotations

import json
import logging
import traceback

from sagemaker_inference import utils
from sagemaker_inference.transformer import Transformer

from imgclf.serving import bundle, content_types, handler
from imgclf.serving.errors import BadRequest, ServingError, error_doc

log = logging.getLogger("imgclf.serving")


def error_body(status: int, message: str) -> str:
    return json.dumps(error_doc(status, message))


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
        """One answer per MMS request; a bundle from the front (:mod:`imgclf.serving.bundle`)
        is answered part by part inside one reply. Every request of every bundle shares one
        forward."""
        headers = [context.get_all_request_header(i) or {} for i in range(len(data))]
        requests: list[tuple[object, dict]] = []  # (body, headers), bundles expanded
        spans: list[tuple[int, int] | Exception | None] = []  # per MMS item: parts, or None
        for item, h in zip(data, headers):
            if not bundle.is_bundle(h):
                spans.append(None)
                requests.append((item.get("body"), h))
                continue
            try:
                parts = bundle.decode(item.get("body") or b"")
            except ValueError as e:
                spans.append(BadRequest(f"malformed bundle: {e}"))
                continue
            spans.append((len(requests), len(requests) + len(parts)))
            requests.extend((body, meta.get("headers") or {}) for meta, body in parts)
        answers = self.answer(requests, context)
        out, k = [], 0
        for i, span in enumerate(spans):
            if span is None:
                status, phrase, body = answers[k]
                k += 1
            elif isinstance(span, Exception):
                status, phrase, body = self.failure(span, "")
            else:
                mine = answers[span[0]:span[1]]
                k = span[1]
                status, phrase = 200, "OK"
                body = bundle.encode([({"status": st}, b.encode()) for st, _, b in mine])
            context.set_response_status(code=status, phrase=phrase, idx=i)
            out.append(body)
        return out

    def answer(self, requests: list[tuple[object, dict]], context) -> list[tuple[int, str, str]]:
        """``(status, phrase, JSON body)`` for each ``(body, headers)``: each parsed with ITS
        OWN headers, all good ones in one forward, a bad one failing only itself."""
        try:
            self.validate_and_initialize(model_dir=context.system_properties.get("model_dir"),
                                         context=context)
        except Exception as e:  # noqa: BLE001 - every request gets the error
            trace = traceback.format_exc()
            return [self.failure(e, trace) for _ in requests]
        out: list = [None] * len(requests)
        parsed: list[tuple[int, handler.InferenceRequest, str | None]] = []
        for i, (body, headers) in enumerate(requests):
            accept = content_types.header(headers, "Accept")
            try:
                request = handler.parse_request(body, utils.retrieve_content_type_header(headers),
                                                headers)
                parsed.append((i, request, accept))
            except Exception as e:  # noqa: BLE001 - mapped to this request's status
                out[i] = self.failure(e, traceback.format_exc())
        try:
            results = handler.predict_batch([r for _, r, _ in parsed], self._model)
        except Exception as e:  # noqa: BLE001 - the forward itself failed: every request 500
            trace = traceback.format_exc()
            for i, _, _ in parsed:
                out[i] = self.failure(e, trace)
            return out
        if len(parsed) > 1:
            log.info("one forward for %d requests (%d images)", len(parsed),
                     sum(len(r.images) for _, r, _ in parsed))
        for (i, _, accept), result in zip(parsed, results):
            try:
                if isinstance(result, Exception):
                    raise result
                out[i] = (200, "OK", handler.output_fn(result, accept)[0])  # JSON or JSON Lines
            except Exception as e:  # noqa: BLE001
                out[i] = self.failure(e, traceback.format_exc())
        return out

    @staticmethod
    def failure(exc: Exception, trace: str) -> tuple[int, str, str]:
        """``(status, phrase, short JSON body)`` for an exception; the detail (and traceback)
        only in the log."""
        if isinstance(exc, UnicodeDecodeError):
            exc = BadRequest("body is not valid UTF-8 for its Content-Type")
        if isinstance(exc, ServingError):
            log.warning("request refused: %d %s", exc.status, exc.message)
            return exc.status, exc.phrase, error_body(exc.status, exc.message)
        log.error("request failed: %s\n%s", exc, trace)
        message = f"internal error ({type(exc).__name__}); details are in the server log"
        return 500, "Internal Server Error", error_body(500, message)
