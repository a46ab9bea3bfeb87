"""The evaluation report (imgclf.evaluation) and ``smctl evaluate`` with each of its sources.

A generated labelled folder whose first two classes are drawn from one distribution (the same
red): a model cannot tell them apart, so they must come out as the most confused pair while
green and blue are recognised. ``--model-dir`` (in-process) and ``--url`` (the real server,
MMS behind the gate, on loopback) must agree image for image on it, ugly files included.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.evaluation import (ECE_BINS, Predictions, compute_metrics,
                               expected_calibration_error, write_report)
from smctl.cli import main
from smctl_helpers import aws_env, stubs, streaming  # noqa: F401

TWIN_COLORS = {"001.Red_a": (220, 30, 30), "002.Red_b": (220, 30, 30),
               "003.Green": (30, 200, 40), "004.Blue": (30, 40, 220)}
PER_CLASS = 6


# -- the report from known predictions (no model) -------------------------------------------------
def _known_predictions() -> Predictions:
    classes = ["001.A", "002.B", "003.C"]
    # true:   A A A A B B B C C C
    # pred:   A A B B B B A C C A
    true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    pred = [0, 0, 1, 1, 1, 1, 0, 2, 2, 0]
    conf = [0.9, 0.8, 0.6, 0.7, 0.9, 0.95, 0.55, 0.99, 0.85, 0.65]
    probs = np.full((10, 3), 0.0)
    for i, (p, c) in enumerate(zip(pred, conf)):
        probs[i] = (1 - c) / 2
        probs[i, p] = c
    paths = [f"{classes[t]}/img{i}.jpg" for i, t in enumerate(true)]
    return Predictions(classes, paths, true, probs, [{"path": "001.A/bad.jpg", "reason": "truncated"}])


def test_metrics_of_known_predictions():
    doc = compute_metrics(_known_predictions())
    cm = np.array(doc["confusion_matrix"])
    assert cm.tolist() == [[2, 2, 0], [1, 2, 0], [1, 0, 2]]
    assert doc["n_images"] == 10 and doc["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert [doc["per_class"][c]["support"] for c in doc["classes"]] == [4, 3, 3]
    assert doc["per_class"]["002.B"]["precision"] == pytest.approx(2 / 4)
    assert doc["per_class"]["003.C"]["recall"] == pytest.approx(2 / 3)
    assert doc["most_confused"][0] == {"true": "001.A", "predicted": "002.B", "count": 2}
    assert {(m["true"], m["predicted"]) for m in doc["most_confused"][1:]} == {
        ("002.B", "001.A"), ("003.C", "001.A")}
    assert doc["top5_accuracy"] == 1.0  # k = min(5, 3 classes)
    assert [e["probability"] for e in doc["errors"]] == [0.7, 0.65, 0.6, 0.55]  # surest first
    assert doc["errors"][0] == {"path": "001.A/img3.jpg", "true": "001.A", "predicted": "002.B",
                                "probability": 0.7}
    assert doc["macro"]["f1"] == pytest.approx(np.mean([doc["per_class"][c]["f1"]
                                                        for c in doc["classes"]]))
    assert doc["unreadable"] == [{"path": "001.A/bad.jpg", "reason": "truncated"}]


def test_ece_of_overconfident_and_calibrated_predictions():
    conf = np.full(100, 0.9)
    ece, bins = expected_calibration_error(conf, np.arange(100) < 50)  # 90% sure, 50% right
    assert ece == pytest.approx(0.4) and len(bins) == ECE_BINS
    assert sum(b["count"] for b in bins) == 100
    # two bins, each exactly as accurate as it is confident: ECE 0
    conf = np.r_[np.full(10, 0.5), np.full(10, 1.0)]
    correct = np.r_[np.arange(10) < 5, np.ones(10, bool)]
    assert expected_calibration_error(conf, correct)[0] == pytest.approx(0.0)


def test_report_files_are_written_and_self_contained(tmp_path):
    root = tmp_path / "data"
    p = _known_predictions()
    for path in p.paths:  # thumbnails for the gallery
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / path)
    out = tmp_path / "eval"
    doc = write_report(p, str(out), root=str(root), title="known")
    assert sorted(f.name for f in out.iterdir()) == sorted(
        ["evaluation.json", "predictions.csv", "report.html", "confusion_matrix.png",
         "reliability.png"])
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    assert set(saved) == {"classes", "n_images", "accuracy", "top5_accuracy", "per_class", "macro",
                          "weighted", "confusion_matrix", "most_confused", "ece", "errors",
                          "unreadable"}
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["path"] for r in rows] == p.paths
    assert rows[2]["true"] == "001.A" and rows[2]["predicted"] == "002.B"
    assert rows[2]["topk"].split(";")[0] == "002.B:0.600000" and len(rows[2]["topk"].split(";")) == 3
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|/[^/])""", page)  # nothing external
    assert page.count("data:image/png;base64,") == 2
    assert page.count("data:image/jpeg;base64,") == 4  # one thumbnail per error
    assert "001.A/bad.jpg" in page and "$" not in re.sub(r"\$\d", "", page)
    for png in ("confusion_matrix.png", "reliability.png"):
        assert Image.open(out / png).format == "PNG"


