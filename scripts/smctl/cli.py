"""smctl: take the imgclf image through Amazon SageMaker (build-push, data, tune, train, deploy,
invoke, batch, autoscale, cleanup) with boto3.

Settings come from flags, ``SMCTL_*`` environment variables or one TOML config file
(``smctl config --example``); every command takes ``--dry-run``, which prints the exact API
requests as JSON (validated against botocore's service model) and sends nothing.

Exit codes: 0 ok, 1 AWS refused / a job or check failed, 2 bad flags or settings,
3 credentials / region / access denied, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

from smctl import __version__, cleanup, data, deploy, invoke, registry, training, tuning
from smctl import autoscale, batch, evaluate
from smctl.aws import Api, ClientFactory
from smctl.config import EXAMPLE_CONFIG, Settings, load_settings, load_state, state_path
from smctl.errors import EXIT_INTERRUPTED, explain

_SETTING_FLAGS = {f for f in Settings.__dataclass_fields__
                  if f not in ("hyperparameters", "tune", "sources", "config_path")}


def common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("settings (flag > SMCTL_* env > config file)")
    g.add_argument("--config", help="TOML config file (default: $SMCTL_CONFIG, else ./smctl.toml)")
    g.add_argument("--region", help="AWS region (SMCTL_REGION, else AWS_REGION / profile)")
    g.add_argument("--profile", help="AWS profile (SMCTL_PROFILE, else AWS_PROFILE)")
    g.add_argument("--role-arn", dest="role_arn", help="SageMaker execution role ARN (SMCTL_ROLE_ARN)")
    g.add_argument("--bucket", help="S3 bucket for data, outputs, checkpoints (SMCTL_BUCKET)")
    g.add_argument("--prefix", help="S3 key prefix (SMCTL_PREFIX, default: imgclf)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the exact API requests as JSON and send nothing")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"smctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [common_parser()]

    c = sub.add_parser("config", parents=parents, help="show the resolved settings and where each "
                                                       "comes from")
    c.add_argument("--example", action="store_true", help="print an example smctl.toml")
    c.set_defaults(func=run_config)

    registry.add_parser(sub, parents)
    data.add_parser(sub, parents)
    tuning.add_parser(sub, parents)
    training.add_parser(sub, parents)
    deploy.add_parser(sub, parents)
    invoke.add_parser(sub, parents)
    evaluate.add_parser(sub, parents)
    batch.add_parser(sub, parents)
    autoscale.add_parser(sub, parents)
    cleanup.add_parser(sub, parents)
    return parser


def run_config(args, settings: Settings, api: Api) -> int:
    if args.example:
        print(EXAMPLE_CONFIG, end="")
        return 0
    print(f"config file: {settings.config_path or '(none)'}")
    for name in sorted(_SETTING_FLAGS):
        print(f"{name:<22} {getattr(settings, name)!s:<48} [{settings.sources.get(name)}]")
    if settings.hyperparameters:
        print("hyperparameters        " + json.dumps(settings.hyperparameters))
    print("tune ranges            " + json.dumps(settings.tune_ranges()))
    state = load_state()
    if state:
        print(f"remembered ({state_path()}): " + json.dumps(state))
    return 0


def _json_default(o):
    if isinstance(o, (bytes, bytearray)):
        return f"<{len(o)} bytes>"
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def main(argv: Sequence[str] | None = None, client_factory: ClientFactory | None = None) -> int:
    args = build_parser().parse_args(argv)
    api = None
    try:
        flags = {k: v for k, v in vars(args).items() if k in _SETTING_FLAGS and v is not None}
        settings = load_settings(flags, getattr(args, "config", None))
        api = Api(settings, dry_run=getattr(args, "dry_run", False), client_factory=client_factory)
        rc = args.func(args, settings, api)
        if api.dry_run:
            print(json.dumps(api.requests, indent=2, default=_json_default))
        return rc
    except KeyboardInterrupt:
        sent = sorted(set(api.created)) if api is not None else []
        print("smctl: interrupted" + (f"; what it created on AWS ({', '.join(sent)}) is still "
                                      f"there" if sent else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - mapped to one line below, else re-raised
        err = explain(exc)
        if err is None:
            raise
        print(f"smctl: error: {err.line()}", file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
