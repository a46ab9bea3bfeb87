"""SageMaker inference entry point: model_fn / input_fn / predict_fn / output_fn.

Thin over :mod:`imgclf.serving.handler`, where the formats are documented. This image's ``serve``
(``python -m imgclf.serving.server``) wires the same functions into multi-model-server directly;
this file is for hosts that look for ``inference.py`` (e.g. ``SAGEMAKER_PROGRAM=inference.py``).
"""

from imgclf.serving.handler import input_fn, model_fn, output_fn, predict_fn

__all__ = ["model_fn", "input_fn", "predict_fn", "output_fn"]
