"""Evaluation report: which classes fail, which pairs are confused, whether probabilities hold.

From predictions (true class, probability vector per image, path) this module computes the
metrics with scikit-learn and writes, into one folder:

- ``evaluation.json``   classes, n_images, accuracy, top5_accuracy, per_class, macro, weighted,
                        confusion_matrix, most_confused, ece, errors, unreadable
- ``predictions.csv``   path, true, predicted, probability, topk (one row per image)
- ``report.html``       self-contained (pictures embedded as base64 PNG/JPEG), from the
                        template ``evaluation.html`` next to this module
- ``confusion_matrix.png``, ``reliability.png``

Who predicts: ``smctl evaluate`` (the artifact in-process, a server's ``/invocations``, or an
endpoint) and the training job (its best model on the test split, :func:`evaluate_job`). The
report part (:class:`Predictions` -> :func:`compute_metrics` -> :func:`write_report`) needs only
numpy, scikit-learn, matplotlib and Pillow; torch is imported only by :func:`predict_samples`,
:func:`gather` and :func:`evaluate_job`, so smctl can build reports without it::

    preds = Predictions(classes, paths, true_idx, probs, unreadable)
    metrics = write_report(preds, "local/eval/demo", root="sample_data/fashion/test")
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
import string
from dataclasses import dataclass, field

import numpy as np

from imgclf.layout import display_name

log = logging.getLogger(__name__)

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluation.html")
ECE_BINS = 15
TOP_K = 5                # top5_accuracy and the predictions.csv top-k use k = min(TOP_K, classes)
GALLERY_SIZE = 24        # worst errors shown with thumbnails
CONFUSED_PAIRS_SHOWN = 20
FILES = ("evaluation.json", "predictions.csv", "report.html", "confusion_matrix.png",
         "reliability.png")


@dataclass
class Predictions:
    """One row per readable image: its path, true class index and probability vector.

    ``probs`` is (N, C) over ``classes`` (the model's, in its order); ``unreadable`` lists
    ``{"path", "reason"}`` for the images that could not be predicted.
    """

    classes: list[str]
    paths: list[str]
    true: np.ndarray
    probs: np.ndarray
    unreadable: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.true = np.asarray(self.true, dtype=np.int64).reshape(-1)
        self.probs = np.asarray(self.probs, dtype=np.float64).reshape(len(self.true),
                                                                      len(self.classes))
        if len(self.paths) != len(self.true):
            raise ValueError(f"{len(self.paths)} paths for {len(self.true)} predictions")

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(1) if len(self.true) else np.zeros(0, dtype=np.int64)

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(1) if len(self.true) else np.zeros(0)


# ----------------------------------------------------------------------------- metrics
def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """ECE over ``bins`` equal-width confidence bins, and the bins (for the reliability diagram).

    ECE = sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)| (Guo et al. 2017,
    "On Calibration of Modern Neural Networks"). Neither scikit-learn (its calibration_curve is
    binary only) nor anything else in the pinned set computes it. Bins are (low, high] as in
    that paper's code and torchmetrics; a confidence of exactly 0 falls in the first.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    n, ece, table = len(confidence), 0.0, []
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else None
        conf = float(confidence[mask].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                      "accuracy": acc, "confidence": conf})
    return float(ece), table


def _topk_accuracy(true: np.ndarray, probs: np.ndarray, k: int) -> float:
    from sklearn.metrics import top_k_accuracy_score
    n_classes = probs.shape[1]
    if k >= n_classes:
        return 1.0
    return float(top_k_accuracy_score(true, probs, k=k, labels=list(range(n_classes))))


