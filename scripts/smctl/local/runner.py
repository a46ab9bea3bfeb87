"""The one local job runner: a SageMaker ``/opt/ml`` tree for a job, its launch on the host or in
the image, its log, and its stop.

Users: ``smctl tune --local`` (one job per trial), ``make local-train`` and the demo
(``python -m smctl.local train``), ``scripts/local_mode.py prepare`` (the trees docker-compose
mounts for the two-host run) and a local batch transform (:class:`ServeContainer`: ``docker run
IMAGE serve`` with a model folder mounted, extra env such as ``SAGEMAKER_BATCH=true``, a published
loopback port, /ping, stop and remove on exit or Ctrl-C).

Standard library only (no torch, no boto3): smctl imports it on paths that never train.

A tree (:class:`JobTree`) holds what SageMaker mounts into a training container::

    ROOT/input/config/{hyperparameters,inputdataconfig,resourceconfig}.json
    ROOT/input/data/<channel>/        (host: a link to the data; container: a mount point)
    ROOT/{model,output/data,checkpoints}/
    ROOT/train.log                     (the job's stdout and stderr)

Hyperparameter values are written as JSON strings, as SageMaker does.

- :class:`HostRunner` runs ``code/train.py`` under the real sagemaker-training ``train`` entry
  with ``SAGEMAKER_BASE_DIR=ROOT``, in a process group of its own (stop = killpg: the toolkit,
  train.py, torchrun and the DataLoader workers all go).
- :class:`ContainerRunner` runs ``docker run --name NAME-PID IMAGE train`` with the tree
  mounted (stop = docker stop, then rm).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parents[3]
CODE_DIR = REPO / "code"
CHANNELS = ("train", "valid", "test")
LOG_NAME = "train.log"
CONTAINER_ROOT = "/opt/ml"
#: What a ``docker run IMAGE train`` gets mounted from the tree.
MOUNTED = ("input", "output", "model", "checkpoints")


def docker_client() -> str:
    """Debian's client (BuildKit built in) first, as the Makefile does; ``$DOCKER`` wins."""
    return os.environ.get("DOCKER") or (
        "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
        or "docker")


def docker_name(text: str) -> str:
    """A valid container name from any text ([a-zA-Z0-9][a-zA-Z0-9_.-]*)."""
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.") or "imgclf"
    return name if name[0].isalnum() else "x" + name


def dataset_channels(data_dir: Path, names: Sequence[str] = CHANNELS) -> dict[str, Path]:
    """``DATA_DIR/{train,valid,test}`` as channels; an absent split is left out (train.py says
    what it needs). Raises ValueError when the folder has no train split with images in it."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist")
    channels = {n: (data_dir / n).resolve() for n in names if (data_dir / n).is_dir()}
    train = channels.get("train")
    if train is None or not any(p.is_file() for p in train.glob("*/*")):
        raise ValueError(f"{data_dir} has no train/<class>/ images (dogImages layout: "
                         "train/, valid/, test/ of NNN.Class_Name/*.jpg)")
    return channels


@dataclass
class JobTree:
    """One host's ``/opt/ml`` for one job."""

    root: Path
    channels: dict[str, Path] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def log_path(self) -> Path:
        return self.root / LOG_NAME

    @property
    def failure(self) -> str | None:
        p = self.output_dir / "failure"
        return p.read_text(errors="replace").strip() if p.exists() else None

    @property
    def succeeded(self) -> bool:
        return (self.output_dir / "success").exists()

    @classmethod
    def prepare(cls, root: Path, hyperparameters: Mapping[str, object],
                channels: Mapping[str, Path], *, hosts: Sequence[str] = ("algo-1",),
                current_host: str | None = None, link_channels: bool = False,
                instance_type: str = "local", network_interface: str = "eth0",
                fresh: bool = True) -> "JobTree":
        """(Re)create the tree; with ``fresh`` earlier outputs of the job are removed.
        ``link_channels``: input/data/<channel> links to the data (a host run); else an empty
        mount point (a container run mounts the data there)."""
        root = Path(root).absolute()
        if fresh and root.exists():
            shutil.rmtree(root)
        cfg = root / "input" / "config"
        cfg.mkdir(parents=True, exist_ok=True)
        for sub in ("model", "output/data", "checkpoints"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for name, source in channels.items():
            dest = root / "input" / "data" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if link_channels:
                dest.symlink_to(Path(source).resolve(), target_is_directory=True)
            else:
                dest.mkdir(exist_ok=True)
        (cfg / "hyperparameters.json").write_text(
            json.dumps({k: str(v) for k, v in hyperparameters.items()}, indent=2) + "\n")
        (cfg / "inputdataconfig.json").write_text(json.dumps(
            {ch: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                  "RecordWrapperType": "None"} for ch in channels}, indent=2) + "\n")
        (cfg / "resourceconfig.json").write_text(json.dumps(
            {"current_host": current_host or hosts[0], "hosts": list(hosts),
             "current_instance_type": instance_type, "network_interface_name": network_interface},
            indent=2) + "\n")
        return cls(root, {k: Path(v) for k, v in channels.items()})

    def hyperparameters(self) -> dict[str, str]:
        return json.loads((self.config_dir / "hyperparameters.json").read_text())


