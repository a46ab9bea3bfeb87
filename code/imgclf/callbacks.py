"""Hook points of the training loop.

The loop (``engine``/``training``) calls these at fixed moments; diagnostics (rules, profiler,
smdebug) plug in as :class:`Callback` subclasses without the loop knowing them. Every method is
optional. A callback may ask training to stop by setting ``ctx.stop_reason``.

Order per training step (mode "train"): on_step_begin -> [forward, loss, backward] ->
on_after_backward (gradients are populated, before ``optimizer.step``) -> on_step_end.
Evaluation steps (mode "eval"/"test") call on_step_begin/on_step_end only.

The run ends with exactly one of ``on_train_end`` (success) or ``on_exception`` (training
raised, or was stopped by SIGTERM): the reports, the torch profiler and the smdebug hook are
closed either way - the failed runs are the ones a user most needs them for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger(__name__)


@dataclass
class TrainContext:
    model: Any                      # the nn.Module being trained (DDP-unwrapped)
    optimizer: Any
    criterion: Any
    args: Any                       # the parsed argparse.Namespace
    device: Any                     # torch.device
    output_dir: str                 # SM_OUTPUT_DATA_DIR: reports go here
    is_main: bool = True            # rank 0 (only it writes reports)
    num_classes: int = 0
    global_step: int = 0            # train steps done so far (survives resume)
    steps_per_epoch: int = 0        # train steps per epoch (0 = unknown, e.g. offline)
    epoch: int = 0
    history: list = field(default_factory=list)   # per-epoch metric dicts so far
    stop_reason: Optional[str] = None             # set by a callback to stop training


class Callback:
    def on_train_begin(self, ctx: TrainContext) -> None: ...
    def on_epoch_begin(self, ctx: TrainContext, epoch: int) -> None: ...
    def on_step_begin(self, ctx: TrainContext, mode: str, step: int) -> None: ...
    def on_after_backward(self, ctx: TrainContext, step: int, loss: float) -> None: ...
    def on_step_end(self, ctx: TrainContext, mode: str, step: int, loss: float,
                    batch_size: int, data_time: float, step_time: float) -> None: ...
    def on_epoch_end(self, ctx: TrainContext, epoch: int, metrics: dict) -> None: ...
    def on_train_end(self, ctx: TrainContext, metrics: dict) -> None: ...
    def on_exception(self, ctx: TrainContext, exc: BaseException) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def _call(self, name: str, *a, **kw) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(*a, **kw)

    def on_train_begin(self, *a, **kw): self._call("on_train_begin", *a, **kw)
    def on_epoch_begin(self, *a, **kw): self._call("on_epoch_begin", *a, **kw)
    def on_step_begin(self, *a, **kw): self._call("on_step_begin", *a, **kw)
    def on_after_backward(self, *a, **kw): self._call("on_after_backward", *a, **kw)
    def on_step_end(self, *a, **kw): self._call("on_step_end", *a, **kw)
    def on_epoch_end(self, *a, **kw): self._call("on_epoch_end", *a, **kw)
    def on_train_end(self, *a, **kw): self._call("on_train_end", *a, **kw)

    def on_exception(self, ctx: TrainContext, exc: BaseException) -> None:
        """Every callback gets its chance, even when another one fails while closing."""
        for cb in self.callbacks:
            try:
                cb.on_exception(ctx, exc)
            except Exception as e:
                log.warning("%s.on_exception failed: %s: %s", type(cb).__name__,
                            type(e).__name__, e)
