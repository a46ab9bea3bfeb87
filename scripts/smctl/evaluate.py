"""``smctl evaluate``: the evaluation report of a model on a labelled image folder.

    smctl evaluate --data data/dogImages/test --model-dir local/train/algo-1/model
    smctl evaluate --data data/dogImages/test --url http://127.0.0.1:8080
    smctl evaluate --data data/dogImages/test --endpoint imgclf-dogs --output local/eval/prod

``--model-dir`` predicts in-process with the artifact and the serving preprocessing (torch is
imported only then); ``--url`` and ``--endpoint`` send JSON batches through the one
``/invocations`` client (:mod:`smctl.client`) asking for every class's probability. The files
(evaluation.json, predictions.csv, report.html, confusion_matrix.png, reliability.png) come
from :mod:`imgclf.evaluation`, the same code the training job runs on its test split.

Folder classes (``NNN.Class_Name``) are matched with the model's classes by name (exactly, else
without the ``NNN.`` prefix); one the model does not know stops the run (exit 2) before any
image is predicted - with ``--url``/``--endpoint`` the model's classes come from the answer to
the first batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from smctl.aws import Api
from smctl.client import (ALL_CLASSES, EndpointTransport, HttpTransport, InvocationsClient,
                          TransportError, unreachable)
from smctl.config import Settings
from smctl.errors import ConfigError, SmctlError
from smctl.invoke import add_transport_flags

DEFAULT_OUTPUT_ROOT = Path("local/eval")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("evaluate", parents=parents,
                       help="evaluation report (per-class metrics, confusion, calibration) of a "
                            "model dir, a server or an endpoint on a labelled image folder")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="labelled images in the dogImages layout: DIR/NNN.Class_Name/*.jpg")
    p.add_argument("--model-dir", type=Path, metavar="DIR",
                   help="predict in-process with this artifact (model.pt + model.json)")
    add_transport_flags(p, "endpoint")
    p.add_argument("--output", type=Path, metavar="DIR",
                   help="report folder (default: local/eval/NAME, NAME from the model dir, "
                        "endpoint or URL)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per forward pass / per request (default: 32; requests also "
                        "stay within the serving payload and image limits)")
    p.set_defaults(func=run_evaluate)


def default_name(args) -> str:
    if args.endpoint:
        return args.endpoint
    if args.url:
        from urllib.parse import urlsplit
        return urlsplit(args.url).netloc.replace(":", "-") or "url"
    d = args.model_dir.resolve()
    return d.parent.name if d.name == "model" and d.parent.name else d.name


def folder_classes(data: Path) -> dict[str, list[str]]:
    from collections import Counter

    from imgclf.layout import IMAGE_NAMES, describe_skipped, list_images
    if not data.is_dir():
        raise ConfigError(f"--data {data} is not a folder")
    skipped: Counter = Counter()
    found = list_images(str(data), skipped)
    if not found:
        raise ConfigError(f"--data {data} holds no class folders with images",
                          f"expected DIR/NNN.Class_Name/*.{{{IMAGE_NAMES}}}")
    if skipped:
        print(f"smctl: skipped {describe_skipped(skipped)} under {data}", file=sys.stderr)
    return found


def match_classes(folders: list[str], model_classes: list[str]) -> dict[str, int]:
    """Folder class -> the model's class index, by name (exact, else without ``NNN.``)."""
    from imgclf.layout import display_name
    exact = {c: i for i, c in enumerate(model_classes)}
    by_display: dict[str, list[int]] = {}
    for i, c in enumerate(model_classes):
        by_display.setdefault(display_name(c), []).append(i)
    out, unknown = {}, []
    for f in folders:
        if f in exact:
            out[f] = exact[f]
        elif len(by_display.get(display_name(f), [])) == 1:
            out[f] = by_display[display_name(f)][0]
        else:
            unknown.append(f)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ConfigError(f"{len(unknown)} folder class(es) the model does not know: {shown}",
                          f"the model has {len(model_classes)} classes, e.g. "
                          f"{', '.join(model_classes[:3])}")
    return out


def progress_bar(total: int, what: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=what, unit="img", file=sys.stderr,
                disable=not sys.stderr.isatty(), leave=False)


