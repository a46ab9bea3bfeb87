"""The training job's evaluation report: the best model on the test split, under the real
SageMaker ``train`` entry, with two DDP processes (gloo on CPU): rank 0 writes the files and
the numbers cover the whole split."""

from __future__ import annotations

import json
import re

import pytest

from serving_support import free_port, truncated_jpeg

pytestmark = pytest.mark.slow


def test_ddp_job_writes_one_report_covering_the_whole_test_split(sm_tree, color_data):
    (color_data / "test" / "002.Green" / "zz_truncated.jpg").write_bytes(truncated_jpeg())
    sm_tree.channel("training", color_data)
    sm_tree.write_config({"epochs": 1, "batch_size": 4, "weights": "none", "image_size": 32,
                          "num_workers": 0, "processes_per_host": 2,
                          "master_port": free_port(), "max_bad_fraction": 0.2})
    r = sm_tree.run()
    assert r.returncode == 0, r.stdout[-4000:]
    assert "world=2" in r.stdout
    out = sm_tree.base / "output" / "data" / "evaluation"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["evaluation.json", "predictions.csv", "report.html", "confusion_matrix.png",
         "reliability.png"])
    doc = json.loads((out / "evaluation.json").read_text())
    n_test = sum(1 for c in (color_data / "test").iterdir() for _ in c.iterdir()) - 1
    assert doc["n_images"] == n_test == 12  # both ranks' halves
    assert doc["unreadable"][0]["path"] == "002.Green/zz_truncated.jpg"
    assert [doc["per_class"][c]["support"] for c in doc["classes"]] == [4, 4, 4]
    lines = re.findall(r"evaluation: .*macro_f1=(\S+) ece=(\S+)", r.stdout)
    assert len(lines) == 1  # one log line, from rank 0
    assert float(lines[0][0]) == pytest.approx(doc["macro"]["f1"], abs=1e-4)
    meta = json.loads((sm_tree.base / "model" / "model.json").read_text())
    assert doc["accuracy"] == pytest.approx(meta["metrics"]["test_acc"], abs=1e-6)
