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

    served, correct = [], 0
    for img in images:
        preds = local_mode.invoke(endpoint, img)
        label, prob = preds[0]
        assert label in meta.classes and 0.0 <= prob <= 1.0
        assert len(preds) == min(5, len(meta.classes))  # default top-5, capped at the classes
        assert [p for _, p in preds] == sorted((p for _, p in preds), reverse=True)
        served.append(label)
        correct += label == img.parent.name
    assert served == offline
    accuracy = correct / len(images)
    print(f"served accuracy on {len(images)} held-out images: {accuracy:.2f}")
    assert accuracy >= 0.45, f"3 classes, chance is 0.33; got {accuracy:.2f}"


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
