"""The optimised inference path (imgclf.serving.fastpath) against eager on a real model: the
trained colour classifier and an untrained ResNet-18 (diverse, low-margin outputs), 500 images
each through the serving preprocessing."""

from __future__ import annotations

import pytest
import torch

from imgclf.artifact import ModelMeta, save_artifact
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


@pytest.mark.parametrize("which", ["color_model", "random_model"])
def test_optimised_agrees_with_eager_on_500_images(request, which):
    model_dir = request.getfixturevalue(which)
    fast = handler.load_model(model_dir, "cpu", inference="optimized")
    slow = handler.load_model(model_dir, "cpu", inference="eager")
    assert fast.path.name == "cpu-jit-frozen-channels_last", fast.path
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


def test_env_opts_out_and_bad_values_are_refused(monkeypatch, color_model):
    monkeypatch.setenv(fastpath.INFERENCE_ENV, "eager")
    assert handler.load_model(color_model, "cpu").path.name == "eager"
    monkeypatch.setenv(fastpath.INFERENCE_ENV, "turbo")
    with pytest.raises(ValueError, match="IMGCLF_INFERENCE"):
        fastpath.mode()


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
    assert path.name == "eager" and path.detail in ("disagreed", "optimisation failed")
    x = fastpath.check_inputs(16, torch.device("cpu"))
    with torch.inference_mode():
        assert torch.equal(path.forward(x), model(x))