def test_heatmap_stays_readable_at_133_classes(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"{i + 1:03d}.Breed_{i}" for i in range(133)]
    true = rng.integers(0, 133, 400)
    logits = rng.normal(0, 1, (400, 133))
    logits[np.arange(400), true] += 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    doc = write_report(Predictions(classes, [f"x/{i}.jpg" for i in range(400)], true, probs),
                       str(tmp_path))
    img = Image.open(tmp_path / "confusion_matrix.png")
    assert img.width >= 1200 and img.height >= 1200  # one cell is at least ~8 px
    page = (tmp_path / "report.html").read_text()
    pair = doc["most_confused"][0]
    assert f"{pair['true']} ({classes.index(pair['true'])})" in page  # pairs beside the map


# -- a generated set and a model -------------------------------------------------------------------
def _write_set(root: Path) -> Path:
    from serving_support import color_image, encode, truncated_jpeg
    for c_idx, name in enumerate(TWIN_COLORS):
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(PER_CLASS):
            img = color_image(name, size=(40, 40), seed=5000 + 100 * c_idx + k, colors=TWIN_COLORS)
            (folder / f"{k}.jpg").write_bytes(encode(img, "JPEG"))
    red = color_image("001.Red_a", size=(40, 40), seed=77, colors=TWIN_COLORS)
    (root / "001.Red_a" / "cmyk.jpg").write_bytes(encode(red.convert("CMYK"), "JPEG"))
    blue = color_image("004.Blue", size=(40, 40), seed=78, colors=TWIN_COLORS).convert("RGBA")
    alpha = Image.new("L", blue.size, 255)
    alpha.paste(0, (0, 0, 6, 6))  # a transparent corner
    blue.putalpha(alpha)
    blue.save(root / "004.Blue" / "alpha.png")
    (root / "003.Green" / "truncated.jpg").write_bytes(truncated_jpeg())
    # the other formats torchvision's ImageFolder takes, in any case: each is counted (the
    # report's check counts every file of a folder)
    for name, fmt, suffix in [("003.Green", "WEBP", "webp"), ("004.Blue", "BMP", "BMP"),
                              ("001.Red_a", "TIFF", "tiff"), ("003.Green", "PPM", "ppm")]:
        color_image(name, size=(40, 40), seed=79, colors=TWIN_COLORS).save(
            root / name / f"other.{suffix}", fmt)
    (root / "004.Blue" / "notes.txt").write_text("not an image: skipped, and said so")
    return root


@pytest.fixture(scope="module")
def twin_model(tmp_path_factory) -> Path:
    from serving_support import train_color_model
    d = tmp_path_factory.mktemp("twin") / "model"
    train_color_model(str(d), steps=40, colors=TWIN_COLORS, min_accuracy=0.6)
    return d


