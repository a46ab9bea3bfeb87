"""The SageMaker inference contract: ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

The network is rebuilt from the artifact's ``model.json`` (:func:`imgclf.artifact.load_artifact`)
and images go through the same preprocessing as evaluation in training
(:mod:`imgclf.transforms`). Every function takes an optional MMS ``context``; the toolkit passes
it when the signature has room for it.

Request bodies (``Content-Type``):

- ``image/jpeg``, ``image/png``, any ``image/*``, ``application/x-image``,
  ``application/octet-stream``: one raw image, format sniffed from the bytes;
- ``application/json``: a base64 string, a list of them, or an object
  ``{"image": b64}`` / ``{"images": [b64, ...]}`` / ``{"instances": [b64 | {"b64": b64}, ...]}``
  with an optional ``"topk"``. ``data:image/...;base64,`` prefixes are accepted. All images of
  one request run as one batch.

Top-k: the JSON ``topk`` field, else ``topk=K`` in the ``X-Amzn-SageMaker-Custom-Attributes``
header, else ``IMGCLF_DEFAULT_TOPK`` (5); capped at the number of classes.

Response (``application/json``), one entry per image, in request order::

    {"predictions": [{"label": "red", "index": 0, "probability": 0.97,
                      "topk": [{"label": "red", "index": 0, "probability": 0.97}, ...]}]}

or, for ``Accept: application/jsonlines``, each entry on a line of its own.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from imgclf.artifact import ArtifactError, ModelMeta, load_artifact
from imgclf.images import ImageDecodeError
from imgclf.serving import content_types, fastpath, plan, settings
from imgclf.serving.errors import BadRequest, PayloadTooLarge
from imgclf.transforms import eval_transform, load_uint8, normalize

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """What ``model_fn`` returns: the eval-mode network plus what is needed to feed it."""

    model: torch.nn.Module  # the eager network (weights, parameter count)
    meta: ModelMeta
    device: torch.device
    transform: object = field(repr=False, default=None)
    path: fastpath.InferencePath | None = field(repr=False, default=None)  # None: eager
    # the worker's CPU threads (its share of the thread plan; 0: torch's count now): they decode
    # a batch's images side by side, and torch has them unless the path wants fewer
    threads: int = 0

    def __post_init__(self):
        if self.transform is None:
            self.transform = eval_transform(self.meta.image_size, self.meta.resize_size)
        if self.path is None:
            self.path = fastpath.InferencePath(self.model, "eager")
        if not self.threads:
            self.threads = torch.get_num_threads()

    @property
    def torch_threads(self) -> int:
        """torch's intra-op threads while this model predicts (:func:`use_threads`)."""
        return self.path.torch_threads or self.threads


@dataclass
class InferenceRequest:
    """What ``input_fn`` returns: raw image bytes (decoded in ``predict_fn``) and top-k."""

    images: list[bytes]
    topk: int | None = None


@dataclass
class Prediction:
    probabilities: torch.Tensor  # (N, C) on CPU
    classes: list[str]
    topk: int


# ---------------------------------------------------------------------------------- model_fn
def _device(context) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpu_id = None
    if context is not None:
        gpu_id = (getattr(context, "system_properties", None) or {}).get("gpu_id")
    return torch.device(f"cuda:{int(gpu_id or 0)}")


def load_model(model_dir: str, device: str | torch.device = "cpu", warm: bool = True,
               inference: str | None = None) -> ServedModel:
    """Load the artifact, choose the inference path (:mod:`imgclf.serving.fastpath`;
    ``inference``: one of ``fastpath.MODES``, default IMGCLF_INFERENCE) and, with ``warm``, run the
    whole pipeline once on a synthetic image.

    Warming pays the lazy costs (first forward, allocator, codec imports, cuDNN autotune) here,
    at worker start, not in the first request.
    """
    plan.apply_threads(os.environ)  # serve's thread plan: torch's count now is ServedModel.threads
    model, meta = load_artifact(model_dir, str(device))
    device = torch.device(device)
    path = fastpath.choose(model, meta.image_size, device, inference)
    log.info("inference path: %s%s", path.name, f" ({path.detail})" if path.detail else "")
    served = ServedModel(model, meta, device, path=path)
    if warm:
        check_model(served)
    return served


def model_fn(model_dir: str, context=None) -> ServedModel:
    return load_model(model_dir, _device(context))


