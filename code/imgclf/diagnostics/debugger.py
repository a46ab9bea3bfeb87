"""smdebug hook integration (SageMaker Debugger's tensor collection), optional by design.

Two ways a hook gets created:

1. SageMaker wrote a debug hook config (``DebugHookConfig`` in CreateTrainingJob) at
   ``$SMDEBUG_CONFIG_FILE_PATH`` or ``/opt/ml/input/config/debughookconfig.json``: the hook comes
   from it (``smdebug.pytorch.Hook.create_from_json_file``), so AWS's rule containers see the
   tensors and collections they asked for. Only collections the config leaves out get the
   defaults below.
2. ``--smdebug-out-dir DIR`` (local runs, CI): a hook with this project's defaults writes to DIR;
   ``python -m imgclf.diagnostics.smdebug_rules DIR`` then runs the rules offline on it.

Defaults (saving every tensor every step costs ~90 MB/step on ResNet-18): losses every step in
every mode; weights and gradients every ``SPARSE_INTERVAL`` train steps plus the first
``EARLY_STEPS`` steps; activation inputs (ReLU/sigmoid/tanh) only for the first
``EARLY_STEPS`` steps (what PoorWeightInitialization needs).

Without a config, without smdebug, or when creating the hook fails, training runs unchanged and
one log line says why.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from imgclf.callbacks import Callback, TrainContext

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/opt/ml/input/config/debughookconfig.json"
CONFIG_PATH_ENV = "SMDEBUG_CONFIG_FILE_PATH"      # the variable smdebug itself reads
SPARSE_INTERVAL = 100
EARLY_STEPS = 10
#: inputs of activation modules: ResNet's "layer1.0.relu_input_0", a Sequential's "sigmoid3_input_0"
ACTIVATION_INPUT_REGEX = r"(?i).*(relu|sigmoid|tanh|gelu|silu)[^.]*_input_0$"

#: loop modes -> smdebug ModeKeys names
MODES = {"train": "TRAIN", "eval": "EVAL", "test": "PREDICT"}


def config_path() -> str:
    return os.environ.get(CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH)


def apply_default_collections(hook, configured: frozenset = frozenset()) -> None:
    """Sensible save configs for the collections the rules need (skips ``configured`` ones)."""
    from smdebug.core.save_config import SaveConfig

    early = list(range(EARLY_STEPS))
    if "losses" not in configured:
        hook.get_collection("losses").save_config = SaveConfig(save_interval=1)
    for name in ("weights", "gradients"):
        if name not in configured:
            hook.get_collection(name).save_config = SaveConfig(
                save_interval=SPARSE_INTERVAL, save_steps=early)
    if "relu_input" not in configured:
        coll = hook.get_collection("relu_input")
        coll.include(ACTIVATION_INPUT_REGEX)
        coll.save_config = SaveConfig(save_steps=early, save_interval=10 ** 9)
    for name in ("losses", "weights", "gradients", "relu_input"):
        hook.include_collections = list(dict.fromkeys(list(hook.include_collections) + [name]))


def create_hook(out_dir: Optional[str] = None, use_sagemaker_config: bool = True):
    """The smdebug hook, or None (with the reason logged once)."""
    path = config_path()
    from_config = use_sagemaker_config and os.path.isfile(path)
    if not from_config and not out_dir:
        log.info("smdebug: no debug hook config at %s and no --smdebug-out-dir; Debugger hook "
                 "off (the project's own rules and profiler still run)", path)
        return None
    try:
        import smdebug.pytorch as smd
    except ImportError as e:
        log.warning("smdebug: not importable (%s); Debugger hook off, training unchanged", e)
        return None
    if from_config:
        hook = smd.Hook.create_from_json_file(path)
        if hook is None:
            log.warning("smdebug: %s did not yield a hook; Debugger hook off", path)
            return None
        import json
        with open(path) as f:
            cfg = json.load(f)
        configured = frozenset(c.get("CollectionName") for c in
                               cfg.get("CollectionConfigurations") or [])
        apply_default_collections(hook, configured)
        log.info("smdebug: hook created from SageMaker debug hook config %s (out_dir=%s, "
                 "collections from config: %s)", path, hook.out_dir, ",".join(sorted(configured)) or "none")
        return hook
    hook = smd.Hook(out_dir=out_dir, export_tensorboard=False,
                    save_config=smd.SaveConfig(save_interval=SPARSE_INTERVAL),
                    include_collections=["losses", "weights", "gradients", "relu_input"])
    apply_default_collections(hook)
    log.info("smdebug: hook writing to %s (losses every step, weights/gradients every %d steps "
             "and the first %d)", out_dir, SPARSE_INTERVAL, EARLY_STEPS)
    return hook


class SmdebugCallback(Callback):
    def __init__(self, use_sagemaker_config: bool = True, out_dir: Optional[str] = None):
        self.use_sagemaker_config = use_sagemaker_config
        self.out_dir = out_dir
        self.hook = None
        self._closed = False
        self._mode: Optional[str] = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        self.hook = create_hook(self.out_dir, self.use_sagemaker_config)
        if self.hook is None:
            return
        self.hook.register_module(ctx.model)
        self.hook.register_loss(ctx.criterion)

    def on_step_begin(self, ctx: TrainContext, mode: str, step: int) -> None:
        if self.hook is None or mode == self._mode:
            return
        from smdebug.core.modes import ModeKeys
        self.hook.set_mode(ModeKeys[MODES.get(mode, "GLOBAL")])
        self._mode = mode

    def on_train_end(self, ctx: TrainContext, metrics: dict) -> None:
        self._close()

    def on_exception(self, ctx: TrainContext, exc: BaseException) -> None:
        self._close()   # flushes the steps recorded before the failure

    def _close(self) -> None:
        if self.hook is not None and not self._closed:
            self._closed = True
            self.hook.close()
            log.info("smdebug: hook closed; tensors in %s", self.hook.out_dir)