def compute_metrics(p: Predictions) -> dict:
    """Everything evaluation.json holds (see the module doc), from scikit-learn's metrics."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes, n_classes = p.classes, len(p.classes)
    true, pred, conf = p.true, p.predicted, p.confidence
    n = len(true)
    k = min(TOP_K, n_classes)
    labels = list(range(n_classes))
    doc: dict = {"classes": list(classes), "n_images": n}
    if n == 0:
        doc.update(accuracy=None, top5_accuracy=None, per_class={}, macro=None, weighted=None,
                   confusion_matrix=[[0] * n_classes for _ in labels], most_confused=[],
                   ece=None, errors=[], unreadable=p.unreadable, calibration_bins=[])
        return doc
    cm = confusion_matrix(true, pred, labels=labels)
    prec, rec, f1, support = precision_recall_fscore_support(true, pred, labels=labels,
                                                             zero_division=0)
    averages = {}
    for avg in ("macro", "weighted"):  # over the classes in the data or the predictions
        ap, ar, af, _ = precision_recall_fscore_support(true, pred, average=avg, zero_division=0)
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    ece, bins = expected_calibration_error(conf, pred == true)
    off = [(int(cm[i, j]), i, j) for i in labels for j in labels if i != j and cm[i, j]]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    wrong = np.flatnonzero(pred != true)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")]  # most confident mistakes first
    doc.update(
        accuracy=float(np.trace(cm) / n),
        top5_accuracy=_topk_accuracy(true, p.probs, k),
        per_class={classes[i]: {"precision": float(prec[i]), "recall": float(rec[i]),
                                "f1": float(f1[i]), "support": int(support[i])} for i in labels},
        macro=averages["macro"], weighted=averages["weighted"],
        confusion_matrix=cm.astype(int).tolist(),
        most_confused=[{"true": classes[i], "predicted": classes[j], "count": c}
                       for c, i, j in off],
        ece=ece,
        errors=[{"path": p.paths[i], "true": classes[true[i]], "predicted": classes[pred[i]],
                 "probability": float(conf[i])} for i in wrong],
        unreadable=list(p.unreadable),
        calibration_bins=bins,
    )
    return doc


# ----------------------------------------------------------------------------- files
def write_predictions_csv(path: str, p: Predictions) -> None:
    k = min(TOP_K, len(p.classes))
    order = np.argsort(-p.probs, axis=1, kind="stable")[:, :k] if len(p.true) else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true", "predicted", "probability", "topk"])
        for i, row in enumerate(order):
            top = ";".join(f"{p.classes[j]}:{p.probs[i, j]:.6f}" for j in row)
            w.writerow([p.paths[i], p.classes[p.true[i]], p.classes[row[0]],
                        f"{p.probs[i, row[0]]:.6f}", top])


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(path: str, metrics: dict) -> None:
    """Row-normalised heatmap (recall on the diagonal); tick labels only while they stay legible."""
    plt = _pyplot()
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(metrics["classes"])
    side = min(16.0, max(5.0, 0.12 * n + 3))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 60:
        names = [display_name(c) for c in metrics["classes"]]
        size = 8 if n <= 20 else 5
        ax.set_xticks(range(n), names, rotation=90, fontsize=size)
        ax.set_yticks(range(n), names, fontsize=size)
    else:  # 133 dog breeds: names would overlap; the index goes with the table beside the map
        step = max(1, n // 20)
        ax.set_xticks(range(0, n, step))
        ax.set_yticks(range(0, n, step))
    if n <= 12:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="black" if norm[i, j] > 0.5 else "white")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix, row-normalised ({n} classes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(path: str, metrics: dict) -> None:
    plt = _pyplot()
    bins = metrics["calibration_bins"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=(3, 1), sharex=True)
    width = 1.0 / max(1, len(bins))
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] or 0 for b in bins], width=width * 0.95, color="tab:blue",
           edgecolor="black", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    conf = [(c, b["confidence"]) for c, b in zip(centres, bins) if b["count"]]
    if conf:
        ax.plot([c for c, _ in conf], [v for _, v in conf], "o", color="tab:red", ms=4,
                label="mean confidence in bin")
    ece = metrics.get("ece")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="Reliability diagram" + (f" (ECE {ece:.4f}, {len(bins)} bins)" if ece is not None
                                          else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="tab:gray")
    ax2.set(xlabel="confidence (probability of the predicted class)", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _thumbnail(path: str, size: int = 112) -> str | None:
    from imgclf.images import ImageDecodeError, decode_image
    try:
        img = decode_image(path, draft_size=size)
    except (ImageDecodeError, OSError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_html(metrics: dict, out_dir: str, root: str | None, title: str) -> str:
    esc = html.escape
    classes = metrics["classes"]
    per = metrics["per_class"]
    predicted = np.asarray(metrics["confusion_matrix"]).sum(0) if per else []
    index = {c: i for i, c in enumerate(classes)}
    worst = sorted(per.items(), key=lambda kv: (kv[1]["f1"], kv[1]["recall"], kv[0]))
    class_rows = "\n".join(  # classes neither in the data nor predicted have nothing to show
        f"<tr><td>{index[c]}</td><td>{esc(c)}</td><td>{_fmt(v['f1'])}</td>"
        f"<td>{_fmt(v['precision'])}</td><td>{_fmt(v['recall'])}</td><td>{v['support']}</td></tr>"
        for c, v in worst if v["support"] or predicted[index[c]])
    pair_rows = "\n".join(
        f"<tr><td>{esc(m['true'])} ({index[m['true']]})</td><td>{esc(m['predicted'])} "
        f"({index[m['predicted']]})</td><td>{m['count']}</td>"
        f"<td>{_fmt(m['count'] / max(1, per[m['true']]['support']), 2)}</td></tr>"
        for m in metrics["most_confused"][:CONFUSED_PAIRS_SHOWN]) or \
        "<tr><td colspan=4>no confusions</td></tr>"
    cards = []
    for e in metrics["errors"][:GALLERY_SIZE]:
        src = _thumbnail(os.path.join(root, e["path"]) if root else e["path"])
        img = f'<img src="{src}" alt="">' if src else "<div class=noimg>no preview</div>"
        cards.append(f'<figure>{img}<figcaption title="{esc(e["path"])}">'
                     f'<b>{esc(display_name(e["predicted"]))}</b> {e["probability"]:.2f}<br>'
                     f'true: {esc(display_name(e["true"]))}<br><small>{esc(os.path.basename(e["path"]))}'
                     f'</small></figcaption></figure>')
    unreadable = "".join(f"<li>{esc(u['path'])}: {esc(u.get('reason', ''))}</li>"
                         for u in metrics["unreadable"])
    macro, weighted = metrics["macro"] or {}, metrics["weighted"] or {}
    with open(TEMPLATE) as f:
        template = string.Template(f.read())
    return template.substitute(
        title=esc(title), n_images=metrics["n_images"], n_classes=len(classes),
        accuracy=_fmt(metrics["accuracy"]), top5_accuracy=_fmt(metrics["top5_accuracy"]),
        top_k=min(TOP_K, len(classes)),
        macro_f1=_fmt(macro.get("f1")), weighted_f1=_fmt(weighted.get("f1")),
        macro_precision=_fmt(macro.get("precision")), macro_recall=_fmt(macro.get("recall")),
        ece=_fmt(metrics["ece"]), ece_bins=ECE_BINS, n_errors=len(metrics["errors"]),
        n_unreadable=len(metrics["unreadable"]),
        unreadable=f"<ul>{unreadable}</ul>" if unreadable else "<p>none</p>",
        class_rows=class_rows, pair_rows=pair_rows, pairs_shown=CONFUSED_PAIRS_SHOWN,
        confusion_png=_png_data_uri(os.path.join(out_dir, "confusion_matrix.png")),
        reliability_png=_png_data_uri(os.path.join(out_dir, "reliability.png")),
        gallery="\n".join(cards) or "<p>no errors</p>", gallery_size=GALLERY_SIZE)


def write_report(p: Predictions, out_dir: str, root: str | None = None,
                 title: str = "Evaluation") -> dict:
    """Compute the metrics and write every file of the report into ``out_dir``.

    ``root``: the folder the (relative) paths are under, for the gallery's thumbnails.
    Returns the evaluation.json document.
    """
    os.makedirs(out_dir, exist_ok=True)
    metrics = compute_metrics(p)
    doc = {k: v for k, v in metrics.items() if k != "calibration_bins"}
    with open(os.path.join(out_dir, "evaluation.json"), "w") as f:
        json.dump(doc, f, indent=1)
    write_predictions_csv(os.path.join(out_dir, "predictions.csv"), p)
    plot_confusion(os.path.join(out_dir, "confusion_matrix.png"), metrics)
    plot_reliability(os.path.join(out_dir, "reliability.png"), metrics)
    page = render_html(metrics, out_dir, root, title)
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(page)
    return doc


def summary_line(doc: dict) -> str:
    macro = doc.get("macro") or {}
    return (f"evaluation: n_images={doc['n_images']} accuracy={_fmt(doc['accuracy'])} "
            f"macro_f1={_fmt(macro.get('f1'))} ece={_fmt(doc['ece'])} "
            f"unreadable={len(doc['unreadable'])}")


# ------------------------------------------------------- in-process prediction (torch)
def predict_samples(model, samples: list[tuple[str, int]], image_size: int, resize_size: int,
                    mean, std, device="cpu", batch_size: int = 64, num_workers: int = 0,
                    progress=None) -> tuple[list[str], list[int], np.ndarray, list[dict]]:
    """Softmax probabilities of ``model`` for ``(path, label)`` samples, with the serving
    preprocessing (decode, uint8 resize + centre crop, normalise on the device), in batches.

    Returns ``(paths, labels, probs, unreadable)`` for the readable images, in sample order.
    ``progress(n)`` is called with the images done after each batch.
    """
    import torch
    from torch.utils.data import DataLoader

    from imgclf.data import ImageFolderDataset
    from imgclf.transforms import eval_transform, normalize

    ds = ImageFolderDataset(samples, eval_transform(image_size, resize_size),
                            draft_size=resize_size)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list, shuffle=False)
    paths, labels, probs, unreadable = [], [], [], []
    model.eval()
    with torch.inference_mode():
        for items in loader:
            good = [(x, y, p) for x, y, p in items if x is not None]
            for x, _, p in items:
                if x is None:  # ImageFolderDataset gives "path: reason" for those
                    path, _, reason = p.partition(": ")
                    unreadable.append({"path": path, "reason": reason})
            if good:
                batch = normalize(torch.stack([x for x, _, _ in good]).to(device), mean, std)
                probs.append(torch.softmax(model(batch).float(), 1).cpu().numpy())
                labels += [y for _, y, _ in good]
                paths += [p for _, _, p in good]
            if progress:
                progress(len(items))
    n_classes = getattr(model, "num_classes", None)
    probs_arr = np.concatenate(probs) if probs else np.zeros((0, n_classes or 0))
    return paths, labels, probs_arr, unreadable


def gather(obj, is_distributed: bool) -> list:
    """Every rank's ``obj`` on every rank, in rank order (``[obj]`` without DDP)."""
    if not is_distributed:
        return [obj]
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def evaluate_job(model, samples: list[tuple[str, int]], classes: list[str], split_dir: str,
                 out_dir: str, *, image_size: int, resize_size: int, mean, std, device,
                 batch_size: int, num_workers: int, rank: int = 0, world: int = 1) -> dict | None:
    """The training job's report: the best model on the test split, same files as smctl
    evaluate, into ``out_dir`` (SM_OUTPUT_DATA_DIR/evaluation). Under DDP each rank predicts
    its shard (``samples[rank::world]``), rank 0 gathers every shard and writes; returns the
    evaluation.json document on rank 0, None elsewhere."""
    shard = samples[rank::world]
    paths, labels, probs, bad = predict_samples(model, shard, image_size, resize_size, mean, std,
                                                device, batch_size, num_workers)
    parts = gather((paths, labels, probs, bad), world > 1)
    if rank != 0:
        return None
    rel = [os.path.relpath(p, split_dir) for part in parts for p in part[0]]
    probs_all = np.concatenate([part[2].reshape(-1, len(classes)) for part in parts])
    labels_all = np.asarray([y for part in parts for y in part[1]], dtype=np.int64)
    order = np.argsort(np.asarray(rel, dtype=object), kind="stable")  # ranks interleave
    unreadable = [{**u, "path": os.path.relpath(u["path"], split_dir)}
                  for part in parts for u in part[3]]
    preds = Predictions(classes, [rel[i] for i in order], labels_all[order], probs_all[order],
                        sorted(unreadable, key=lambda u: u["path"]))
    doc = write_report(preds, out_dir, root=split_dir, title="Evaluation of the best model on "
                                                            f"{os.path.basename(split_dir)}")
    log.info("%s; report in %s", summary_line(doc), out_dir)
    return doc