class Job:
    """A launched job: its process (own group), log file, exit code, stop."""

    def __init__(self, name: str, tree: JobTree, proc: subprocess.Popen, log,
                 stopper=None):
        self.name, self.tree, self.proc = name, tree, proc
        self._log = log
        self._stopper = stopper
        self.started = time.monotonic()
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None:
            self._close()
        return rc

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout)
        self._close()
        return rc

    def log_text(self) -> str:
        try:
            return self.tree.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> int:
        """Stop the job and everything it started; returns the exit code."""
        self.stopped = True
        if self._stopper is not None:
            self._stopper(grace)
        if self.proc.poll() is None:
            _killpg(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _killpg(self.proc, signal.SIGKILL)  # whatever of the group is left (workers)
        rc = self.proc.wait()
        self._close()
        return rc

    def _close(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without SageMaker's variables (a job must not inherit the
    caller's SM_*/SAGEMAKER_* settings), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


class HostRunner:
    """``code/train.py`` under sagemaker-training's ``train`` entry of this venv."""

    kind = "host"
    network_interface = "lo"

    def __init__(self, train_entry: str | Path | None = None, code_dir: Path = CODE_DIR):
        self.train_entry = str(train_entry or Path(sys.executable).parent / "train")
        self.code_dir = Path(code_dir)

    def hosts(self) -> tuple[str, ...]:
        # A host name that does not resolve makes the toolkit wait on DNS for minutes.
        return ("localhost",)

    def program_hyperparameters(self) -> dict[str, str]:
        # The toolkit finds user code through sagemaker_submit_directory, not an env var.
        return {"sagemaker_program": "train.py", "sagemaker_submit_directory": str(self.code_dir)}

    def prepare(self, root: Path, hyperparameters: Mapping[str, object],
                channels: Mapping[str, Path], fresh: bool = True) -> JobTree:
        return JobTree.prepare(root, {**self.program_hyperparameters(), **hyperparameters},
                               channels, hosts=self.hosts(), link_channels=True,
                               network_interface=self.network_interface, fresh=fresh)

    def launch(self, tree: JobTree, name: str, env: Mapping[str, str] | None = None,
               gpu: int | str | None = None) -> Job:
        extra = {"SAGEMAKER_BASE_DIR": str(tree.root), "SAGEMAKER_PROGRAM": "train.py",
                 "TRAINING_JOB_NAME": name, "PYTHONUNBUFFERED": "1", **(env or {})}
        if gpu not in (None, "all"):
            extra["CUDA_VISIBLE_DEVICES"] = str(gpu)
        log = open(tree.log_path, "ab")
        proc = subprocess.Popen([self.train_entry], cwd=str(tree.root), env=clean_environ(extra),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        return Job(name, tree, proc, log)


class ContainerRunner:
    """``docker run --name NAME IMAGE train`` with the tree mounted at /opt/ml."""

    kind = "container"
    network_interface = "eth0"

    def __init__(self, image: str, docker: str | None = None, shm_size: str = "1g"):
        self.image, self.docker, self.shm_size = image, docker or docker_client(), shm_size

    def hosts(self) -> tuple[str, ...]:
        return ("algo-1",)  # the container's own --hostname: resolves inside it

    def prepare(self, root: Path, hyperparameters: Mapping[str, object],
                channels: Mapping[str, Path], fresh: bool = True) -> JobTree:
        return JobTree.prepare(root, hyperparameters, channels, hosts=self.hosts(),
                               link_channels=False, network_interface=self.network_interface,
                               fresh=fresh)

    def command(self, tree: JobTree, name: str, env: Mapping[str, str] | None = None,
                gpu: int | str | None = None) -> list[str]:
        cmd = [self.docker, "run", "--rm", "--name", self.container_name(name), "--hostname",
               self.hosts()[0], "--shm-size", self.shm_size]
        for sub in MOUNTED:
            cmd += ["-v", f"{tree.root / sub}:{CONTAINER_ROOT}/{sub}"]
        for ch, source in tree.channels.items():
            cmd += ["-v", f"{Path(source).resolve()}:{CONTAINER_ROOT}/input/data/{ch}:ro"]
        base = {"TRAINING_JOB_NAME": name, "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")}
        for k, v in {**base, **(env or {})}.items():
            cmd += ["-e", f"{k}={v}"]
        if gpu is not None:
            cmd += ["--gpus", "all" if gpu == "all" else f"device={gpu}"]
        return [*cmd, self.image, "train"]

    @staticmethod
    def container_name(name: str) -> str:
        # This process's id too: a container left by a killed run never blocks the next one.
        return docker_name(f"{name}-{os.getpid()}")

    def launch(self, tree: JobTree, name: str, env: Mapping[str, str] | None = None,
               gpu: int | str | None = None) -> Job:
        log = open(tree.log_path, "ab")
        container = self.container_name(name)
        proc = subprocess.Popen(self.command(tree, name, env, gpu), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

        def stop(grace: float) -> None:
            remove_container(self.docker, container, grace)
        return Job(name, tree, proc, log, stopper=stop)


def remove_container(docker: str, name: str, grace: float = 10.0) -> None:
    """docker stop (SIGTERM, then SIGKILL after ``grace``) and rm; quiet if it is gone."""
    subprocess.run([docker, "stop", "-t", str(max(1, int(grace))), name],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    subprocess.run([docker, "rm", "-f", name], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def make_runner(kind: str, image: str | None = None) -> HostRunner | ContainerRunner:
    if kind == "host":
        return HostRunner()
    if kind == "container":
        if not image:
            raise ValueError("the container runner needs an image (--image, default: "
                             "make -s image-name)")
        return ContainerRunner(image)
    raise ValueError(f"unknown runner {kind!r} (host or container)")


def local_image(image: str | None, docker: str | None = None, what: str = "the image") -> str:
    """IMAGE, else ``make -s image-name``, checked to exist in the local engine; a
    :class:`~smctl.errors.ConfigError` (exit 2, one line) before anything starts otherwise."""
    from smctl.errors import ConfigError
    image = image or default_image()
    if not image:
        raise ConfigError(f"no image for {what}", "pass --image or run make build")
    if subprocess.run([docker or docker_client(), "image", "inspect", image],
                      capture_output=True).returncode:
        raise ConfigError(f"image {image} not found", "run make build (or pass --image)")
    return image


def default_image() -> str | None:
    """``make -s image-name`` (the tag ``make build`` gives this checkout)."""
    try:
        p = subprocess.run(["make", "-s", "-C", str(REPO), "image-name"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (p.stdout.strip() or None) if p.returncode == 0 else None


# -- serving container (local batch transform, local endpoint) ---------------------------------
def ping(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of GET URL/ping, None when nothing answers."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return None


def wait_for_ping(url: str, timeout: float, alive=lambda: True, interval: float = 0.5) -> None:
    """Until /ping answers 200; TimeoutError naming the last answer, RuntimeError if
    ``alive()`` turns False (the server exited)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = ping(url)
        if last == 200:
            return
        if not alive():
            raise RuntimeError(f"the server behind {url} exited before /ping answered 200")
        time.sleep(interval)
    raise TimeoutError(f"{url}/ping not ready after {timeout:.0f}s "
                       f"({'HTTP ' + str(last) if last else 'no answer'})")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeContainer:
    """``docker run IMAGE serve`` with MODEL_DIR mounted read-only at /opt/ml/model, ``env``
    added (e.g. ``SAGEMAKER_BATCH=true``), port 8080 published on 127.0.0.1:PORT. A context
    manager: the container is stopped and removed on exit, also on Ctrl-C (and on SIGTERM
    inside :func:`sigterm_as_interrupt`)::

        with ServeContainer(image, "local/train/algo-1/model", {"SAGEMAKER_BATCH": "true"}) as s:
            s.wait_ready()
            ... POST s.url + "/invocations" ...
    """

    def __init__(self, image: str, model_dir: Path, env: Mapping[str, str] | None = None,
                 port: int | None = None, name: str | None = None, docker: str | None = None):
        self.image, self.model_dir = image, Path(model_dir).resolve()
        self.env = dict(env or {})
        self.port = port or free_port()
        self.name = docker_name(name or f"imgclf-serve-{os.getpid()}-{self.port}")
        self.docker = docker or docker_client()
        self.started = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.docker, "run", "-d", "--name", self.name, "-p",
               f"127.0.0.1:{self.port}:8080", "-v", f"{self.model_dir}:{CONTAINER_ROOT}/model:ro"]
        for k, v in self.env.items():
            cmd += ["-e", f"{k}={v}"]
        return [*cmd, self.image, "serve"]

    def start(self) -> "ServeContainer":
        if not (self.model_dir / "model.json").is_file():
            raise FileNotFoundError(f"no model in {self.model_dir} (model.json missing)")
        p = subprocess.run(self.command(), capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"docker run {self.image} serve failed: "
                               f"{' '.join(p.stderr.split())[:400]}")
        self.started = True
        return self

    def running(self) -> bool:
        p = subprocess.run([self.docker, "inspect", "-f", "{{.State.Running}}", self.name],
                           capture_output=True, text=True)
        return p.returncode == 0 and p.stdout.strip() == "true"

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_for_ping(self.url, timeout, alive=self.running)

    def logs(self) -> str:
        p = subprocess.run([self.docker, "logs", self.name], capture_output=True, text=True)
        return p.stdout + p.stderr

    def stop(self, grace: float = 10.0) -> None:
        if self.started:
            remove_container(self.docker, self.name, grace)
            self.started = False

    def __enter__(self) -> "ServeContainer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, so Ctrl-C and a kill take the same
    clean-up path (``finally`` / ``__exit__``: stop the jobs, remove the containers)."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
