#!/usr/bin/env python3
"""Do the training rules cry wolf? False alarms on healthy runs, misses on broken ones.

    python scripts/bench_rules.py                 # make bench-rules: ~15 tiny real runs, minutes on 2 CPUs
    python scripts/bench_rules.py --only demo,lr_far_too_high --keep local/bench-rules

Each run is the real training job (``imgclf.training.main``: ResNet-18, the real loop, the
in-loop rules with their defaults) on small real or generated images (16 px, 32 for the demo's
recipe; a few hundred images, a few epochs, ``--weights none``), and its ``rules_report.json`` is read back.

- healthy runs: the seed project's lr range (SGD 0.001 and 0.01), AdamW as ``make demo`` runs
  it (its exact recipe: 10 Fashion-MNIST classes, 64 px, batch 64, 4 epochs), several seeds,
  two datasets (Fashion-MNIST photos, noisy colour classes), small (8) and large (128) batches.
  Every rule should stay quiet (NoIssuesFound or NotEvaluated): an IssuesFound is a false alarm.
- broken runs, each with the rule(s) that should find it: lr far too high (SGD lr 5:
  LossNotDecreasing), lr ~0 (1e-9: LossNotDecreasing), frozen weights (every parameter but the
  head's bias frozen: LossNotDecreasing), labels shuffled in the train split (Overfit),
  exploding initialisation (batch-norm scales x10 in every block: PoorWeightInitialization).
  A broken run whose rule says anything but IssuesFound is a miss.

Every run also feeds a second set of rules with AWS's parameters (``RulesCallback(aws=True)``,
``rules_report_aws.json``), so each departure is measured on the same losses. Prints one line
per run (statuses and first issues) and, per rule, false alarms / healthy runs and misses /
broken runs that expect it, AWS's parameters -> this project's. Not a test: figures on a shared machine are noisy in
time, not in outcome (each run is seeded; CPU results are deterministic).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "code"))
sys.path.insert(0, HERE)

RULES = ["LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining",
         "PoorWeightInitialization"]

# name -> (dataset, extra train.py args, rules that must fire; empty = healthy)
COMMON = ["--weights", "none", "--num-workers", "0", "--profiler", "False", "--debugger", "False",
          "--image-size", "16"]   # a later --image-size (demo) wins
RUNS = {
    # healthy
    "sgd_lr0.01": ("fashion", ["--lr", "0.01", "--batch-size", "16", "--epochs", "4"], []),
    "sgd_lr0.001": ("fashion", ["--lr", "0.001", "--batch-size", "16", "--epochs", "4"], []),
    "sgd_lr0.003_seed7": ("fashion", ["--lr", "0.003", "--batch-size", "16", "--epochs", "4", "--seed", "7"], []),
    "adamw_colours_batch8": ("colours", ["--optimizer", "adamw", "--lr", "0.002", "--batch-size", "8", "--epochs", "3"], []),
    "sgd_colours_seed3": ("colours", ["--lr", "0.01", "--batch-size", "8", "--epochs", "3", "--seed", "3"], []),
    "sgd_batch128": ("fashion_big", ["--lr", "0.01", "--batch-size", "128", "--epochs", "8"], []),
    "demo": ("demo", ["--optimizer", "adamw", "--lr", "0.002", "--batch-size", "64", "--epochs", "6", "--image-size", "32"], []),
    # broken
    "lr_far_too_high": ("fashion", ["--lr", "5", "--batch-size", "16", "--epochs", "8"], ["LossNotDecreasing"]),
    "lr_zero": ("fashion", ["--lr", "1e-9", "--batch-size", "16", "--epochs", "8"], ["LossNotDecreasing"]),
    "frozen_weights": ("fashion", ["--lr", "0.01", "--batch-size", "16", "--epochs", "8", "--bench-freeze-all"], ["LossNotDecreasing"]),
    "labels_shuffled": ("fashion_shuffled", ["--optimizer", "adamw", "--lr", "0.002", "--batch-size", "16", "--epochs", "5"], ["Overfit"]),
    "exploding_init": ("fashion", ["--lr", "0.01", "--batch-size", "16", "--epochs", "4", "--weights", "{exploding}"], ["PoorWeightInitialization"]),
}


def make_datasets(root: str) -> dict:
    import make_sample_data
    from PIL import Image
    out = {}
    quiet = contextlib.redirect_stdout(io.StringIO())

    def fashion(name, classes, train, size=28):
        path = os.path.join(root, name)
        with quiet:
            make_sample_data.main(["--out", path, "--classes", str(classes), "--train-per-class",
                                   str(train), "--valid-per-class", "20", "--test-per-class", "10",
                                   "--size", str(size)])
        return path
    out["fashion"] = fashion("fashion", 4, 40)            # 160 train images: 10 steps of 16
    out["fashion_big"] = fashion("fashion_big", 10, 64)   # 640 train images: 5 steps of 128
    out["demo"] = fashion("demo", 10, 100)                # make demo's sample set: 15 steps of 64
    shuffled = os.path.join(root, "fashion_shuffled")
    shutil.copytree(out["fashion"], shuffled)
    rng = np.random.default_rng(0)
    train = os.path.join(shuffled, "train")
    classes = sorted(os.listdir(train))
    files = [(c, f) for c in classes for f in sorted(os.listdir(os.path.join(train, c)))]
    labels = rng.permutation([c for c, _ in files])
    for (c, f), new in zip(files, labels):
        if new != c:
            os.replace(os.path.join(train, c, f), os.path.join(train, new, "s_" + f))
    out["fashion_shuffled"] = shuffled
    colours = os.path.join(root, "colours")
    palette = {"001.Red": (200, 40, 40), "002.Green": (40, 180, 60), "003.Blue": (40, 60, 200),
               "004.Grey": (128, 128, 128)}
    for split, n in {"train": 40, "valid": 10, "test": 10}.items():   # 20 steps of 8
        for name, rgb in palette.items():
            d = os.path.join(colours, split, name)
            os.makedirs(d, exist_ok=True)
            for k in range(n):
                a = np.clip(np.array(rgb)[None, None] + rng.normal(0, 60, (24, 24, 3)), 0, 255)
                Image.fromarray(a.astype("uint8")).save(os.path.join(d, f"{k}.jpg"))
    out["colours"] = colours
    return out


def exploding_weights(path: str, num_classes: int = 4) -> str:
    """ResNet-18 whose batch-norm scales are x10: every residual block multiplies its input."""
    import torch
    from imgclf.models import build_model
    model = build_model("resnet18", num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.mul_(10.0)
    torch.save(model.state_dict(), path)
    return path


@contextlib.contextmanager
def with_aws_baseline():
    """A second RulesCallback with AWS's parameters beside the project's, fed by the same run
    (writes rules_report_aws.json): each departure's figure comes from the same losses."""
    from imgclf import diagnostics
    from imgclf.diagnostics.rules import RulesCallback
    original = diagnostics.build_callbacks

    def build(args):
        return [*original(args), RulesCallback(aws=True, report_file="rules_report_aws.json")]
    diagnostics.build_callbacks = build
    try:
        yield
    finally:
        diagnostics.build_callbacks = original


