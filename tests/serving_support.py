"""Shared by the serving tests and scripts/bench_serve.py: a tiny model that really classifies
solid red/green/blue images, trained in-process in a few seconds, and test images."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclf.artifact import ModelMeta, save_artifact
from imgclf.models import build_model
from imgclf.transforms import eval_transform, load_uint8, normalize
from smctl.local.runner import free_port  # noqa: F401  (the one definition; re-exported)

CLASSES = ["red", "green", "blue"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
IMAGE_SIZE, RESIZE_SIZE = 32, 36
REPO = Path(__file__).resolve().parents[1]


def color_image(name: str, size=(48, 40), seed: int = 0, mode: str = "RGB",
                colors: dict | None = None) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array((colors or COLORS)[name], dtype=np.int16)
    noise = rng.integers(-25, 26, size=(size[1], size[0], 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype("uint8"), "RGB")
    return img if mode == "RGB" else img.convert(mode)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def train_color_model(model_dir: str, arch: str = "resnet18", steps: int = 40,
                      colors: dict | None = None, min_accuracy: float = 1.0) -> ModelMeta:
    """Train ``arch`` on noisy solid colours (``colors``: class name -> RGB, default
    :data:`COLORS`) through the serving preprocessing; save the artifact.

    One torch thread: on a shared, loaded machine more threads made this 8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model_dir, arch, steps, colors or COLORS, min_accuracy)
    finally:
        torch.set_num_threads(threads)


def _train(model_dir: str, arch: str, steps: int, colors: dict, min_accuracy: float) -> ModelMeta:
    torch.manual_seed(0)
    classes = list(colors)
    meta = ModelMeta(arch=arch, classes=classes, image_size=IMAGE_SIZE,
                     resize_size=RESIZE_SIZE)
    tf = eval_transform(IMAGE_SIZE, RESIZE_SIZE)
    xs, ys = [], []
    for i in range(32 * len(classes)):
        label = i % len(classes)
        img = color_image(classes[label], seed=1000 + i, colors=colors)
        xs.append(load_uint8(encode(img), tf))
        ys.append(label)
    x = normalize(torch.stack(xs), meta.mean, meta.std)
    y = torch.tensor(ys)
    model = build_model(arch, len(classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        idx = torch.randperm(len(y))[:32]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # BatchNorm statistics recomputed on the training images: at lr 0.05 the running averages lag
    # the weights so far that in eval mode the model could answer one class for every image
    # (0.25 accuracy after 40 steps on an AVX-512 EPYC) although it had learnt the colours
    torch.optim.swa_utils.update_bn(x.split(32), model)
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    if acc < min_accuracy:
        raise RuntimeError(f"colour model only reached {acc:.2f} accuracy")
    save_artifact(model_dir, model.state_dict(), meta)
    return meta


def ugly_images() -> dict[str, bytes]:
    """Real-world oddities the decoder must turn into upright RGB: name -> encoded bytes."""
    red = color_image("red", size=(40, 30), seed=7)
    gray16 = Image.fromarray((np.asarray(red.convert("L"), dtype=np.uint16) * 257), "I;16")
    rgba = red.convert("RGBA")
    # 94% opaque: over white the pixels stay inside the red class's training colours (G and B
    # 5-55). At 200 (78%) they were pink, out of the colour model's distribution, and it said
    # 'red' on an AVX-512 host but 'blue' on an AVX2 one. White compositing itself is tested
    # pixel by pixel (test_training_unit::test_transparent_pixels_become_white).
    rgba.putalpha(240)
    exif = red.transpose(Image.Transpose.ROTATE_90)
    ex = Image.Exif()
    ex[0x0112] = 6  # orientation: rotate 90 on display
    return {
        "cmyk_jpeg": encode(red.convert("CMYK"), "JPEG"),
        "grayscale_png": encode(red.convert("L"), "PNG"),
        "rgba_png": encode(rgba, "PNG"),
        "palette_png": encode(red.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "16bit_png": encode(gray16, "PNG"),
        "exif_rotated_jpeg": encode(exif, "JPEG", exif=ex.tobytes()),
    }


def truncated_jpeg() -> bytes:
    data = encode(color_image("green", size=(64, 64), seed=3))
    return data[: len(data) // 2]


def dimension_bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A ~100-byte PNG whose header claims width x height pixels (1.6 G by default)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))




@contextlib.contextmanager
def host_server(model_dir: str, workers: int = 1, timeout_s: float = 240, **env):
    """``python -m imgclf.serving.server`` (the real MMS behind the gate) serving ``model_dir``
    on a free loopback port; yields its URL and stops the whole process group after.
    Without a JRE: skip, or fail when CI=true."""
    import shutil

    import pytest
    if not shutil.which("java"):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("java not found: the host server needs a JRE (CI must install one)")
        pytest.skip("java not found: the host-run server (multi-model-server) needs a JRE")
    port = free_port()
    run_dir = tempfile.mkdtemp(prefix="imgclf-serve-")
    full_env = {**os.environ, "SM_MODEL_DIR": str(Path(model_dir).resolve()), "SAGEMAKER_BIND_TO_PORT": str(port),
                "IMGCLF_BIND_HOST": "127.0.0.1", "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
                "PYTHONPATH": os.pathsep.join([str(REPO / "code"), str(REPO / "scripts")]), **env}
    log_path = os.path.join(run_dir, "server.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imgclf.serving.server"], env=full_env,
                            cwd=run_dir, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    pytest.fail("host server did not become ready:\n" + f.read()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


# Fixtures shared by the in-process serving tests (import them by name into a test module).
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: several torch threads per test process oversubscribe the CPUs
    (measured 8x slower training under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The trained colour model's artifact directory."""
    d = tmp_path_factory.mktemp("model")
    train_color_model(str(d))
    return str(d)
