"""The inference path, chosen when a worker loads the model and checked against eager on it.

- CPU: channels_last weights, ``torch.jit.trace`` + ``torch.jit.freeze`` (conv-BN folding,
  constants inlined) + ``torch.jit.optimize_for_inference`` (oneDNN). Nothing is compiled at run
  time (the image has no compiler), and no new dependency is needed.
- GPU: channels_last + float16 autocast.

The optimised path is kept only if it agrees with eager on ``CHECK_IMAGES`` synthetic inputs:
the same top-1 for each and probabilities within ``PROB_TOLERANCE``; else the worker logs why
and serves eager. ``IMGCLF_INFERENCE=eager`` opts out. The cost (a few seconds on a 2-CPU
machine for ResNet-18) is paid inside the first ``/ping`` 503 phase, while the worker loads.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("imgclf.serving.fastpath")

INFERENCE_ENV = "IMGCLF_INFERENCE"
MODES = ("optimized", "eager")
CHECK_IMAGES = 16
PROB_TOLERANCE = 1e-3


@dataclass
class InferencePath:
    """``forward(float_batch) -> logits`` and what it is."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    name: str  # "eager", "cpu-jit-frozen-channels_last", "cuda-fp16-channels_last"
    detail: str = ""


def mode() -> str:
    raw = os.environ.get(INFERENCE_ENV, "").strip().lower() or "optimized"
    if raw in ("optimised", "auto"):
        raw = "optimized"
    if raw not in MODES:
        raise ValueError(f"{INFERENCE_ENV}={raw!r}: use one of {', '.join(MODES)}")
    return raw


def _cpu(model: torch.nn.Module, example: torch.Tensor) -> InferencePath:
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        traced = torch.jit.trace(model, example.contiguous(memory_format=torch.channels_last),
                                 check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return frozen(x.contiguous(memory_format=torch.channels_last))
    return InferencePath(forward, "cpu-jit-frozen-channels_last")


def _cuda(model: torch.nn.Module) -> InferencePath:
    model = model.to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            return model(x.contiguous(memory_format=torch.channels_last)).float()
    return InferencePath(forward, "cuda-fp16-channels_last")


def agreement(reference: Callable, candidate: Callable, batch: torch.Tensor) -> tuple[float, float]:
    """(share of identical top-1, largest probability difference) on ``batch``."""
    with torch.inference_mode():
        p = torch.softmax(reference(batch).float(), dim=1)
        q = torch.softmax(candidate(batch).float(), dim=1)
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
    """The path this worker serves with (see module doc)."""
    if requested == "eager":
        return InferencePath(model, "eager", "requested")
    if requested is None and mode() == "eager":
        return InferencePath(model, "eager", f"{INFERENCE_ENV}=eager")
    t0 = time.monotonic()
    x = check_inputs(image_size, device)
    try:
        fast = _cuda(model) if device.type == "cuda" else _cpu(model, x[:1])
        same, diff = agreement(model, fast.forward, x)
    except Exception as e:  # noqa: BLE001 - an untraceable model is served eager
        model.to(memory_format=torch.contiguous_format)
        log.warning("optimised inference unavailable (%s: %s); serving eager",
                    type(e).__name__, str(e)[:200])
        return InferencePath(model, "eager", "optimisation failed")
    if same < 1.0 or diff > PROB_TOLERANCE:
        model.to(memory_format=torch.contiguous_format)
        log.warning("optimised path disagrees with eager (top-1 %.3f, max prob diff %.2g); "
                    "serving eager", same, diff)
        return InferencePath(model, "eager", "disagreed")
    fast.detail = (f"agrees with eager on {len(x)} inputs (max prob diff {diff:.1g}), "
                   f"prepared in {time.monotonic() - t0:.1f} s")
    return fast