@pytest.fixture(scope="module")
def twin_data(tmp_path_factory) -> Path:
    return _write_set(tmp_path_factory.mktemp("twin_data") / "test")


def _evaluate(*args) -> tuple[int, float]:
    t0 = time.perf_counter()
    rc = main(["evaluate", *map(str, args)])
    return rc, time.perf_counter() - t0


def _check_twin_report(doc: dict, data: Path) -> None:
    classes = list(TWIN_COLORS)
    assert doc["classes"] == classes
    folder_counts = {c: sum(1 for p in (data / c).iterdir() if p.suffix != ".txt")
                     for c in classes}
    folder_counts["003.Green"] -= 1  # the truncated file is listed, not counted
    assert doc["unreadable"] == [{"path": "003.Green/truncated.jpg",
                                  "reason": doc["unreadable"][0]["reason"]}]
    assert "truncated" in doc["unreadable"][0]["reason"] or "decode" in doc["unreadable"][0]["reason"]
    cm = np.array(doc["confusion_matrix"])
    assert {c: doc["per_class"][c]["support"] for c in classes} == folder_counts
    assert dict(zip(classes, cm.sum(1).tolist())) == folder_counts
    assert doc["n_images"] == sum(folder_counts.values())
    assert doc["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    top = doc["most_confused"][0]
    assert {top["true"], top["predicted"]} == {"001.Red_a", "002.Red_b"}
    assert all({m["true"], m["predicted"]} == {"001.Red_a", "002.Red_b"}
               for m in doc["most_confused"])  # nothing else is confused
    for c in ("003.Green", "004.Blue"):
        assert doc["per_class"][c]["recall"] == 1.0 and doc["per_class"][c]["precision"] == 1.0
    assert 0.0 <= doc["ece"] <= 1.0 and doc["top5_accuracy"] == 1.0


@pytest.mark.slow
def test_model_dir_report_on_the_twin_set(twin_model, twin_data, tmp_path, aws_env, capsys):
    rc, secs = _evaluate("--data", twin_data, "--model-dir", twin_model, "--output", tmp_path / "md")
    assert rc == 0
    cap = capsys.readouterr()
    assert "macro_f1=" in cap.out and "ece=" in cap.out
    assert "skipped 1 file(s) that are no image by name (.txt 1;" in cap.err
    doc = json.loads((tmp_path / "md" / "evaluation.json").read_text())
    _check_twin_report(doc, twin_data)
    print(f"--model-dir: {doc['n_images'] / secs:.1f} images/s (incl. model load)")


@pytest.fixture(scope="module")
def twin_server(twin_model):
    from serving_support import host_server
    with host_server(str(twin_model)) as url:
        yield url


@pytest.mark.slow
def test_url_agrees_with_model_dir_image_for_image(twin_model, twin_data, twin_server, tmp_path,
                                                    aws_env, capsys):
    assert _evaluate("--data", twin_data, "--model-dir", twin_model, "--output", tmp_path / "md")[0] == 0
    rc, secs = _evaluate("--data", twin_data, "--url", twin_server, "--output", tmp_path / "url",
                         "--batch-size", "4", "--concurrency", "2")
    assert rc == 0
    capsys.readouterr()
    local = json.loads((tmp_path / "md" / "evaluation.json").read_text())
    served = json.loads((tmp_path / "url" / "evaluation.json").read_text())
    _check_twin_report(served, twin_data)
    rows = {n: list(csv.DictReader((tmp_path / n / "predictions.csv").open())) for n in ("md", "url")}
    assert [r["path"] for r in rows["md"]] == [r["path"] for r in rows["url"]]
    assert any(r["path"] == "001.Red_a/cmyk.jpg" for r in rows["url"])
    assert any(r["path"] == "004.Blue/alpha.png" for r in rows["url"])
    for a, b in zip(rows["md"], rows["url"]):
        assert a["predicted"] == b["predicted"], a["path"]
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-4)
    assert served["confusion_matrix"] == local["confusion_matrix"]
    assert [u["path"] for u in served["unreadable"]] == [u["path"] for u in local["unreadable"]]
    assert served["ece"] == pytest.approx(local["ece"], abs=1e-4)
    print(f"--url: {served['n_images'] / secs:.1f} images/s (batches of 4, 2 in flight)")