@contextlib.contextmanager
def frozen_weights():
    """Every parameter but the classifier's bias frozen (the loop then has nothing to learn)."""
    from imgclf import training
    original = training.build_model

    def build(*a, **k):
        model = original(*a, **k)
        for name, p in model.named_parameters():
            p.requires_grad_(name == "fc.bias")
        return model
    training.build_model = build
    try:
        yield
    finally:
        training.build_model = original


def run_one(name: str, data: dict, work: str) -> dict:
    from imgclf import training
    dataset, extra, expect = RUNS[name]
    out = os.path.join(work, name)
    freeze = "--bench-freeze-all" in extra
    extra = [a.replace("{exploding}", data["exploding"]) for a in extra if a != "--bench-freeze-all"]
    argv = ["--data-dir", data[dataset], "--model-dir", f"{out}/model", "--output-data-dir",
            f"{out}/data", "--output-dir", f"{out}/output", "--checkpoint-dir", f"{out}/ck",
            *COMMON, *extra]
    log = io.StringIO()
    t0 = time.time()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), with_aws_baseline(), \
            (frozen_weights() if freeze else contextlib.nullcontext()):
        code = training.main(argv)
    with open(os.path.join(out, "train.log"), "w") as f:
        f.write(log.getvalue())
    result = {"name": name, "exit": code, "seconds": time.time() - t0, "expect": expect}
    for key, file in (("rules", "rules_report.json"), ("aws", "rules_report_aws.json")):
        path = os.path.join(out, "data", file)
        report = json.load(open(path)) if os.path.isfile(path) else {"rules": {}}
        result[key] = {r: report["rules"].get(r, {}) for r in RULES}
    return result


