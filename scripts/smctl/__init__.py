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
               (real-time, ``--serverless`` or ``--async``)
- ``client``    the one ``/invocations`` client: JSON batches, requests in flight, retries
- ``invoke``    InvokeEndpoint or a local ``/invocations`` URL, top-k table
- ``async_invoke`` ``invoke --async``: input to S3, InvokeEndpointAsync, wait for the result
- ``evaluate``  evaluation report of a model dir, a server or an endpoint on a labelled folder
- ``batch``     CreateModel + CreateTransformJob over an S3 prefix, progress and counts
- ``autoscale`` Application Auto Scaling: scalable target, target tracking, scale from zero
- ``cleanup``   delete scaling, endpoint, endpoint config and models
"""

__version__ = "0.1.0"