@pytest.mark.slow
def test_raw_mode_one_file_per_request_against_the_real_server(twin_data, twin_server):
    from smctl.client import HttpTransport, InvocationsClient
    client = InvocationsClient(HttpTransport(twin_server), concurrency=3)
    files = [twin_data / "004.Blue" / "alpha.png", twin_data / "003.Green" / "truncated.jpg",
             twin_data / "003.Green" / "0.jpg", twin_data / "missing.jpg"]
    results = client.send_raw(files, custom_attributes="topk=2")
    assert [r.path for r in results] == files
    assert [r.status for r in results] == [200, 400, 200, None]
    assert json.loads(results[0].body)["predictions"][0]["label"] == "004.Blue"
    assert len(json.loads(results[2].body)["predictions"][0]["topk"]) == 2
    assert "Traceback" not in results[1].body.decode() and results[3].error.startswith("cannot read")


# -- --endpoint through botocore's Stubber -------------------------------------------------------
def _answer(classes, probs_rows) -> bytes:
    preds = []
    for row in probs_rows:
        top = sorted(({"label": c, "index": i, "probability": p} for i, (c, p) in
                      enumerate(zip(classes, row))), key=lambda t: -t["probability"])
        preds.append({**top[0], "topk": top})
    return json.dumps({"predictions": preds}).encode()


def test_endpoint_batches_through_invoke_endpoint(stubs, aws_env, capsys):
    from smctl.client import ALL_CLASSES, json_body
    from smctl_helpers import REGION, tiny_jpeg, tiny_png
    data = aws_env / "test"
    (data / "001.Cat").mkdir(parents=True)
    (data / "002.Dog").mkdir()
    files = {"001.Cat/a.jpg": tiny_jpeg(), "001.Cat/b.png": tiny_png(), "002.Dog/c.jpg": tiny_jpeg((10, 200, 10))}
    for rel, blob in files.items():
        (data / rel).write_bytes(blob)
    classes = ["001.Cat", "002.Dog"]
    rt = stubs["sagemaker-runtime"]
    blobs = list(files.values())
    # batch 1 (2 images: learns the classes), batch 2 (1 image)
    for chunk, probs in (([blobs[0], blobs[1]], [[0.8, 0.2], [0.3, 0.7]]), ([blobs[2]], [[0.1, 0.9]])):
        rt.add_response("invoke_endpoint",
                        {"Body": streaming(_answer(classes, probs)), "ContentType": "application/json"},
                        {"EndpointName": "dogs-ep", "ContentType": "application/json",
                         "Accept": "application/json", "Body": json_body(chunk, ALL_CLASSES)})
    rc = main(["evaluate", "--data", "test", "--endpoint", "dogs-ep", "--region", REGION,
               "--batch-size", "2", "--concurrency", "1"], client_factory=stubs)
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((aws_env / "local" / "eval" / "dogs-ep" / "evaluation.json").read_text())
    assert doc["classes"] == classes and doc["n_images"] == 3
    assert doc["confusion_matrix"] == [[1, 1], [0, 1]]
    assert doc["errors"] == [{"path": "001.Cat/b.png", "true": "001.Cat", "predicted": "002.Dog",
                              "probability": 0.7}]


