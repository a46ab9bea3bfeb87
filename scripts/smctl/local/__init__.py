"""smctl's local side: SageMaker jobs on this machine.

- ``runner``  the one local job runner: /opt/ml trees, launch on the host or in the image, log,
  stop; the serving container for a local batch transform
- ``tuning``  ``smctl tune --local``: a SageMaker-style tuning job on Optuna, trials as jobs
- ``__main__`` ``python -m smctl.local train``: one training job (``make local-train``, the demo)
"""
