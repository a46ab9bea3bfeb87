"""smctl: the operator CLI that takes the imgclf image through Amazon SageMaker with boto3.

One module per concern; ``cli`` only parses arguments and dispatches:

- ``config``    settings from flags, ``SMCTL_*`` environment variables and one TOML config file
- ``aws``       boto3 clients, ``--dry-run`` (validate against botocore's model, print, send nothing)
- ``errors``    AWS/botocore errors -> one line that says what to do, and an exit code
- ``registry``  ``build-push``: ECR repository, docker login/tag/push (or any registry)
- ``data``      fetch, verify and upload image-folder datasets
- ``tuning``    CreateHyperParameterTuningJob, progress, best job table
- ``training``  CreateTrainingJob: Debugger rules, profiler, spot + checkpoints, logs, status
- ``deploy``    CreateModel / CreateEndpointConfig / CreateEndpoint or UpdateEndpoint
- ``client``    the one ``/invocations`` client: JSON batches, requests in flight, retries
- ``invoke``    InvokeEndpoint or a local ``/invocations`` URL, top-k table
- ``evaluate``  evaluation report of a model dir, a server or an endpoint on a labelled folder
- ``cleanup``   delete endpoint, endpoint config and models
"""

__version__ = "0.1.0"
