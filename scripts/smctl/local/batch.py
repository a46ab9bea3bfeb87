"""``smctl batch --local DIR --output OUT``: a batch transform job on this machine, through the image.

Faithful to SageMaker batch transform with ``SplitType`` None (what ``smctl batch`` creates):

1. ``docker run IMAGE serve`` with the model mounted at /opt/ml/model and
   ``SAGEMAKER_BATCH=true`` (the image's batch payload limit and 600 s response timeout);
2. wait for ``/ping`` 200, read ``GET /execution-parameters`` (``MaxConcurrentTransforms``,
   ``MaxPayloadInMB``), as SageMaker does before invoking;
3. POST every file under DIR (recursively, one file per request, ``application/x-image`` as the
   transform job's ContentType, ``Accept: application/json``), that many in flight, 5xx and
   connection errors retried up to 3 times (``InvocationsMaxRetries``);
4. write ``OUT/<relative path>.out`` with the response body, as SageMaker names outputs.

A file answered with a 4xx (or still failing after the retries, or over the payload limit) gets
no ``.out`` and a row in ``OUT/failures.csv`` (path, status, message). A rerun skips files whose
``.out`` exists. The container is removed at the end, on Ctrl-C and on SIGTERM.

    smctl batch --local sample_data/fashion/test --output local/batch/fashion \\
        --model-dir local/demo/algo-1/model
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from imgclf.atomic import atomic_write
from imgclf.serving.content_types import X_IMAGE
from smctl.client import HttpTransport, InvocationsClient, RawResult, Response
from smctl.errors import ConfigError, SmctlError

OUT_SUFFIX = ".out"
FAILURES = "failures.csv"
#: SageMaker's batch defaults when the image does not answer /execution-parameters.
DEFAULT_CONCURRENCY = 1
DEFAULT_PAYLOAD_MB = 6
#: InvocationsMaxRetries / InvocationsTimeoutInSeconds of the job ``smctl batch`` creates.
RETRIES = 3
TIMEOUT_S = 600


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    written: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # path, status, message
    seconds: float = 0.0          # the whole run: container start, scoring, stop
    scoring_seconds: float = 0.0  # from the first POST to the last answer


def input_files(data: Path, output: Path) -> list[Path]:
    """Every file under DATA (recursively, in a stable order), as S3 lists a prefix; hidden
    files and anything under OUTPUT are left out."""
    files = []
    for root, dirs, names in os.walk(data):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not _inside(root_path / d, output))
        files += [root_path / n for n in sorted(names) if not n.startswith(".")]
    return files


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def out_path(output: Path, data: Path, file: Path) -> Path:
    return output / (str(file.relative_to(data)) + OUT_SUFFIX)


def check_local_flags(args) -> tuple[Path, Path]:
    data = Path(args.local)
    if not data.is_dir():
        raise ConfigError(f"--local {data}: no such folder", "the folder of files to score")
    if not args.output:
        raise ConfigError("--output OUT is required with --local", "where the .out files go")
    output = Path(args.output)
    if _inside(output, data):
        raise ConfigError(f"--output {output} is inside --local {data}",
                          "a rerun would score the .out files: write outputs elsewhere")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file", "give a folder")
    if bool(args.model_dir) == bool(args.training_job):
        raise ConfigError("give exactly one of --model-dir DIR and --training-job NAME",
                          "--model-dir: a folder with model.pt + model.json (e.g. "
                          "local/demo/algo-1/model)")
    if args.model_data:
        raise ConfigError("--model-data is for SageMaker jobs; with --local use --model-dir",
                          "download and extract model.tar.gz, or pass --training-job NAME")
    if args.model_dir and not (Path(args.model_dir) / "model.json").is_file():
        raise ConfigError(f"--model-dir {args.model_dir}: no model.json there",
                          "the folder train.py wrote (model.pt + model.json)")
    return data, output


def fetch_training_job_model(args, api, dest: Path) -> Path:
    """``--training-job NAME``: its model.tar.gz (``deploy.model_source``: DescribeTrainingJob,
    Completed only) from S3, extracted into DEST."""
    from smctl.deploy import model_source
    from smctl.util import split_s3
    uri, _ = model_source(args, api, use_last_job=False)
    bucket, key = split_s3(uri)
    body = api.call("s3", "get_object", Bucket=bucket, Key=key)["Body"]
    archive = dest / "model.tar.gz"
    with open(archive, "wb") as f:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            f.write(chunk)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "model", filter="data")
    if not (dest / "model" / "model.json").is_file():
        raise SmctlError(f"{uri} holds no model.json", "is it this project's artifact?")
    return dest / "model"


def execution_parameters(url: str) -> tuple[int, int]:
    """(MaxConcurrentTransforms, MaxPayloadInMB) from the image, SageMaker's defaults if it has
    no such route."""
    try:
        with urllib.request.urlopen(url + "/execution-parameters", timeout=10) as r:
            doc = json.loads(r.read())
        return (max(1, int(doc.get("MaxConcurrentTransforms", DEFAULT_CONCURRENCY))),
                max(1, int(doc.get("MaxPayloadInMB", DEFAULT_PAYLOAD_MB))))
    except (urllib.error.URLError, OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_CONCURRENCY, DEFAULT_PAYLOAD_MB


class Progress:
    """A tqdm bar with images/s on a terminal, else a line every 10 s."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.t0, self.last = total, 0, time.monotonic(), 0.0
        self.stream = stream
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="img", file=stream)

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= 10 or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            print(f"  {self.done}/{self.total} files, {rate:.1f} images/s", file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def score(client: InvocationsClient, data: Path, output: Path, files: Iterable[Path],
          max_payload_mb: int, summary: Summary, progress: Progress) -> None:
    """POST each file, write its .out or record its failure (as results arrive)."""
    limit = max_payload_mb * 1024 * 1024
    to_send = []
    for f in files:
        try:
            size = f.stat().st_size
        except OSError as e:
            summary.failures.append((str(f.relative_to(data)), "", f"cannot read: {e.strerror}"))
            progress.update()
            continue
        if size > limit:  # SageMaker fails such a record without sending it
            summary.failures.append((str(f.relative_to(data)), "413",
                                     f"{size / 2**20:.1f} MB is over MaxPayloadInMB "
                                     f"{max_payload_mb}"))
            progress.update()
            continue
        to_send.append(f)
    for r in client.iter_raw(to_send, content_type=X_IMAGE):
        record(r, data, output, summary)
        progress.update()


def record(r: RawResult, data: Path, output: Path, summary: Summary) -> None:
    rel = str(r.path.relative_to(data))
    if r.status is not None and 200 <= r.status < 300:
        atomic_write(str(out_path(output, data, r.path)), lambda f: f.write(r.body))
        summary.written += 1
        return
    if r.status is None:
        summary.failures.append((rel, "", r.error or "no answer"))
        return
    summary.failures.append((rel, str(r.status), Response(r.status, r.body).detail()))


def write_failures(output: Path, failures: list[tuple[str, str, str]]) -> Path:
    path = output / FAILURES
    output.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "status", "message"])
        w.writerows(sorted(failures))
    return path


