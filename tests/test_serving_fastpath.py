"""The optimised inference paths (imgclf.serving.fastpath: ONNX Runtime, jit-frozen) against
eager on a real model: the trained colour classifier and an untrained ResNet-18 (diverse,
low-margin outputs), 500 images each through the serving preprocessing."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings as warnings_module

import pytest
import torch

from imgclf.artifact import ModelMeta, load_artifact, save_artifact
from imgclf.models import build_model
from imgclf.serving import fastpath, handler
from serving_support import CLASSES, color_image, encode, model_dir, one_thread  # noqa: F401

N_IMAGES = 500


color_model = model_dir


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("random")
    torch.manual_seed(1)
    save_artifact(str(d), build_model("resnet18", 10).state_dict(),
                  ModelMeta(arch="resnet18", classes=[f"c{i}" for i in range(10)],
                            image_size=64, resize_size=72))
    return str(d)


def images(n: int, size) -> list[bytes]:
    return [encode(color_image(CLASSES[i % 3], size=size, seed=5000 + i)) for i in range(n)]


@pytest.mark.parametrize("inference, path_name", [("optimized", "cpu-onnxruntime"),
                                                ("jit", "cpu-jit-frozen-channels_last")])
@pytest.mark.parametrize("which", ["color_model", "random_model"])
def test_optimised_agrees_with_eager_on_500_images(request, which, inference, path_name):
    model_dir = request.getfixturevalue(which)
    fast = handler.load_model(model_dir, "cpu", inference=inference)
    slow = handler.load_model(model_dir, "cpu", inference="eager")
    assert fast.path.name == path_name, fast.path
    assert slow.path.name == "eager"
    size = (fast.meta.resize_size + 12, fast.meta.resize_size + 4)
    batch = torch.stack([t for img in images(N_IMAGES, size) for t in handler.decode([img], fast)])
    p_fast = torch.cat([handler.forward(fast, b) for b in batch.split(50)])
    p_slow = torch.cat([handler.forward(slow, b) for b in batch.split(50)])
    same = (p_fast.argmax(1) == p_slow.argmax(1)).float().mean().item()
    assert same >= 0.998, same
    assert (p_fast - p_slow).abs().max().item() <= 1e-3
    if which == "color_model":
        labels = [CLASSES[i] for i in p_fast.argmax(1).tolist()]
        assert labels == [CLASSES[i % 3] for i in range(N_IMAGES)]


@pytest.mark.parametrize("value, path_name", [
    ("eager", "eager"), ("", "cpu-onnxruntime"), ("Optimised", "cpu-onnxruntime"),
    ("onnxruntime", "cpu-onnxruntime"), ("jit", "cpu-jit-frozen-channels_last")])
def test_env_picks_the_path(monkeypatch, color_model, value, path_name):
    monkeypatch.setenv(fastpath.INFERENCE_ENV, value)
    assert handler.load_model(color_model, "cpu", warm=False).path.name == path_name


def test_each_path_predicts_with_its_own_torch_threads(color_model, monkeypatch):
    """ONNX Runtime forwards on a pool of its own: torch (decode, preprocess) keeps one thread
    beside it, not the worker's share, while the decode pool and eager keep the share - also
    with both models in one process, predicting in turns."""
    torch.set_num_threads(2)  # the worker's share (one_thread puts it back after the module)
    ort = handler.load_model(color_model, "cpu", inference="onnxruntime")
    torch.set_num_threads(2)  # the ORT model's warm-up prediction left torch on 1
    eager = handler.load_model(color_model, "cpu", inference="eager")
    assert (ort.threads, ort.torch_threads) == (2, fastpath.ORT_TORCH_THREADS) == (2, 1)
    assert (eager.threads, eager.torch_threads) == (2, 2)
    seen = []
    for served in (ort, eager):
        forward = served.path.forward
        monkeypatch.setattr(served.path, "forward",
                            lambda x, f=forward: seen.append(torch.get_num_threads()) or f(x))
    pools = []
    real_pool = handler._pool
    monkeypatch.setattr(handler, "_pool", lambda n: pools.append(n) or real_pool(n))
    img = encode(color_image("red", seed=3))
    for served in (ort, eager, ort):
        assert handler.predict_fn(handler.InferenceRequest([img]), served).classes == CLASSES
        handler.predict_batch([handler.InferenceRequest([img, img])], served)
    assert seen == [1, 1, 2, 2, 1, 1]
    assert pools == [2, 2, 2]


def test_env_refuses_unknown_values(monkeypatch):
    monkeypatch.setenv(fastpath.INFERENCE_ENV, "turbo")
    with pytest.raises(ValueError, match="IMGCLF_INFERENCE='turbo': use one of optimized, eager, "
                                         "onnxruntime, jit"):
        fastpath.mode()
    with pytest.raises(ValueError, match="IMGCLF_INFERENCE='tvm'"):
        fastpath.choose(torch.nn.Identity(), 16, torch.device("cpu"), "tvm")


def _no_onnxruntime():
    raise ImportError("No module named 'onnxruntime'")


def test_without_onnxruntime_optimized_serves_jit(monkeypatch, caplog, color_model):
    monkeypatch.setattr(fastpath, "onnxruntime_module", _no_onnxruntime)
    with caplog.at_level("WARNING", logger="imgclf.serving.fastpath"):
        served = handler.load_model(color_model, "cpu", inference="optimized")
    assert served.path.name == "cpu-jit-frozen-channels_last"
    assert "onnxruntime failed" in served.path.detail
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("onnxruntime inference unavailable (ImportError: No module")
    assert warnings[0].endswith("; trying jit")


def test_an_explicit_path_that_fails_serves_eager(monkeypatch, caplog, color_model):
    monkeypatch.setattr(fastpath, "onnxruntime_module", _no_onnxruntime)
    with caplog.at_level("WARNING", logger="imgclf.serving.fastpath"):
        served = handler.load_model(color_model, "cpu", inference="onnxruntime")
    assert (served.path.name, served.path.detail) == ("eager", "onnxruntime failed")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].endswith("; serving eager"), warnings


def test_the_onnx_export_leaves_no_warnings(random_model):
    """torch's deprecation notices about its TorchScript exporter stay out of the worker log
    (pytest hides DeprecationWarning by default: record them all here)."""
    model, meta = load_artifact(random_model, "cpu")
    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        path = fastpath.choose(model, meta.image_size, torch.device("cpu"), "onnxruntime")
    assert path.name == "cpu-onnxruntime"
    assert [str(w.message)[:80] for w in caught] == []


class BranchyNet(torch.nn.Module):
    """Shape-dependent control flow: the trace (on one image) records one branch, so the traced
    model disagrees with eager on batches, which take the other one."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if x.shape[0] == 1:  # a constant in the trace
            return y * 10
        return -y


