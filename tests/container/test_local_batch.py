"""`smctl batch --local`: a batch transform job through the real image, as SageMaker runs one."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from container_support import DOCKER, REPO

pytestmark = pytest.mark.container


def smctl(*args, timeout=600):
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "PYTHONPATH": f"{REPO}/code:{REPO}/scripts",
           "DOCKER": DOCKER, "HOME": str(REPO / "local"), "SMCTL_REGION": "us-east-1"}
    return subprocess.run([sys.executable, "-m", "smctl", "batch", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def test_local_batch_transform(image, trained, sample_data, tmp_path):
    assert trained["proc"].returncode == 0, trained["proc"].stderr[-2000:]
    meta = json.loads((trained["model"] / "model.json").read_text())
    # A nested input folder: good JPEGs of two classes, one as PNG, a truncated JPEG, a text file.
    data = tmp_path / "in"
    good = {}
    for cls in meta["classes"][:2]:
        for i, src in enumerate(sorted((sample_data / "test" / cls).iterdir())[:3]):
            dest = data / "shoots" / cls / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
            good[dest.relative_to(data)] = cls
    png = data / "png" / "one.png"
    png.parent.mkdir(parents=True)
    Image.open(next(iter((sample_data / "test" / meta["classes"][0]).iterdir()))).convert(
        "RGBA").save(png)
    good[png.relative_to(data)] = None  # decodable: gets a .out whatever its label
    blob = (next(iter((sample_data / "test" / meta["classes"][1]).iterdir()))).read_bytes()
    (data / "broken.jpg").write_bytes(blob[: len(blob) // 2])
    (data / "notes.txt").write_text("not an image\n")
    out = tmp_path / "out"

    p = smctl("--local", str(data), "--output", str(out), "--model-dir", str(trained["model"]),
              "--image", image)
    assert p.returncode == 1, p.stdout + p.stderr  # two files failed
    assert "2 failed" in p.stdout and "images/s" in p.stdout, p.stdout

    # Every good file has OBJECT.out with the model's answer; its top-1 is what the image says
    # for that file served alone (checked against the artifact on the host for the JPEGs).
    import torch

    from imgclf.artifact import load_artifact
    from imgclf.transforms import preprocess_batch
    model, m = load_artifact(str(trained["model"]))
    for rel in good:
        answer = json.loads((out / (str(rel) + ".out")).read_text())
        assert set(answer) == {"predictions"} and len(answer["predictions"]) == 1
        label = answer["predictions"][0]["label"]
        assert label in meta["classes"]
        if rel.suffix == ".jpg":
            with torch.no_grad():
                x = preprocess_batch([str(data / rel)], m.image_size, m.resize_size, m.mean, m.std)
                assert label == m.classes[int(model(x).argmax(1))]
    assert not (out / "broken.jpg.out").exists() and not (out / "notes.txt.out").exists()
    rows = list(csv.DictReader(io.StringIO((out / "failures.csv").read_text())))
    assert sorted(r["path"] for r in rows) == ["broken.jpg", "notes.txt"]
    assert all(r["status"].startswith("4") and r["message"] for r in rows), rows

    # A rerun sends only what has no .out yet (the two failures) and leaves the rest untouched.
    stamp = (out / (str(next(iter(good))) + ".out")).stat().st_mtime_ns
    p2 = smctl("--local", str(data), "--output", str(out), "--model-dir", str(trained["model"]),
               "--image", image)
    assert p2.returncode == 1
    assert f"{len(good)} skipped" in p2.stdout and "0 .out written" in p2.stdout, p2.stdout
    assert (out / (str(next(iter(good))) + ".out")).stat().st_mtime_ns == stamp

    # No container is left behind.
    ps = subprocess.run([DOCKER, "ps", "-a", "--filter", "name=imgclf-serve-", "-q"],
                        capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_local_batch_refusals(tmp_path):
    """Bad flags exit 2 with one line, before any container starts."""
    (tmp_path / "in").mkdir()
    cases = [
        (["--local", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
          "--model-dir", str(tmp_path)], "no such folder"),
        (["--local", str(tmp_path / "in"), "--model-dir", str(tmp_path)], "--output"),
        (["--local", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "o"),
          "--model-dir", str(tmp_path)], "inside"),
        (["--local", str(tmp_path / "in"), "--output", str(tmp_path / "o")], "exactly one"),
        (["--local", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
          "--model-dir", str(tmp_path)], "model.json"),
    ]
    for args, needle in cases:
        p = smctl(*args, timeout=60)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, p.stderr)
