"""The MMS handler service: MMS imports this module in each worker and instantiates its one
class (MMS refuses modules that define more than one), then calls ``initialize`` once - which
loads and warms the model - and ``handle`` per request."""

from __future__ import annotations

from sagemaker_inference.default_handler_service import DefaultHandlerService

from imgclf.serving import transformer


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=transformer.ImgclfTransformer())