def test_endpoint_model_error_counts_the_image_as_unreadable(stubs, aws_env, capsys):
    from smctl_helpers import REGION, tiny_jpeg
    data = aws_env / "test"
    (data / "001.Cat").mkdir(parents=True)
    (data / "001.Cat" / "a.jpg").write_bytes(tiny_jpeg())
    (data / "001.Cat" / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    rt = stubs["sagemaker-runtime"]
    err = {"OriginalStatusCode": 400, "OriginalMessage": '{"error": "image 1: cannot decode image"}'}
    rt.add_client_error("invoke_endpoint", "ModelError", "Received client error (400)", 424,
                        response_meta=None, modeled_fields=err)  # the batch of 2
    rt.add_response("invoke_endpoint", {"Body": streaming(_answer(["001.Cat", "002.Dog"], [[0.9, 0.1]]))})
    rt.add_client_error("invoke_endpoint", "ModelError", "Received client error (400)", 424,
                        modeled_fields={"OriginalStatusCode": 400,
                                        "OriginalMessage": '{"error": "cannot decode image"}'})
    rc = main(["evaluate", "--data", "test", "--endpoint", "dogs-ep", "--region", REGION,
               "--concurrency", "1", "--output", "out"], client_factory=stubs)
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((aws_env / "out" / "evaluation.json").read_text())
    assert doc["n_images"] == 1 and doc["accuracy"] == 1.0
    assert doc["unreadable"] == [{"path": "001.Cat/b.jpg", "reason": "HTTP 400: cannot decode image"}]


def test_dry_run_endpoint_prints_the_first_request(aws_env, capsys):
    from smctl_helpers import REGION, tiny_jpeg
    (aws_env / "t" / "001.Cat").mkdir(parents=True)
    (aws_env / "t" / "001.Cat" / "a.jpg").write_bytes(tiny_jpeg())
    assert main(["evaluate", "--data", "t", "--endpoint", "e1", "--region", REGION, "--dry-run"],
                client_factory=lambda *a: pytest.fail("no client in dry-run")) == 0
    reqs = json.loads(capsys.readouterr().out)
    assert [r["operation"] for r in reqs] == ["InvokeEndpoint"]
    assert reqs[0]["request"]["ContentType"] == "application/json"
    assert not (aws_env / "local").exists()


# -- bad input: exit 2, one line, nothing sent -------------------------------------------------------
def _model_json_only(d: Path, classes) -> Path:
    d.mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"arch": "resnet18", "classes": classes}))
    return d


@pytest.mark.parametrize("case, words", [
    ("no source", "exactly one of"),
    ("two sources", "exactly one of"),
    ("no data", "--data DIR is required"),
    ("missing data", "is not a folder"),
    ("empty data", "no class folders"),
    ("unknown class", "002.Zebra"),
    ("bad url", "bad --url"),
    ("no model", "no model.json"),
])
def test_bad_input_exits_2_with_one_line(aws_env, capsys, case, words):
    from smctl_helpers import tiny_jpeg
    data = aws_env / "d"
    for c in ("001.Cat", "002.Zebra"):
        (data / c).mkdir(parents=True)
        (data / c / "x.jpg").write_bytes(tiny_jpeg())
    (aws_env / "empty").mkdir()
    model = _model_json_only(aws_env / "m", ["001.Cat", "003.Dog"])
    argv = {"no source": ["--data", "d"],
            "two sources": ["--data", "d", "--model-dir", "m", "--url", "http://127.0.0.1:9"],
            "no data": ["--model-dir", "m"],
            "missing data": ["--data", "nope", "--model-dir", "m"],
            "empty data": ["--data", "empty", "--model-dir", "m"],
            "unknown class": ["--data", "d", "--model-dir", str(model)],
            "bad url": ["--data", "d", "--url", "127.0.0.1:8080"],
            "no model": ["--data", "d", "--model-dir", "empty"]}[case]
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (aws_env / "local").exists()


def test_classes_match_by_name_without_the_number(aws_env):
    from smctl.evaluate import match_classes
    assert match_classes(["001.Cat", "Dog", "7.Dog"], ["001.Cat", "002.Dog"]) == {
        "001.Cat": 0, "Dog": 1, "7.Dog": 1}