def run_evaluate(args, settings: Settings, api: Api) -> int:
    sources = [s for s in ("model_dir", "url", "endpoint") if getattr(args, s)]
    if len(sources) != 1:
        raise ConfigError("give exactly one of --model-dir, --url, --endpoint"
                          + (f" (got {', '.join('--' + s.replace('_', '-') for s in sources)})"
                             if sources else ""))
    if args.data is None:
        raise ConfigError("--data DIR is required", "a labelled folder: DIR/NNN.Class_Name/*.jpg")
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    data = args.data
    found = folder_classes(data)
    samples = [(os.path.relpath(p, data), folder) for folder in found for p in found[folder]]
    out_dir = args.output or DEFAULT_OUTPUT_ROOT / default_name(args)
    if args.model_dir:
        preds = predict_model_dir(args, found, samples, dry_run=api.dry_run)
    else:
        transport = (HttpTransport(args.url, args.timeout, api=api) if args.url
                     else EndpointTransport(api, args.endpoint))
        client = InvocationsClient(transport, concurrency=args.concurrency,
                                   log=lambda m: print(f"smctl: {m}", file=sys.stderr))
        try:
            preds = predict_remote(client, data, found, samples, args.batch_size)
        except TransportError as e:
            raise unreachable(e) from None
    if preds is None:  # --dry-run
        return 0
    from imgclf.evaluation import summary_line, write_report
    source = args.model_dir or args.url or f"endpoint {args.endpoint}"
    doc = write_report(preds, str(out_dir), root=str(data), title=f"Evaluation of {source} on {data}")
    print(summary_line(doc))
    print(f"report: {out_dir / 'report.html'} (evaluation.json, predictions.csv, "
          f"confusion_matrix.png, reliability.png)")
    return 0


def predict_model_dir(args, found, samples, dry_run: bool):
    from imgclf.artifact import ArtifactError, read_meta
    try:
        meta = read_meta(str(args.model_dir))
    except ArtifactError as e:
        raise ConfigError(str(e)) from None
    index = match_classes(list(found), meta.classes)
    if dry_run:
        return None
    import torch

    from imgclf.artifact import load_artifact
    from imgclf.evaluation import Predictions, predict_samples
    try:
        model, meta = load_artifact(str(args.model_dir))
    except ArtifactError as e:
        raise ConfigError(str(e)) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    data = args.data
    with progress_bar(len(samples), "evaluate") as bar:
        paths, labels, probs, bad = predict_samples(
            model, [(str(data / rel), index[folder]) for rel, folder in samples],
            meta.image_size, meta.resize_size, meta.mean, meta.std, device=device,
            batch_size=args.batch_size, num_workers=min(4, os.cpu_count() or 1),
            progress=bar.update)
    rel = [os.path.relpath(p, data) for p in paths]
    unreadable = [{**u, "path": os.path.relpath(u["path"], data)} for u in bad]
    return Predictions(meta.classes, rel, labels, probs.reshape(len(rel), meta.num_classes),
                       unreadable)


def _classes_from(prediction: dict) -> list[str] | None:
    """The model's classes in index order, from an entry holding every class in its top-k."""
    top = prediction.get("topk") or []
    by_index = {int(t["index"]): str(t["label"]) for t in top if "index" in t and "label" in t}
    if not by_index or sorted(by_index) != list(range(len(by_index))):
        return None
    return [by_index[i] for i in range(len(by_index))]


def predict_remote(client: InvocationsClient, data: Path, found, samples, batch_size: int):
    import numpy as np

    from imgclf.evaluation import Predictions
    items = [((rel, folder), data / rel) for rel, folder in samples]
    rows, unreadable, classes, index = [], [], None, None
    first, rest = items[:batch_size], items[batch_size:]
    with progress_bar(len(items), "evaluate") as bar:
        for chunk in (first, rest):  # the first batch tells the model's classes
            if not chunk:
                continue
            for item in client.predict(chunk, topk=ALL_CLASSES, batch_size=batch_size,
                                       progress=bar.update):
                (rel, folder) = item.key
                if item.prediction is None and item.error is None:
                    return None  # --dry-run: the first request was printed, nothing sent
                if item.error and item.status not in (None, 400, 413):  # not about the file
                    raise SmctlError(f"{client.transport.name}: {item.error} (for {rel})",
                                     "see the server's log")
                if item.error:
                    unreadable.append({"path": rel, "reason": item.error})
                    continue
                if classes is None:
                    classes = _classes_from(item.prediction)
                    if classes is None:
                        raise SmctlError(f"{client.transport.name} did not answer every class's "
                                         "probability", "is it the imgclf serving image?")
                    index = match_classes(list(found), classes)
                vec = np.zeros(len(classes))
                for t in item.prediction["topk"]:
                    vec[int(t["index"])] = float(t["probability"])
                rows.append((rel, index[folder], vec))
    if classes is None:
        raise SmctlError(f"no image of {data} could be predicted by {client.transport.name}: "
                         f"{unreadable[0]['reason'] if unreadable else 'no answer'}")
    probs = np.stack([v for _, _, v in rows]) if rows else np.zeros((0, len(classes)))
    return Predictions(classes, [r for r, _, _ in rows], [y for _, y, _ in rows], probs,
                       unreadable)
