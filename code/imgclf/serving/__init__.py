"""Serving on SageMaker hosting: multi-model-server (MMS) through sagemaker-inference.

One module per concern of the serving contract:

- ``settings``         environment variables with named defaults (port, workers, limits, paths)
- ``content_types``    accepted request types, ``Accept`` negotiation, custom attributes
- ``errors``           exceptions mapped to HTTP status codes (400/406/413/415)
- ``handler``          ``model_fn`` / ``input_fn`` / ``predict_fn`` / ``output_fn``
- ``transformer``      the toolkit ``Transformer`` wired to ``handler``: batched requests, short
                       JSON errors
- ``handler_service``  the one class MMS loads in each worker
- ``plan``             workers x torch threads that fit the container's CPUs / GPUs
- ``fastpath``         the inference path chosen at load (optimised, checked against eager)
- ``front``            the HTTP front on the public port (aiohttp): truthful /ping, framing and
                       size checks, /execution-parameters, draining on SIGTERM
- ``server``           ``python -m imgclf.serving.server``: pre-flight check, MMS, signals
"""