def summarise(results: list[dict]) -> None:
    short = {"LossNotDecreasing": "LossNotDecr", "VanishingGradient": "Vanishing",
             "Overfit": "Overfit", "Overtraining": "Overtrain", "PoorWeightInitialization": "PoorInit"}
    print(f"\n{'run':24s} {'kind':8s} " + " ".join(f"{short[r]:>12s}" for r in RULES) + "   time")
    mark = {"IssuesFound": "ISSUES", "NoIssuesFound": "ok", "NotEvaluated": "-"}
    for r in results:
        kind = "broken" if r["expect"] else "healthy"
        cells = []
        for rule in RULES:
            s = mark.get(r["rules"][rule].get("status"), "?")
            if rule in r["expect"]:
                s = ("HIT " if s == "ISSUES" else "MISS ") + ("" if s == "ISSUES" else s)
            cells.append(f"{s.strip():>12s}")
        print(f"{r['name']:24s} {kind:8s} " + " ".join(cells) + f"  {r['seconds']:5.0f}s")
    print("\nfirst issues:")
    for r in results:
        for rule in RULES:
            fi = r["rules"][rule].get("first_issue")
            if fi:
                print(f"  {r['name']:24s} {rule:24s} step {fi['step']} epoch {fi.get('epoch')}: "
                      f"{fi['message'][:110]}")
    print(f"\n{'rule':26s} {'false alarms (AWS -> here)':>28s} {'misses (AWS -> here)':>22s}")
    healthy = [r for r in results if not r["expect"]]
    for rule in RULES:
        def count(runs, key, want):
            return sum((r[key][rule].get("status") == "IssuesFound") == want for r in runs)
        broken = [r for r in results if rule in r["expect"]]
        fa = f"{count(healthy, 'aws', True)} -> {count(healthy, 'rules', True)} of {len(healthy)}"
        miss = (f"{count(broken, 'aws', False)} -> {count(broken, 'rules', False)} of {len(broken)}"
                if broken else "n/a")
        print(f"{rule:26s} {fa:>28s} {miss:>22s}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated run names (default: all)")
    p.add_argument("--keep", default="", help="keep datasets, logs and reports in this folder")
    p.add_argument("--json", default="", help="also write the results as JSON here")
    a = p.parse_args(argv)
    names = [n for n in a.only.split(",") if n] or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; known: {', '.join(RUNS)}")
    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    work = a.keep or tempfile.mkdtemp(prefix="bench-rules-")
    os.makedirs(work, exist_ok=True)
    data = make_datasets(os.path.join(work, "datasets"))
    data["exploding"] = exploding_weights(os.path.join(work, "exploding_init.pt"))
    results = []
    for n in names:
        r = run_one(n, data, os.path.join(work, "runs"))
        results.append(r)
        print(f"{n}: exit {r['exit']}, {r['seconds']:.0f}s, " + ", ".join(
            f"{k}={v.get('status')} (AWS {r['aws'][k].get('status')})"
            for k, v in r["rules"].items()), flush=True)
    summarise(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
