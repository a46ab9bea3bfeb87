"""boto3 access for every command, and ``--dry-run``.

Every AWS request goes through :meth:`Api.call`. With ``dry_run`` the request is validated
against botocore's own service model (the same check the client runs before sending), recorded
in :attr:`Api.requests`, and nothing is sent: ``cli`` prints the list as JSON at the end.
Local side effects that ``--dry-run`` also skips (docker commands, file uploads) are recorded
the same way with :meth:`Api.record`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from smctl.config import Settings
from smctl.errors import EXIT_CREDENTIALS, SmctlError

ClientFactory = Callable[[str, str], Any]  # (service, region) -> botocore client


def _boto3():
    import boto3  # imported lazily so `smctl --help` and `data verify` start fast
    return boto3


class Api:
    def __init__(self, settings: Settings, dry_run: bool = False,
                 client_factory: ClientFactory | None = None, log=None):
        self.settings = settings
        self.dry_run = dry_run
        self.requests: list[dict[str, Any]] = []
        self.created: list[str] = []  # Create* operations sent (not dry-run): what outlives smctl
        self._factory = client_factory
        self._clients: dict[str, Any] = {}
        self._session = None
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    # -- session, region, clients ------------------------------------------------------
    @property
    def session(self):
        if self._session is None:
            self._session = _boto3().Session(profile_name=self.settings.profile)
        return self._session

    @property
    def region(self) -> str:
        # botocore reads AWS_DEFAULT_REGION and the profile, not AWS_REGION (which other AWS
        # tools set): honour it too.
        region = (self.settings.region or os.environ.get("AWS_REGION")
                  or (None if self._factory else self.session.region_name))
        if not region:
            raise SmctlError("no AWS region set",
                             "pass --region, or set SMCTL_REGION / AWS_REGION, or region in the "
                             "config file", EXIT_CREDENTIALS)
        return region

    @property
    def partition_domain(self) -> str:
        return "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"

    def client(self, service: str):
        if service not in self._clients:
            if self._factory is not None:
                self._clients[service] = self._factory(service, self.region)
            else:
                from botocore.config import Config
                cfg = Config(retries={"mode": "standard", "max_attempts": 5},
                             user_agent_extra="smctl/0.1")
                self._clients[service] = self.session.client(service, region_name=self.region,
                                                             config=cfg)
        return self._clients[service]

    # -- requests ------------------------------------------------------------------------
    def call(self, service: str, method: str, **params: Any) -> dict[str, Any] | None:
        """Send ``service.method(**params)``; with dry_run validate + record it and return None."""
        if self.dry_run:
            op = validate_request(service, method, params)
            self.requests.append({"service": service, "operation": op, "region": self.region,
                                  "request": params})
            return None
        client = self.client(service)
        out = getattr(client, method)(**params)
        if method.startswith("create_"):
            self.created.append(client.meta.method_to_api_mapping.get(method, method))
        return out

    def record(self, kind: str, **details: Any) -> None:
        """Record a non-AWS side effect (a docker command, a local file write) for dry-run output."""
        self.requests.append({"action": kind, **details})


_models: dict[str, Any] = {}


def service_model(service: str):
    if service not in _models:
        import botocore.session
        _models[service] = botocore.session.get_session().get_service_model(service)
    return _models[service]


def validate_request(service: str, method: str, params: dict[str, Any]) -> str:
    """Validate ``params`` for ``method`` against botocore's model; return the API operation name.

    Raises botocore's ParamValidationError exactly as a real client call would.
    """
    from botocore import xform_name
    from botocore.exceptions import ParamValidationError
    from botocore.validate import ParamValidator

    model = service_model(service)
    for name in model.operation_names:
        if xform_name(name) == method:
            break
    else:
        raise SmctlError(f"{service} has no operation {method}")
    shape = model.operation_model(name).input_shape
    report = ParamValidator().validate(params, shape) if shape is not None else None
    if report is not None and report.has_errors():
        raise ParamValidationError(report=report.generate_report())
    return name
