"""`serve`: /ping, /invocations with the right labels, 4xx for bad requests; compose and docker run."""

from __future__ import annotations

import json
import time

import pytest

from container_support import docker, free_port, local_mode

pytestmark = pytest.mark.container


def post(url: str, body: bytes, content_type: str):
    status, raw = local_mode.request(url + "/invocations", body, content_type)
    return status, raw.decode(errors="replace")


def test_ping(endpoint):
    assert local_mode.request(endpoint + "/ping")[0] == 200


def test_invocations_agree_with_the_model_and_beat_chance(endpoint, trained, sample_data):
    """Served labels = the model's own predictions on the host (same artifact, preprocessing)."""
    import torch

    from imgclf.artifact import load_artifact
    from imgclf.transforms import preprocess_batch

    images = local_mode.held_out_images(sample_data / "test", 45)
    model, meta = load_artifact(str(trained["model"]))
    with torch.no_grad():
        x = preprocess_batch([str(p) for p in images], meta.image_size, meta.resize_size,
                             meta.mean, meta.std)
        offline = [meta.classes[i] for i in model(x).argmax(1).tolist()]

    from smctl.client import HttpTransport, InvocationsClient
    served, correct = [], 0
    for result in InvocationsClient(HttpTransport(endpoint)).send_raw(images):  # one per request
        assert result.status == 200, result.body[:500]
        preds = [(t["label"], t["probability"]) for t in json.loads(result.body)["predictions"][0]["topk"]]
        label, prob = preds[0]
        assert label in meta.classes and 0.0 <= prob <= 1.0
        assert len(preds) == min(5, len(meta.classes))  # default top-5, capped at the classes
        assert [p for _, p in preds] == sorted((p for _, p in preds), reverse=True)
        served.append(label)
        correct += label == result.path.parent.name
    assert served == offline
    accuracy = correct / len(images)
    print(f"served accuracy on {len(images)} held-out images: {accuracy:.2f}")
    assert accuracy >= 0.45, f"3 classes, chance is 0.33; got {accuracy:.2f}"


def test_evaluate_url_agrees_with_model_dir_and_the_job_report(endpoint, trained, sample_data,
                                                               tmp_path):
    """smctl evaluate: the image behind --url, the artifact in-process (--model-dir) and the
    training job's own report (output/data/evaluation) agree image for image."""
    import csv

    from smctl.cli import main
    test_dir = str(sample_data / "test")
    assert main(["evaluate", "--data", test_dir, "--model-dir", str(trained["model"]),
                 "--output", str(tmp_path / "md")]) == 0
    t0 = time.monotonic()
    assert main(["evaluate", "--data", test_dir, "--url", endpoint, "--output",
                 str(tmp_path / "url")]) == 0
    secs = time.monotonic() - t0
    rows = {n: list(csv.DictReader((tmp_path / n / "predictions.csv").open())) for n in ("md", "url")}
    assert [r["path"] for r in rows["md"]] == [r["path"] for r in rows["url"]] and rows["url"]
    for a, b in zip(rows["md"], rows["url"]):
        assert a["predicted"] == b["predicted"], a["path"]
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-4)
    served = json.loads((tmp_path / "url" / "evaluation.json").read_text())
    job = json.loads((trained["host"] / "output" / "data" / "evaluation" / "evaluation.json").read_text())
    assert job["classes"] == served["classes"] and job["n_images"] == served["n_images"]
    assert job["confusion_matrix"] == served["confusion_matrix"]
    assert (tmp_path / "url" / "report.html").stat().st_size > 10_000
    print(f"smctl evaluate --url against the image: {served['n_images'] / secs:.1f} images/s")


@pytest.mark.parametrize("body, content_type, expect", [
    (b"hello", "text/plain", 415),
    (b"\xff\xd8\xff\xe0 definitely not a jpeg", "image/jpeg", 400),
    (b"", "image/jpeg", 400),
    (b'{"image": "***not base64***"}', "application/json", 400),
    (b"{not json", "application/json", 400),
])
def test_bad_requests_get_4xx_without_traceback(endpoint, body, content_type, expect):
    status, text = post(endpoint, body, content_type)
    assert status == expect, text[:500]
    assert "Traceback" not in text and len(text) < 2000


def get_json(url: str):
    status, raw = local_mode.request(url)
    return status, json.loads(raw)


def test_execution_parameters(endpoint):
    status, doc = get_json(endpoint + "/execution-parameters")
    assert status == 200
    assert doc["BatchStrategy"] == "SINGLE_RECORD" and doc["MaxPayloadInMB"] == 6
    assert isinstance(doc["MaxConcurrentTransforms"], int) and doc["MaxConcurrentTransforms"] >= 1


def test_batch_mode_limits_ping_and_sigterm_under_tini(image, trained, sample_data):
    """docker run -e SAGEMAKER_BATCH=true -e SAGEMAKER_MAX_PAYLOAD_IN_MB=150 ...: the payload limit
    is capped at 100 MB, /ping answers within 2 s, tini is PID 1 and `docker stop` is clean."""
    port = free_port()
    name = f"imgclf-serve-batch-{port}"
    docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-e", "SAGEMAKER_BATCH=true", "-e", "SAGEMAKER_MAX_PAYLOAD_IN_MB=150",
           "-v", f"{trained['model']}:/opt/ml/model:ro", image, "serve")
    url = f"http://127.0.0.1:{port}"
    try:
        local_mode.wait(url, timeout=120)
        status, doc = get_json(url + "/execution-parameters")
        assert status == 200 and doc["MaxPayloadInMB"] == 100, doc
        assert doc["BatchStrategy"] == "SINGLE_RECORD" and doc["MaxConcurrentTransforms"] >= 1
        t0 = time.monotonic()
        assert local_mode.request(url + "/ping")[0] == 200
        assert time.monotonic() - t0 < 2
        img = local_mode.held_out_images(sample_data / "test", 1)[0]
        status, raw = local_mode.request(url + "/invocations", img.read_bytes(), "image/jpeg")
        assert status == 200, raw[:300]
        pid1 = docker("exec", name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
        assert pid1.startswith("/usr/bin/tini -- /usr/local/bin/imgclf-entrypoint serve"), pid1
        t0 = time.monotonic()
        docker("stop", "-t", "30", name)
        assert time.monotonic() - t0 < 25  # SIGTERM handled, not the SIGKILL after 30 s
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, state
        logs = docker("logs", name).stdout
        assert "batch transform mode" in logs and "MMS and its workers stopped" in logs
    finally:
        docker("rm", "-f", name, check=False)


def test_docker_run_serve_as_the_readme_shows(image, trained, sample_data):
    """docker run -p 127.0.0.1:PORT:8080 -v MODEL:/opt/ml/model:ro IMAGE serve"""
    port = free_port()
    name = f"imgclf-serve-test-{port}"
    docker("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{trained['model']}:/opt/ml/model:ro", image, "serve")
    url = f"http://127.0.0.1:{port}"
    try:
        local_mode.wait(url, timeout=120)
        img = local_mode.held_out_images(sample_data / "test", 1)[0]
        t0 = time.monotonic()
        status, raw = local_mode.request(url + "/invocations", img.read_bytes(), "image/jpeg")
        assert status == 200, raw[:500]
        body = json.loads(raw)
        assert body["predictions"][0]["label"] in json.loads(
            (trained["model"] / "model.json").read_text())["classes"]
        print(f"first invocation after /ping: {time.monotonic() - t0:.1f}s")
    finally:
        docker("rm", "-f", name, check=False)
