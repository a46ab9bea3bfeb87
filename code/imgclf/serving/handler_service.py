"""The MMS handler service: MMS imports this module in each worker and instantiates its one
class (MMS refuses modules that define more than one), then calls ``initialize`` once - which
loads and warms the model - and ``handle`` per request."""

from __future__ import annotations

import logging

from sagemaker_inference.default_handler_service import DefaultHandlerService

from imgclf.serving import transformer

# MMS's worker logs a "[METRICS]PredictionTime..." line to stdout after every request (through
# this logger); the JVM reads and parses each one, and serve's log4j config drops them all
# (MODEL_METRICS off). Not writing them saves that per request (README "Batching"); the
# logger's warnings and errors (a failed prediction) still go out.
logging.getLogger("mms.service").setLevel(logging.WARNING)


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=transformer.ImgclfTransformer())