def synthetic_jpeg(size: int = 256, color=(128, 64, 32)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def check_model(served: ServedModel) -> dict:
    """Run a synthetic JPEG through input_fn -> predict_fn -> output_fn; raise ArtifactError if
    the output does not have one finite probability per class."""
    try:
        request = input_fn(synthetic_jpeg(max(64, served.meta.resize_size)), content_types.JPEG)
        prediction = predict_fn(request, served)
    except Exception as e:
        raise ArtifactError(f"the model does not run on a {served.meta.image_size}px image: "
                            f"{type(e).__name__}: {str(e)[:300]}") from e
    probs = prediction.probabilities
    if probs.shape != (1, served.meta.num_classes) or not torch.isfinite(probs).all():
        raise ArtifactError(f"the model gives output of shape {tuple(probs.shape)} (or non-finite "
                            f"values) for {served.meta.num_classes} classes")
    return json.loads(output_fn(prediction, content_types.JSON)[0])


# ---------------------------------------------------------------------------------- input_fn
def _request_headers(context) -> dict:
    try:
        return context.request_processor[0].get_request_properties() or {}
    except (AttributeError, IndexError, TypeError):
        return {}


def _b64(item, where: str) -> bytes:
    if isinstance(item, dict):
        item = item.get("b64", item.get("image"))
    if not isinstance(item, str):
        raise BadRequest(f"{where}: expected a base64 string, got {type(item).__name__}")
    if item.startswith("data:"):
        item = item.partition(",")[2]
    try:
        data = base64.b64decode("".join(item.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None
    if not data:
        raise BadRequest(f"{where}: empty image")
    return data


def _parse_json(body) -> tuple[list[bytes], int | None]:
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("JSON body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    topk = None
    if isinstance(doc, dict):
        if "topk" in doc:
            topk = content_types.parse_topk(doc["topk"], "JSON field topk")
        keys = [k for k in ("images", "instances", "image") if k in doc]
        if len(keys) != 1:
            raise BadRequest('JSON object needs exactly one of "image", "images", "instances"')
        doc = doc[keys[0]]
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise BadRequest("JSON lists no images")
    if len(items) > settings.max_images():
        raise PayloadTooLarge(f"{len(items)} images in one request; the limit is "
                              f"{settings.max_images()} (IMGCLF_MAX_IMAGES)")
    return [_b64(item, f"image {i}") for i, item in enumerate(items)], topk


def input_fn(input_data, content_type: str | None, context=None) -> InferenceRequest:
    """Parse the body into raw images and top-k; 400/413/415 on bad input (see module doc)."""
    return parse_request(input_data, content_type, _request_headers(context))


def parse_request(input_data, content_type: str | None, headers: dict) -> InferenceRequest:
    """:func:`input_fn` for one request whose headers are given (one item of an MMS batch)."""
    if input_data is None or len(input_data) == 0:
        raise BadRequest("empty request body")
    if len(input_data) > settings.max_payload_bytes():  # bytes, bytearray (MMS) or str (JSON)
        raise PayloadTooLarge(f"body of {len(input_data)} bytes is over the limit of "
                              f"{settings.max_payload_bytes()} (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    kind = content_types.request_kind(content_type)
    if kind == "image" and content_types.media_type(content_type) == content_types.OCTET_STREAM:
        head = bytes(input_data[:64]).lstrip() if not isinstance(input_data, str) else input_data
        if head[:1] in (b"{", b"[", b'"', "{", "[", '"'):
            kind = "json"  # sniffed: a JSON document sent as octet-stream
    content_types.negotiate(content_types.header(headers, "Accept"))  # 406 before any work
    header_k = content_types.topk_from_custom_attributes(
        content_types.header(headers, content_types.CUSTOM_ATTRIBUTES_HEADER))
    if kind == "json":
        images, topk = _parse_json(input_data)
        return InferenceRequest(images, topk if topk is not None else header_k)
    if isinstance(input_data, str):
        input_data = input_data.encode("latin-1", errors="replace")
    return InferenceRequest([bytes(input_data)], header_k)


# -------------------------------------------------------------------------------- predict_fn
_decode_pool: tuple[int, ThreadPoolExecutor] | None = None  # (threads, pool)


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: its next use must make a new one."""
    global _decode_pool
    _decode_pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _pool(n: int) -> ThreadPoolExecutor | None:
    """``n`` threads for decoding the images of a batch side by side (PIL and torch's resize
    release the GIL); None for one. Made on first use, in the process that decodes (MMS forks
    its workers; a fork gets a pool of its own)."""
    global _decode_pool
    if n < 2:
        return None
    if _decode_pool is None or _decode_pool[0] != n:
        if _decode_pool is not None:
            _decode_pool[1].shutdown(wait=False)  # another model's thread count
        _decode_pool = (n, ThreadPoolExecutor(n, thread_name_prefix="imgclf-decode"))
    return _decode_pool[1]


def decode_all(images: list[bytes], served: ServedModel) -> list[torch.Tensor | ImageDecodeError]:
    """Each image decoded, resized and cropped exactly as evaluation does (uint8 CHW), or the
    reason it could not be; several images are decoded in parallel on the worker's threads
    (measured on 2 CPUs, 16 photos: 41 ms one after the other, 27 ms on 2 threads)."""
    size = served.meta.resize_size

    def one(data: bytes) -> torch.Tensor | ImageDecodeError:
        try:
            return load_uint8(data, served.transform, draft_size=size)
        except ImageDecodeError as e:
            return e
    pool = _pool(served.threads) if len(images) > 1 else None
    return list(pool.map(one, images)) if pool else [one(d) for d in images]


def _first_bad(tensors: list) -> BadRequest | None:
    """A request's 400 for its first undecodable image (named by index when it has several)."""
    for i, t in enumerate(tensors):
        if isinstance(t, ImageDecodeError):
            return BadRequest(f"image {i}: {t}" if len(tensors) > 1 else str(t))
    return None


def decode(images: list[bytes], served: ServedModel) -> list[torch.Tensor]:
    """:func:`decode_all` for one request: a bad image is a 400 naming it."""
    tensors = decode_all(images, served)
    bad = _first_bad(tensors)
    if bad is not None:
        raise bad
    return tensors


def preprocess(images: list[bytes], served: ServedModel) -> torch.Tensor:
    """Decoded images as one normalised float batch on the model's device."""
    batch = torch.stack(decode(images, served)).to(served.device, non_blocking=True)
    return normalize(batch, served.meta.mean, served.meta.std)


def forward(served: ServedModel, uint8_batch: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, C) on CPU for a uint8 batch (N, 3, H, W)."""
    batch = normalize(uint8_batch.to(served.device, non_blocking=True), served.meta.mean,
                      served.meta.std)
    with torch.inference_mode():
        logits = served.path.forward(batch)
    return torch.softmax(logits.float(), dim=1).cpu()


def _prediction(probs: torch.Tensor, data: InferenceRequest, served: ServedModel) -> Prediction:
    k = data.topk if data.topk is not None else settings.default_topk()
    return Prediction(probs, served.meta.classes, min(k, len(served.meta.classes)))


def use_threads(served: ServedModel) -> None:
    """torch's intra-op threads as ``served`` predicts with them (its path's
    ``torch_threads``): set at each prediction, a no-op but the first time in a worker, so that
    models side by side in one process (the benchmark) each run as they are served."""
    if torch.get_num_threads() != served.torch_threads:
        torch.set_num_threads(served.torch_threads)


def predict_fn(data: InferenceRequest, model: ServedModel, context=None) -> Prediction:
    use_threads(model)
    return _prediction(forward(model, torch.stack(decode(data.images, model))), data, model)


def predict_batch(requests: list[InferenceRequest], served: ServedModel
                  ) -> list[Prediction | BadRequest]:
    """Several requests in ONE forward. A request with an undecodable image gets its BadRequest
    in its place; the others are predicted as if alone."""
    use_threads(served)
    flat = decode_all([img for req in requests for img in req.images], served)
    decoded: list[list[torch.Tensor] | BadRequest] = []
    start = 0
    for req in requests:
        mine, start = flat[start:start + len(req.images)], start + len(req.images)
        decoded.append(_first_bad(mine) or mine)
    tensors = [t for d in decoded if not isinstance(d, BadRequest) for t in d]
    n = max(1, settings.max_images())  # forwards of at most this many images (memory bound)
    probs = torch.cat([forward(served, torch.stack(tensors[i:i + n]))
                       for i in range(0, len(tensors), n)]) if tensors else None
    out, start = [], 0
    for req, d in zip(requests, decoded):
        if isinstance(d, BadRequest):
            out.append(d)
            continue
        out.append(_prediction(probs[start:start + len(d)], req, served))
        start += len(d)
    return out


# --------------------------------------------------------------------------------- output_fn
def output_fn(prediction: Prediction, accept: str | None, context=None) -> tuple[str, str]:
    """Serialise per-image top-k; returns ``(body, content_type)``; 406 for an unmet Accept.
    ``application/json``: ``{"predictions": [...]}``; ``application/jsonlines``: each of those
    entries on a line of its own, in request order."""
    response_type = content_types.negotiate(accept)
    values, indices = prediction.probabilities.topk(prediction.topk, dim=1)
    out = []
    for vals, idxs in zip(values.tolist(), indices.tolist()):
        top = [{"label": prediction.classes[i], "index": i, "probability": round(v, 6)}
               for v, i in zip(vals, idxs)]
        out.append({**top[0], "topk": top})
    if response_type == content_types.JSONLINES:
        return "".join(json.dumps(p) + "\n" for p in out), response_type
    return json.dumps({"predictions": out}), response_type
