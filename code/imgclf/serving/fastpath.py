"""The inference path, chosen when a worker loads the model and checked against eager on it.

CPU candidates, tried in this order (``CPU_CANDIDATES``):

- ``onnxruntime``: the model exported to ONNX in memory (``torch.onnx.export``, TorchScript
  exporter, dynamic batch axis) and run by an ONNX Runtime CPU session on the worker's share
  of threads, torch keeping one for decoding and preprocessing. The fastest where measured
  (README "Inference path").
- ``jit``: channels_last weights, ``torch.jit.trace`` + ``torch.jit.freeze`` (conv-BN folding,
  constants inlined) + ``torch.jit.optimize_for_inference`` (oneDNN).

GPU: channels_last + float16 autocast. Nothing is compiled at run time (the image has no
compiler): ONNX Runtime is a prebuilt wheel.

A candidate is kept only if it agrees with eager on ``CHECK_IMAGES`` synthetic inputs: the same
top-1 for each and probabilities within ``PROB_TOLERANCE``. One that cannot be built or
disagrees logs one warning and the next is tried; eager is served when none is left.

``IMGCLF_INFERENCE``: ``optimized`` (default) the first candidate that agrees; ``eager`` opts
out; ``onnxruntime`` or ``jit`` tries only that one (eager if it fails). The cost (ResNet-18 on
2 CPUs: 1.1-1.4 s, of which export + session 0.6 s and the check the rest) is paid inside the
first ``/ping`` 503 phase, while the worker loads.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("imgclf.serving.fastpath")

INFERENCE_ENV = "IMGCLF_INFERENCE"
CPU_CANDIDATES = ("onnxruntime", "jit")
MODES = ("optimized", "eager") + CPU_CANDIDATES
CHECK_IMAGES = 16
PROB_TOLERANCE = 1e-3
# Pinned so that a torch upgrade does not change the exported graph; 17 has LayerNormalization
# as one operator (ViT, ConvNeXt).
ONNX_OPSET = 17

# ONNX Runtime's intra-op threads spin after each run by default ("1"), and so do torch's OpenMP
# threads, which decode and preprocess in the same worker: on 2 CPUs the two pools take turns
# spinning against each other. Measured on 2 CPUs (ResNet-18 224 px, one 500x375 JPEG, 2
# threads): spinning wins 1 ms on the bare forward (16.2 vs 17.2 ms), but through
# handler.predict_fn (decode + preprocess + forward) the medians are even (24-27 ms) while its
# p90 is 39-57 ms against 27-32 and it takes 20% more CPU per request (64-67 vs 53-55 ms), CPU
# that the front and MMS's JVM need. So no spinning.
ORT_ALLOW_SPINNING = "0"
# ... and torch itself runs on one thread beside an ONNX Runtime session (InferencePath
# .torch_threads): decode, resize and normalise are a few ms of a request, and torch's OpenMP
# threads, left to spin after each of them, took the CPUs ONNX Runtime's own pool was starting
# the forward on. Measured on 2 CPUs through decode + preprocess + forward, one image: 23.2-24.8
# against 26.7-30.1 ms and 43-44 against 49-55 ms of CPU; 16 images: 48-52 against 45-49 img/s.
ORT_TORCH_THREADS = 1


@dataclass
class InferencePath:
    """``forward(float_batch) -> logits`` and what it is."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    # "eager", "cpu-onnxruntime", "cpu-jit-frozen-channels_last", "cuda-fp16-channels_last"
    name: str
    detail: str = ""
    # torch's intra-op threads while this path serves; None: the worker's whole share (the
    # forward runs on torch). The ONNX Runtime path has a pool of its own (ORT_TORCH_THREADS).
    torch_threads: int | None = None


def normalise_mode(raw: str | None) -> str:
    """One of ``MODES`` for an ``IMGCLF_INFERENCE`` value (empty: optimized); else ValueError."""
    raw = (raw or "").strip().lower() or "optimized"
    if raw in ("optimised", "auto"):
        raw = "optimized"
    if raw not in MODES:
        raise ValueError(f"{INFERENCE_ENV}={raw!r}: use one of {', '.join(MODES)}")
    return raw


def mode() -> str:
    return normalise_mode(os.environ.get(INFERENCE_ENV))


def onnxruntime_module():
    """``import onnxruntime``: a seam, so tests can make it unavailable without touching it."""
    import onnxruntime
    return onnxruntime


def _export_onnx(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.10 deprecates the TorchScript exporter (its successor, dynamo=True, needs
        # onnxscript and a torch.export-able model) and warns about its own internal helpers;
        # neither concerns the worker's operator, so they stay out of its log.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed",
                                category=DeprecationWarning)
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}})
    return buf.getvalue()