def run_local_batch(args, settings, api) -> int:
    from smctl.local.runner import (ServeContainer, docker_client, local_image,
                                    sigterm_as_interrupt)

    data, output = check_local_flags(args)
    docker = docker_client()
    image = local_image(args.image, docker, what="smctl batch --local")

    files = input_files(data, output)
    if not files:
        raise ConfigError(f"--local {data} holds no files", "the folder of files to score")
    summary = Summary(total=len(files))
    todo = [f for f in files if not out_path(output, data, f).exists()]
    summary.skipped = len(files) - len(todo)
    if api.dry_run:
        print(f"would score {len(todo)} file(s) of {len(files)} under {data} with {image}")
        return 0
    print(f"local batch transform: {len(files)} file(s) under {data} -> {output}/ "
          f"({summary.skipped} already scored)")
    if not todo:
        write_failures(output, [])
        print("nothing to do: every file has its .out")
        return 0

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imgclf-batch-") as tmp, sigterm_as_interrupt():
        model_dir = (Path(args.model_dir) if args.model_dir
                     else fetch_training_job_model(args, api, Path(tmp)))
        from smctl.util import parse_pairs
        env = {**parse_pairs(args.env, "--env"), "SAGEMAKER_BATCH": "true"}
        if args.max_payload_mb is not None:
            env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(args.max_payload_mb)
        server = ServeContainer(image, model_dir, env=env, docker=docker)
        progress = None
        try:
            server.start()
            print(f"  started {server.name} ({image} serve, SAGEMAKER_BATCH=true); waiting for /ping")
            try:
                server.wait_ready()
            except (TimeoutError, RuntimeError) as e:
                tail = "\n".join(server.logs().splitlines()[-15:])
                raise SmctlError(f"the serving container did not become ready: {e}\n{tail}",
                                 "see the container log above") from None
            concurrency, payload_mb = execution_parameters(server.url)
            if args.max_concurrent:
                concurrency = args.max_concurrent
            print(f"  /execution-parameters: MaxConcurrentTransforms={concurrency} "
                  f"MaxPayloadInMB={payload_mb}")
            client = InvocationsClient(HttpTransport(server.url, timeout=TIMEOUT_S),
                                       concurrency=concurrency, retries=RETRIES)
            progress = Progress(len(todo))
            t_score = time.monotonic()
            score(client, data, output, todo, payload_mb, summary, progress)
        finally:
            if progress is not None:  # before the container stop, which takes seconds
                summary.scoring_seconds = time.monotonic() - t_score
                progress.close()
            server.stop()
            summary.seconds = time.monotonic() - t0
            failures_csv = write_failures(output, summary.failures)

    sent = summary.written + len(summary.failures)
    rate = sent / summary.scoring_seconds if summary.scoring_seconds else 0.0
    print(f"local batch transform: {summary.written} .out written, {summary.skipped} skipped "
          f"(already scored), {len(summary.failures)} failed, {sent} file(s) in "
          f"{summary.seconds:.1f} s ({rate:.1f} images/s while scoring)")
    print(f"outputs: {output}/<path relative to {data}>{OUT_SUFFIX}")
    if summary.failures:
        print(f"failures: {failures_csv}", file=sys.stderr)
        return 1
    return 0