def test_a_model_the_trace_gets_wrong_is_served_eager():
    model = BranchyNet().eval()
    path = fastpath.choose(model, 16, torch.device("cpu"), "optimized")
    assert (path.name, path.detail) == ("eager", "onnxruntime disagreed, jit disagreed")
    x = fastpath.check_inputs(16, torch.device("cpu"))
    with torch.inference_mode():
        assert torch.equal(path.forward(x), model(x))


class Broken(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_a_model_that_does_not_run_is_left_to_check_model(caplog):
    with caplog.at_level("WARNING", logger="imgclf.serving.fastpath"):
        path = fastpath.choose(Broken(), 16, torch.device("cpu"), "optimized")
    assert (path.name, path.detail) == ("eager", "eager failed on the check inputs")
    assert "RuntimeError: mat1 and mat2" in caplog.text


def test_bench_serve_refuses_a_gpu_torch_cannot_see():
    """``make bench-serve`` measures the device the workers use; ``--device cuda`` where torch
    sees no GPU is exit 2 with one line, before a model is built or a server started."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(repo, "scripts", "bench_serve.py"),
                        "--device", "cuda"], env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert (p.returncode, p.stdout, len(lines)) == (2, "", 1), p.stderr
    assert "--device cuda" in lines[0] and "no GPU" in lines[0]
