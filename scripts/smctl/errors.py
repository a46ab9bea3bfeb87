"""Errors: everything that can go wrong becomes one line that says what to do, and an exit code.

``SmctlError`` is raised by smctl itself (bad settings, missing files, failed jobs).
:func:`explain` turns botocore/boto3 exceptions into the same shape, so ``cli.main`` prints
``smctl: error: <what happened> - <what to do>`` and exits non-zero, never a traceback.
"""

from __future__ import annotations

# Exit codes (documented in ``smctl --help``).
EXIT_ERROR = 1        # AWS refused, a job failed, data is broken
EXIT_USAGE = 2        # bad flags or settings (argparse uses 2 too)
EXIT_CREDENTIALS = 3  # no credentials / no region / access denied
EXIT_INTERRUPTED = 130


class SmctlError(Exception):
    """An error with a short message, a hint of what to do, and an exit code."""

    def __init__(self, message: str, hint: str = "", code: int = EXIT_ERROR):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code

    def line(self) -> str:
        return f"{self.message} - {self.hint}" if self.hint else self.message


class ConfigError(SmctlError):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message, hint, EXIT_USAGE)


#: Error codes with which AWS services say "no such resource" (S3 GetObject: NoSuchKey; S3
#: HeadObject: 404; Application Auto Scaling, CloudWatch: ObjectNotFound / ResourceNotFound).
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "ResourceNotFound", "ResourceNotFoundException",
                    "ObjectNotFoundException"}


def is_not_found(exc: BaseException) -> bool:
    """True when a botocore ClientError says the named resource does not exist.

    SageMaker has no not-found code: it answers ``ValidationException`` with "Could not find
    endpoint ..." (or "... does not exist" for some resources), so the message decides there.
    """
    err = (getattr(exc, "response", None) or {}).get("Error", {})
    code = str(err.get("Code", ""))
    if code in _NOT_FOUND_CODES:
        return True
    msg = str(err.get("Message", "")).lower()
    return code == "ValidationException" and ("could not find" in msg or "does not exist" in msg)


def _first_line(text: str) -> str:
    return " ".join(str(text).split())[:400]


def explain(exc: BaseException) -> SmctlError | None:
    """Map a boto3/botocore exception to a :class:`SmctlError`, or None if it is not one."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is a hard dependency
        return None
    if isinstance(exc, SmctlError):
        return exc
    if isinstance(exc, bx.NoRegionError):
        return SmctlError("no AWS region set",
                          "pass --region, or set SMCTL_REGION / AWS_REGION, or region in the config file",
                          EXIT_CREDENTIALS)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return SmctlError("no AWS credentials found",
                          "run 'aws configure' or 'aws sso login', or set AWS_PROFILE / "
                          "AWS_ACCESS_KEY_ID+AWS_SECRET_ACCESS_KEY", EXIT_CREDENTIALS)
    if isinstance(exc, bx.ProfileNotFound):
        return SmctlError(_first_line(exc), "check AWS_PROFILE / --profile against ~/.aws/config",
                          EXIT_CREDENTIALS)
    if isinstance(exc, (bx.TokenRetrievalError, bx.SSOTokenLoadError, bx.UnauthorizedSSOTokenError)):
        return SmctlError("AWS SSO session expired or missing", "run 'aws sso login'",
                          EXIT_CREDENTIALS)
    if isinstance(exc, bx.EndpointConnectionError):
        return SmctlError(_first_line(exc),
                          "check network access to AWS and that the region name is right")
    if isinstance(exc, bx.ParamValidationError):
        return SmctlError(f"request rejected before sending: {_first_line(exc)}",
                          "check the flags/config values named above", EXIT_USAGE)
    if isinstance(exc, bx.WaiterError):
        return SmctlError(_first_line(exc), "see the resource's status with 'smctl status'")
    if isinstance(exc, bx.ClientError):
        return _explain_client_error(exc)
    if isinstance(exc, bx.BotoCoreError):
        return SmctlError(_first_line(exc), "")
    return None


def _explain_client_error(exc) -> SmctlError:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", "Unknown"))
    msg = _first_line(err.get("Message", ""))
    op = getattr(exc, "operation_name", "") or "request"
    what = f"{op} failed: {code}: {msg}" if msg else f"{op} failed: {code}"
    low = msg.lower()
    if "debugger" in low and op in ("CreateTrainingJob", "CreateHyperParameterTuningJob"):
        return SmctlError(what, "this account cannot use SageMaker Debugger (closed to new "
                                "customers): turn it off - drop --debugger, or set debugger = "
                                "false / SMCTL_DEBUGGER=false, or pass --no-debugger (the job's "
                                "own rules and profiler report still run)", EXIT_USAGE)
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                "UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                "ExpiredToken", "ExpiredTokenException", "403"):
        if "expired" in code.lower() or "expired" in low:
            hint = "your AWS session expired: refresh credentials ('aws sso login' / new keys)"
        elif code in ("UnrecognizedClientException", "InvalidClientTokenId", "SignatureDoesNotMatch"):
            hint = "the access key is not valid in this account/region: check your credentials"
        else:
            hint = ("attach the operator policy from README 'IAM permissions' to your user/role "
                    "(or ask your admin)")
        return SmctlError(what, hint, EXIT_CREDENTIALS)
    if code == "ResourceLimitExceeded":
        return SmctlError(what, "request a quota increase in Service Quotas (SageMaker) for that "
                                "instance type, pick another --instance-type, or stop running jobs")
    if code == "ResourceInUse":
        return SmctlError(what, "the name is taken: pick another --name, or delete/stop the old one")
    if code in ("NoSuchBucket", "404") and "bucket" in (msg.lower() + op.lower()):
        return SmctlError(what, "create the bucket (aws s3 mb s3://NAME) or fix --bucket / SMCTL_BUCKET")
    if code == "NoSuchBucket":
        return SmctlError(what, "create the bucket (aws s3 mb s3://NAME) or fix --bucket / SMCTL_BUCKET")
    if code == "ValidationException":
        if "role" in low and ("assume" in low or "not authorized" in low or "does not exist" in low
                              or "arn" in low):
            return SmctlError(what, "create the execution role from README 'IAM permissions' and "
                                    "pass its ARN with --role-arn / SMCTL_ROLE_ARN")
        if "bucket" in low and ("not exist" in low or "not found" in low or "could not find" in low
                                or "no such" in low):
            return SmctlError(what, "create the bucket in this region (aws s3 mb s3://NAME) or fix "
                                    "--bucket / SMCTL_BUCKET")
        if "could not find" in low or "does not exist" in low:
            return SmctlError(what, "check the name (smctl status / the SageMaker console) and region")
        return SmctlError(what, "fix the value named in the message (flags, config file or env)",
                          EXIT_USAGE)
    if code in ("RepositoryNotFoundException",):
        return SmctlError(what, "run 'smctl build-push' (it creates the repository)")
    if code in ("ResourceNotFound", "ResourceNotFoundException", "NotFound"):
        return SmctlError(what, "check the name and the region")
    if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
        return SmctlError(what, "AWS is throttling: wait a minute and retry")
    if code in ("ModelError",):
        return SmctlError(what, "the model container answered with an error: check the endpoint's "
                                "CloudWatch logs (/aws/sagemaker/Endpoints/NAME)")
    return SmctlError(what, "")