def _cpu_onnxruntime(model: torch.nn.Module, example: torch.Tensor) -> InferencePath:
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the worker's share of the thread plan
    options.inter_op_num_threads = 1  # one forward at a time per worker, as for torch
    options.add_session_config_entry("session.intra_op.allow_spinning", ORT_ALLOW_SPINNING)
    session = ort.InferenceSession(_export_onnx(model, example), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.contiguous().numpy()})[0])
    return InferencePath(forward, "cpu-onnxruntime",
                         f"onnxruntime {ort.__version__} on {options.intra_op_num_threads} "
                         f"threads, torch on {ORT_TORCH_THREADS}", torch_threads=ORT_TORCH_THREADS)


def _cpu_jit(model: torch.nn.Module, example: torch.Tensor) -> InferencePath:
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        traced = torch.jit.trace(model, example.contiguous(memory_format=torch.channels_last),
                                 check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return frozen(x.contiguous(memory_format=torch.channels_last))
    return InferencePath(forward, "cpu-jit-frozen-channels_last")


_CPU_BUILDERS = {"onnxruntime": _cpu_onnxruntime, "jit": _cpu_jit}


def _cuda(model: torch.nn.Module) -> InferencePath:
    model = model.to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            return model(x.contiguous(memory_format=torch.channels_last)).float()
    return InferencePath(forward, "cuda-fp16-channels_last")


def _probabilities(forward: Callable, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(forward(batch).float(), dim=1)


def _agreement(p: torch.Tensor, candidate: Callable, batch: torch.Tensor) -> tuple[float, float]:
    q = _probabilities(candidate, batch)
    return (p.argmax(1) == q.argmax(1)).float().mean().item(), (p - q).abs().max().item()


def check_inputs(image_size: int, device: torch.device, n: int = CHECK_IMAGES) -> torch.Tensor:
    """Normalised-looking inputs: smooth random images (what photos look like after
    normalisation), deterministic."""
    g = torch.Generator().manual_seed(0)
    low = torch.randn(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False)
    return (x + 0.3 * torch.randn(x.shape, generator=g)).to(device)


def choose(model: torch.nn.Module, image_size: int, device: torch.device,
           requested: str | None = None) -> InferencePath:
    """The path this worker serves with (see module doc); ``requested`` overrides
    ``IMGCLF_INFERENCE``."""
    wanted = normalise_mode(requested) if requested is not None else mode()
    if wanted == "eager":
        return InferencePath(model, "eager", "requested" if requested is not None
                             else f"{INFERENCE_ENV}=eager")
    if device.type == "cuda":
        if wanted != "optimized":
            log.warning("%s inference is a CPU path; serving eager on %s", wanted, device)
            return InferencePath(model, "eager", f"{wanted} is CPU only")
        candidates = {"cuda-fp16": lambda m, _: _cuda(m)}
    else:
        names = CPU_CANDIDATES if wanted == "optimized" else (wanted,)
        candidates = {n: _CPU_BUILDERS[n] for n in names}
    t0 = time.monotonic()
    x = check_inputs(image_size, device)
    try:
        p = _probabilities(model, x)
    except Exception as e:  # noqa: BLE001 - check_model then says what is wrong with the model
        log.warning("eager does not run on the check inputs (%s: %s); serving eager",
                    type(e).__name__, str(e)[:200])
        return InferencePath(model, "eager", "eager failed on the check inputs")
    failures = []
    for i, (name, build) in enumerate(candidates.items()):
        then = f"trying {list(candidates)[i + 1]}" if i + 1 < len(candidates) else "serving eager"
        try:
            fast = build(model, x[:1])
            same, diff = _agreement(p, fast.forward, x)
        except Exception as e:  # noqa: BLE001 - a model this path cannot take is served otherwise
            model.to(memory_format=torch.contiguous_format)
            log.warning("%s inference unavailable (%s: %s); %s", name, type(e).__name__,
                        str(e)[:200], then)
            failures.append(f"{name} failed")
            continue
        if same < 1.0 or diff > PROB_TOLERANCE:
            model.to(memory_format=torch.contiguous_format)
            log.warning("%s path disagrees with eager (top-1 %.3f, max prob diff %.2g); %s",
                        name, same, diff, then)
            failures.append(f"{name} disagreed")
            continue
        fast.detail = ", ".join(filter(None, [
            fast.detail, f"agrees with eager on {len(x)} inputs (max prob diff {diff:.1g})",
            f"prepared in {time.monotonic() - t0:.1f} s", *failures]))
        return fast
    return InferencePath(model, "eager", ", ".join(failures))
