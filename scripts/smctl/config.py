"""Settings: command-line flags > ``SMCTL_*`` environment variables > one TOML config file > defaults.

Nothing account-specific (account IDs, buckets, role ARNs, endpoint names) has a default: a
command that needs one and finds none stops with a line naming the flag, variable and key.

The config file is ``--config PATH``, else ``$SMCTL_CONFIG``, else ``./smctl.toml`` if present.
Example (``smctl config --example`` prints a fuller one)::

    region = "us-east-1"
    role_arn = "arn:aws:iam::123456789012:role/imgclf-sagemaker-execution"
    bucket = "my-imgclf-bucket"
    prefix = "imgclf"

    [hyperparameters]
    epochs = 10
    arch = "resnet18"

    [tune.ranges]
    lr = { type = "continuous", min = 0.001, max = 0.01, scaling = "Logarithmic" }
    batch-size = { type = "categorical", values = [128, 256, 512] }
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from imgclf.config import SEED_SEARCH_SPACE
from imgclf.options import str2bool
from smctl.errors import ConfigError

DEFAULT_CONFIG_NAME = "smctl.toml"
ENV_PREFIX = "SMCTL_"

#: The seed project's search space (lr continuous, batch size categorical), defined once next to
#: the training flags it tunes.
SEED_RANGES: dict[str, dict[str, Any]] = SEED_SEARCH_SPACE


@dataclass
class Settings:
    # Where and as whom.
    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    bucket: str | None = None
    prefix: str = "imgclf"
    # The image.
    image_uri: str | None = None
    repository: str = "imgclf-sagemaker"
    # Training and tuning compute.
    train_instance_type: str = "ml.g4dn.xlarge"
    train_instance_count: int = 1
    train_volume_gb: int = 50
    max_runtime_s: int = 24 * 3600
    max_wait_s: int = 48 * 3600          # spot: runtime + time spent waiting for capacity
    rule_instance_type: str | None = None  # None: SageMaker picks (built-in rules)
    debugger: bool = False               # True: SageMaker Debugger rules/hook/profiler (train --debugger)
    # Hosting.
    endpoint_name: str | None = None
    serve_instance_type: str = "ml.g4dn.xlarge"
    serve_instance_count: int = 1
    inference_ami_version: str = "al2-ami-sagemaker-inference-gpu-3-1"
    # Data.
    data_url: str = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
    # Tables.
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, Any] = field(default_factory=dict)
    # Where each value came from (for ``smctl config``).
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    config_path: str | None = None

    # -- derived -------------------------------------------------------------------------
    def require(self, name: str, what: str = "") -> Any:
        value = getattr(self, name)
        if value in (None, ""):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{name} is not set{(' (' + what + ')') if what else ''}",
                              f"pass {flag}, set {ENV_PREFIX}{name.upper()}, or add "
                              f"{name} = \"...\" to {self.config_path or DEFAULT_CONFIG_NAME}")
        return value

    def s3_uri(self, *parts: str) -> str:
        """``s3://bucket/prefix/part/...`` with no doubled slashes."""
        bucket = self.require("bucket", "S3 bucket for data and artifacts")
        keys = [p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/")]
        return "s3://" + "/".join([bucket, *keys])

    def tune_ranges(self) -> dict[str, dict[str, Any]]:
        return dict(self.tune.get("ranges") or SEED_RANGES)

    def public(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("sources",)}
        return out


_SCALARS = {f.name: f for f in fields(Settings)
            if f.name not in ("hyperparameters", "tune", "sources", "config_path")}


def _coerce(name: str, value: Any) -> Any:
    f = _SCALARS[name]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if value is None:
        return None
    if kind.startswith("bool"):
        try:
            return str2bool(value)
        except argparse.ArgumentTypeError:
            raise ConfigError(f"{name} must be true or false, got {value!r}") from None
    if kind.startswith("int"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    return str(value)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}",
                          "fix --config / SMCTL_CONFIG") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError("TOML config files need Python 3.11+",
                          "use a .json config file with the same keys") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def find_config(explicit: str | None, env: dict[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get(ENV_PREFIX + "CONFIG"):
        return Path(env[ENV_PREFIX + "CONFIG"])
    default = Path.cwd() / DEFAULT_CONFIG_NAME
    return default if default.is_file() else None


def load_settings(flags: dict[str, Any] | None = None, config: str | None = None,
                  env: dict[str, str] | None = None) -> Settings:
    """Resolve settings. ``flags`` holds only the flags the user actually gave (not None)."""
    env = dict(os.environ if env is None else env)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    s = Settings()
    for name in _SCALARS:
        s.sources[name] = "default"

    path = find_config(config, env)
    if path is not None:
        data = _read_file(path)
        s.config_path = str(path)
        unknown = set(data) - set(_SCALARS) - {"hyperparameters", "tune"}
        if unknown:
            raise ConfigError(f"unknown key(s) in {path}: {', '.join(sorted(unknown))}",
                              f"known keys: {', '.join(sorted(_SCALARS))}, [hyperparameters], [tune]")
        for name, value in data.items():
            if name in _SCALARS:
                setattr(s, name, _coerce(name, value))
                s.sources[name] = f"config {path}"
        s.hyperparameters = dict(data.get("hyperparameters") or {})
        s.tune = dict(data.get("tune") or {})

    for name in _SCALARS:
        key = ENV_PREFIX + name.upper()
        if env.get(key, "") != "":
            setattr(s, name, _coerce(name, env[key]))
            s.sources[name] = f"env {key}"

    for name, value in flags.items():
        if name in _SCALARS:
            setattr(s, name, _coerce(name, value))
            s.sources[name] = "flag"
    return s


EXAMPLE_CONFIG = '''\
# smctl config: ./smctl.toml, or --config PATH, or $SMCTL_CONFIG. Flags and SMCTL_* env win.
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/imgclf-sagemaker-execution"
bucket = "my-imgclf-bucket"            # must exist, in the same region
prefix = "imgclf"                      # every S3 key smctl writes starts with this
# image_uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/imgclf-sagemaker:abc123"  # else: last build-push
repository = "imgclf-sagemaker"        # ECR repository for build-push
train_instance_type = "ml.g4dn.xlarge"
serve_instance_type = "ml.g4dn.xlarge"
endpoint_name = "imgclf-dogs"
# debugger = true                      # SageMaker Debugger rules + ProfilerReport (accounts with access)
# inference_ami_version = "al2-ami-sagemaker-inference-gpu-3-1"  # GPU hosts only (CUDA 12.8 image)

[hyperparameters]                      # static hyperparameters for tune and train
epochs = 10
arch = "resnet18"
weights = "auto"                       # imagenet, or the pretrained channel (train --pretrained S3_URI)
optimizer = "sgd"
lr-schedule = "cosine"
amp = "auto"                           # auto | bf16 | fp16 | off

[tune]
strategy = "Bayesian"                  # Bayesian | Random | Hyperband | Grid
max_jobs = 4
max_parallel_jobs = 2
early_stopping = "Auto"                # Auto | Off

[tune.ranges]                          # default: the seed's lr + batch size ranges
lr = { type = "continuous", min = 0.001, max = 0.01, scaling = "Logarithmic" }
batch-size = { type = "categorical", values = [128, 256, 512] }
# weight-decay = { type = "continuous", min = 0.00001, max = 0.001 }
# epochs = { type = "integer", min = 5, max = 20 }
'''


# -- state: what the last commands created, so the next command can default to it -------------
def state_path(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(ENV_PREFIX + "STATE", "build/smctl-state.json"))


def load_state() -> dict[str, Any]:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {}


def save_state(**values: Any) -> None:
    """Remember e.g. ``image_uri`` / ``tuning_job`` / ``training_job`` (best effort)."""
    path = state_path()
    data = load_state()
    data.update(values)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError:
        pass
