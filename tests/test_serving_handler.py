"""In-process tests of the serving handler: model_fn/input_fn/predict_fn/output_fn, the
Transformer's batching and error mapping, the MMS config. The real MMS is in test_serving_server.py."""

from __future__ import annotations

import base64
import dataclasses
import importlib
import inspect
import json
import logging
import re

import pytest
import torch
from mms.context import Context, RequestProcessor

from imgclf.artifact import ArtifactError, ModelMeta, save_artifact
from imgclf.models import build_model
from imgclf.serving import bundle, content_types, handler, handler_service, server
from imgclf.serving.front import MAX_HEAD
from imgclf.serving.plan import plan_workers
from imgclf.serving.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from imgclf.serving.transformer import ImgclfTransformer
from imgclf.transforms import preprocess_batch
from serving_support import (CLASSES, color_image, dimension_bomb_png, encode, model_dir,  # noqa: F401
                             one_thread, truncated_jpeg, ugly_images)


@pytest.fixture(scope="module")
def served(model_dir):
    return handler.model_fn(model_dir)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def context(model_dir: str, headers: dict | None = None) -> Context:
    ctx = Context("model", model_dir, None, 1, None, "1.1.11")
    ctx.request_processor = [RequestProcessor(headers or {})]
    return ctx


def labels(body: str) -> list[str]:
    return [p["label"] for p in json.loads(body)["predictions"]]


def run(served, body, content_type, accept="application/json", ctx=None) -> str:
    request = handler.input_fn(body, content_type, ctx)
    out, ctype = handler.output_fn(handler.predict_fn(request, served), accept)
    assert ctype == "application/json"
    return out


# ----------------------------------------------------------------------------- model_fn
def test_model_fn_builds_network_from_artifact_json(tmp_path):
    classes = [f"c{i}" for i in range(7)]
    save_artifact(str(tmp_path), build_model("resnet18", 7).state_dict(),
                  ModelMeta(arch="resnet18", classes=classes, image_size=64, resize_size=73))
    served = handler.model_fn(str(tmp_path))
    assert served.model.fc.out_features == 7 and not served.model.training
    doc = json.loads(run(served, encode(color_image("red")), "image/jpeg"))
    assert len(doc["predictions"][0]["topk"]) == 5  # default k
    assert {t["label"] for t in doc["predictions"][0]["topk"]} <= set(classes)


def test_model_fn_refuses_broken_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="model.json"):
        handler.model_fn(str(tmp_path))
    save_artifact(str(tmp_path), build_model("resnet18", 4).state_dict(),
                  ModelMeta(arch="resnet18", classes=["a", "b", "c"]))  # 4-class weights, 3 names
    with pytest.raises(ArtifactError, match="does not fit"):
        handler.model_fn(str(tmp_path))


# ------------------------------------------------------------------- content types and labels
@pytest.mark.parametrize("content_type,fmt", [
    ("image/jpeg", "JPEG"), ("image/png", "PNG"), ("application/x-image", "JPEG"),
    ("application/octet-stream", "PNG"), ("application/octet-stream", "JPEG"),
    ("Image/JPEG; charset=binary", "JPEG"), (None, "PNG"),
])
def test_raw_image_types_give_correct_labels(served, content_type, fmt):
    for i, name in enumerate(CLASSES):
        body = encode(color_image(name, seed=50 + i), fmt)
        assert labels(run(served, body, content_type)) == [name]


def test_json_forms_and_batch_order(served):
    imgs = {n: encode(color_image(n, seed=90 + i)) for i, n in enumerate(CLASSES)}
    order = ["blue", "red", "green", "blue"]
    bodies = [
        json.dumps([b64(imgs[n]) for n in order]),
        json.dumps({"images": [b64(imgs[n]) for n in order]}),
        json.dumps({"instances": [{"b64": b64(imgs[n])} for n in order]}),
    ]
    for body in bodies:
        assert labels(run(served, body, "application/json")) == order
        assert labels(run(served, body.encode(), "application/json; charset=utf-8")) == order
    assert labels(run(served, json.dumps(b64(imgs["green"])), "application/json")) == ["green"]
    data_url = "data:image/jpeg;base64," + b64(imgs["red"])
    assert labels(run(served, json.dumps({"image": data_url}), "application/json")) == ["red"]
    # JSON sent as octet-stream is sniffed
    assert labels(run(served, bodies[0].encode(), "application/octet-stream")) == order


def test_batch_is_one_forward_pass(served, monkeypatch):
    calls = []
    forward = served.path.forward
    monkeypatch.setattr(served.path, "forward", lambda x: calls.append(x.shape) or forward(x))
    body = json.dumps([b64(encode(color_image(n))) for n in CLASSES])
    run(served, body, "application/json")
    assert calls == [torch.Size([3, 3, 32, 32])]


def test_images_decoded_in_parallel_keep_their_order_and_errors_also_in_a_fork(served):
    import multiprocessing
    served = dataclasses.replace(served, threads=3)  # a pool even on a 1-CPU runner
    data = [encode(color_image(n, seed=40 + i)) for i, n in enumerate(CLASSES * 3)]
    one_by_one = [handler.load_uint8(d, served.transform, draft_size=served.meta.resize_size)
                  for d in data]
    out = handler.decode_all(data[:4] + [b"not an image"] + data[4:], served)
    assert isinstance(out.pop(4), handler.ImageDecodeError)
    assert all(torch.equal(a, b) for a, b in zip(out, one_by_one)) and len(out) == len(data)
    assert handler._decode_pool is not None and handler._decode_pool[0] == 3
    with pytest.raises(BadRequest) as e:
        handler.decode([data[0], b"junk"], served)
    assert e.value.message.startswith("image 1: ") and e.value.status == 400

    # MMS forks its workers: a child of a process whose pool exists must not wait on its threads
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    def child():
        torch.set_num_threads(1)  # OpenMP itself is not fork-safe; the decode pool is under test
        q.put(len(handler.decode_all(data, served)))
    p = ctx.Process(target=child)
    p.start()
    p.join(60)
    alive = p.is_alive()
    if alive:
        p.kill()
    assert not alive and q.get(timeout=5) == len(data)


def test_preprocessing_is_the_evaluation_definition(served):
    data = [encode(color_image(n, seed=i)) for i, n in enumerate(CLASSES)]
    m = served.meta
    expected = preprocess_batch(data, m.image_size, m.resize_size, m.mean, m.std)
    assert torch.equal(handler.preprocess(data, served), expected)


def test_probabilities_sum_to_one_and_sorted(served):
    doc = json.loads(run(served, encode(color_image("green")), "image/jpeg"))
    top = doc["predictions"][0]["topk"]
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    assert doc["predictions"][0]["probability"] == probs[0] > 0.9


# ------------------------------------------------------------------------------------ top-k
def test_topk_from_custom_attributes_json_and_default(served, model_dir, monkeypatch):
    img = encode(color_image("red"))
    ctx = context(model_dir, {"x-amzn-sagemaker-custom-attributes": "foo=bar; topk=2"})
    assert len(json.loads(run(served, img, "image/jpeg", ctx=ctx))["predictions"][0]["topk"]) == 2
    body = json.dumps({"image": b64(img), "topk": 1})  # JSON field wins over the header
    assert len(json.loads(run(served, body, "application/json", ctx=ctx))["predictions"][0]["topk"]) == 1
    monkeypatch.setenv("IMGCLF_DEFAULT_TOPK", "2")
    assert len(json.loads(run(served, img, "image/jpeg"))["predictions"][0]["topk"]) == 2
    # more than the classes: capped, not an error
    body = json.dumps({"image": b64(img), "topk": 50})
    assert len(json.loads(run(served, body, "application/json"))["predictions"][0]["topk"]) == 3


@pytest.mark.parametrize("bad", [0, -1, "x", 1.5, True])
def test_bad_topk_is_400(served, bad):
    body = json.dumps({"image": b64(encode(color_image("red"))), "topk": bad})
    with pytest.raises(BadRequest, match="topk"):
        run(served, body, "application/json")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("body,ctype,exc,match", [
    (b"", "image/jpeg", BadRequest, "empty"),
    (None, "image/jpeg", BadRequest, "empty"),
    (b"not an image", "image/jpeg", BadRequest, "not a recognised image"),
    (b"hello", "text/plain", UnsupportedMediaType, "text/plain"),
    (b"a,b", "text/csv", UnsupportedMediaType, "text/csv"),
    (b"{bad json", "application/json", BadRequest, "malformed JSON"),
    ('{"images": ["###"]}', "application/json", BadRequest, "image 0: not valid base64"),
    ('{"images": []}', "application/json", BadRequest, "no images"),
    ('{"images": [1]}', "application/json", BadRequest, "expected a base64 string"),
    ('{"foo": 1}', "application/json", BadRequest, "exactly one of"),
    (b"\xff\xfe{", "application/json; charset=utf-8", BadRequest, "not UTF-8"),
])
def test_bad_requests_raise_typed_errors(served, body, ctype, exc, match):
    with pytest.raises(exc, match=match):
        run(served, body, ctype)


def test_too_many_images_is_413(served, monkeypatch):
    monkeypatch.setenv("IMGCLF_MAX_IMAGES", "2")
    body = json.dumps([b64(encode(color_image("red")))] * 3)
    with pytest.raises(PayloadTooLarge, match="IMGCLF_MAX_IMAGES"):
        run(served, body, "application/json")


def test_accept_negotiation():
    assert content_types.negotiate(None) == "application/json"
    assert content_types.negotiate("*/*") == "application/json"
    assert content_types.negotiate("application/*") == "application/json"
    assert content_types.negotiate("text/csv, application/json;q=0.5") == "application/json"
    assert content_types.negotiate("application/jsonlines") == "application/jsonlines"
    assert content_types.negotiate("application/json;q=0.2, application/jsonlines"
                                   ) == "application/jsonlines"
    for bad in ("text/csv", "image/png", "application/json;q=0", "application/x-jsonlines"):
        with pytest.raises(NotAcceptable):
            content_types.negotiate(bad)


def test_jsonlines_answers_one_line_per_image_in_request_order(served):
    """What batch transform with Accept application/jsonlines and AssembleWith=Line joins: each
    image's entry of the JSON answer, one per line."""
    order = ["blue", "red", "green"]
    body = json.dumps({"images": [b64(encode(color_image(n, seed=70 + i)))
                                  for i, n in enumerate(order)], "topk": 2})
    prediction = handler.predict_fn(handler.input_fn(body, "application/json"), served)
    lines, ctype = handler.output_fn(prediction, "application/jsonlines")
    as_json, _ = handler.output_fn(prediction, "application/json")
    assert ctype == "application/jsonlines" and lines.endswith("\n")
    assert [json.loads(line) for line in lines.splitlines()] == json.loads(as_json)["predictions"]
    assert [json.loads(line)["label"] for line in lines.splitlines()] == order


def test_unacceptable_accept_is_406_before_inference(served, model_dir):
    ctx = context(model_dir, {"Accept": "text/csv"})
    with pytest.raises(NotAcceptable, match="text/csv"):
        handler.input_fn(encode(color_image("red")), "image/jpeg", ctx)
    with pytest.raises(NotAcceptable):
        run(served, encode(color_image("red")), "image/jpeg", accept="text/html")


# ----------------------------------------------------------------------------- ugly images
@pytest.mark.parametrize("name", sorted(ugly_images()))
def test_ugly_images_are_classified(served, name):
    out = json.loads(run(served, ugly_images()[name], "application/octet-stream"))
    pred = out["predictions"][0]
    if name in ("grayscale_png", "16bit_png"):
        assert pred["label"] in CLASSES  # colour is gone; only decoding is tested
    else:
        assert pred["label"] == "red"


def test_truncated_jpeg_and_dimension_bomb_are_400(served):
    with pytest.raises(BadRequest, match="cannot decode|truncated"):
        run(served, truncated_jpeg(), "image/jpeg")
    with pytest.raises(BadRequest, match="over the limit of"):  # IMGCLF_MAX_PIXELS
        run(served, dimension_bomb_png(9000, 8000), "image/png")
    with pytest.raises(BadRequest, match="over the limit of"):  # any size, from the header alone
        run(served, dimension_bomb_png(), "image/png")
    body = json.dumps([b64(encode(color_image("red"))), b64(truncated_jpeg())])
    with pytest.raises(BadRequest, match="image 1"):
        run(served, body, "application/json")


# ------------------------------------------------------------------- toolkit Transformer path
def transform(model_dir, body, headers, t=None):
    t = t or ImgclfTransformer()
    ctx = context(model_dir, headers)
    out = t.transform([{"body": body}], ctx)
    rp = ctx.request_processor[0]
    return out[0], rp.get_response_status_code(), rp.get_response_header("content-type")


def test_transformer_success_and_short_json_errors(model_dir):
    img = encode(color_image("blue"))
    body, status, ctype = transform(model_dir, img, {"Content-Type": "image/jpeg"})
    assert status == 200 and labels(body) == ["blue"]
    assert ctype is None  # no per-request header for MMS's reply decoder (see transformer)
    cases = [(b"", {"Content-Type": "image/jpeg"}, 400),
             (b"junk", {"Content-Type": "image/png"}, 400),
             (img, {"Content-Type": "text/plain"}, 415),
             (img, {"Content-Type": "image/jpeg", "Accept": "text/csv"}, 406),
             (b"\xff\xfe", {"Content-Type": "application/json"}, 400),  # toolkit decodes UTF-8
             (b"[", {"Content-Type": "application/json"}, 400)]
    for data, headers, code in cases:
        body, status, ctype = transform(model_dir, data, headers)
        doc = json.loads(body)
        assert (status, doc["status"], ctype) == (code, code, None), (headers, body)
        assert "Traceback" not in body and len(body) < 400


def test_transformer_hides_unexpected_errors(model_dir, monkeypatch):
    def boom(requests, model):
        raise RuntimeError("secret internal detail")
    t = ImgclfTransformer()
    t.validate_and_initialize(model_dir, context(model_dir))
    monkeypatch.setattr(handler, "predict_batch", boom)
    body, status, _ = transform(model_dir, encode(color_image("red")), {"Content-Type": "image/jpeg"}, t)
    assert status == 500 and "Traceback" not in body and "secret" not in body
    assert "RuntimeError" in json.loads(body)["error"]


def test_transformer_batch_each_request_its_own_headers_topk_and_error(model_dir, monkeypatch):
    """What MMS hands a worker registered with a batch size: several requests, each with its
    own headers. One forward for all good images; the bad image fails only its own request."""
    t = ImgclfTransformer()
    ctx = context(model_dir)
    t.validate_and_initialize(model_dir, ctx)
    order = ["green", None, "blue", "red", "red"]
    attrs = ["topk=1", "", "topk=2", "", "topk=3"]
    accept = ["application/json", "", "*/*", "text/csv", ""]
    data, procs = [], []
    for i, name in enumerate(order):
        body = truncated_jpeg() if name is None else encode(color_image(name, seed=50 + i))
        headers = {"Content-Type": "image/jpeg", "Accept": accept[i]}
        if attrs[i]:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attrs[i]
        data.append({"body": body})
        procs.append(RequestProcessor(headers))
    ctx.request_processor = procs
    calls = []
    forward = t._model.path.forward
    monkeypatch.setattr(t._model.path, "forward", lambda x: calls.append(x.shape[0]) or forward(x))
    out = t.transform(data, ctx)
    assert calls == [3]  # green, blue, red(k=3): one forward; the 406 one never decoded
    status = [p.get_response_status_code() for p in procs]
    assert status == [200, 400, 200, 406, 200]
    assert labels(out[0]) == ["green"] and labels(out[2]) == ["blue"] and labels(out[4]) == ["red"]
    ks = [len(json.loads(out[i])["predictions"][0]["topk"]) for i in (0, 2, 4)]
    assert ks == [1, 2, 3]
    assert "truncated" in json.loads(out[1])["error"]
    assert all(p.get_response_headers() == {} for p in procs)  # see the transformer module


def test_transformer_answers_a_bundle_part_by_part_in_one_forward(model_dir, monkeypatch):
    """A bundle from the front (imgclf.serving.bundle) is one MMS request: its parts are
    answered each with its own status, top-k and Accept, in one forward; the reply is one 200.
    Without the server's token the same body is just an unsupported content type."""
    monkeypatch.setenv(bundle.TOKEN_ENV, "s3cret")
    t = ImgclfTransformer()
    t.validate_and_initialize(model_dir, context(model_dir))
    parts = [({"headers": {"Content-Type": "image/jpeg",
                           "X-Amzn-SageMaker-Custom-Attributes": "topk=2"}},
              encode(color_image("green", seed=71))),
             ({"headers": {"Content-Type": "image/jpeg"}}, truncated_jpeg()),
             ({"headers": {"Content-Type": "image/jpeg", "Accept": "text/csv"}},
              encode(color_image("red", seed=72))),
             ({"headers": {"Content-Type": "application/json"}},
              json.dumps({"images": [b64(encode(color_image("blue", seed=73)))] * 2}).encode())]
    body = bundle.encode(parts)
    calls = []
    forward = t._model.path.forward
    monkeypatch.setattr(t._model.path, "forward", lambda x: calls.append(x.shape[0]) or forward(x))
    ctx = context(model_dir, {"Content-Type": bundle.CONTENT_TYPE, bundle.TOKEN_HEADER: "s3cret"})
    out = t.transform([{"body": bytearray(body)}], ctx)
    assert ctx.request_processor[0].get_response_status_code() == 200
    answers = bundle.decode(out[0])
    assert [meta["status"] for meta, _ in answers] == [200, 400, 406, 200]
    docs = [json.loads(a) for _, a in answers]
    assert labels(answers[0][1]) == ["green"] and len(docs[0]["predictions"][0]["topk"]) == 2
    assert "truncated" in docs[1]["error"] and labels(answers[3][1]) == ["blue", "blue"]
    assert calls == [3]  # green + two blues; the 406 one never decoded
    for token in ("wrong", None):
        headers = {"Content-Type": bundle.CONTENT_TYPE}
        if token:
            headers[bundle.TOKEN_HEADER] = token
        ctx = context(model_dir, headers)
        out = t.transform([{"body": bytearray(body)}], ctx)
        assert ctx.request_processor[0].get_response_status_code() == 415, out


@pytest.mark.parametrize("data", [b"", b"no head line", b'{"parts": 3}\n', b'[]\n',
                                  b'{"parts": [{"length": 5}]}\nabc',
                                  b'{"parts": [{"length": -1}]}\n',
                                  b'{"parts": [{"length": 1}]}\nab'])
def test_malformed_bundles_are_refused(data):
    with pytest.raises(ValueError):
        bundle.decode(data)


def test_bundle_round_trip_keeps_parts_in_order_byte_for_byte():
    parts = [({"status": 200}, b"\n{}\n"), ({"headers": {"A": "b"}}, b""), ({}, bytes(range(256)))]
    assert bundle.decode(bundle.encode(parts)) == parts


def test_handler_service_module_has_exactly_one_class():
    mod = importlib.import_module(handler_service.__name__)
    own = [c for _, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod.__name__]
    assert len(own) == 1 and hasattr(own[0](), "handle")


def test_the_workers_write_no_metrics_line_per_request(caplog):
    """MMS's worker emits "[METRICS]PredictionTime..." after every request; with the handler
    service imported (as MMS's worker does) MMS's own emit writes nothing, while its warnings
    (a failed prediction) still do."""
    from mms.metrics.metrics_store import MetricsStore
    from mms.service import emit_metrics, logger
    importlib.import_module(handler_service.__name__)
    store = MetricsStore({0: "request-1"}, "model")
    store.add_time("PredictionTime", 12.5)
    with caplog.at_level(logging.INFO):  # the root's level: the mms.service logger keeps its own
        emit_metrics(store.store)
        logger.warning("Invoking custom service failed.")
    assert [r.getMessage() for r in caplog.records] == ["Invoking custom service failed."]


def test_inference_entry_point_exposes_the_contract():
    import inference
    for name in ("model_fn", "input_fn", "predict_fn", "output_fn"):
        assert getattr(inference, name) is getattr(handler, name)


# ----------------------------------------------------------------------------- MMS config
GB = 2**30


@pytest.mark.parametrize("name, value, message", [
    ("IMGCLF_MAX_BATCH_SIZE", "abc", "IMGCLF_MAX_BATCH_SIZE='abc' is not an integer"),
    ("IMGCLF_MAX_BATCH_SIZE", "0", "IMGCLF_MAX_BATCH_SIZE=0 must be >= 1"),
    ("IMGCLF_MAX_BATCH_DELAY_MS", "-1", "IMGCLF_MAX_BATCH_DELAY_MS=-1 must be >= 0"),
    ("IMGCLF_BODY_TIMEOUT_S", "0", "IMGCLF_BODY_TIMEOUT_S=0 must be >= 1"),
    ("IMGCLF_DRAIN_GRACE_S", "-5", "IMGCLF_DRAIN_GRACE_S=-5 must be >= 0"),
    ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "0", "SAGEMAKER_MODEL_SERVER_TIMEOUT=0 must be >= 1"),
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "0", "SAGEMAKER_MODEL_SERVER_WORKERS=0 must be >= 1"),
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0", "SAGEMAKER_MAX_PAYLOAD_IN_MB=0 must be >= 1"),
    ("SAGEMAKER_BIND_TO_PORT", "70000", "SAGEMAKER_BIND_TO_PORT=70000 is not a port"),
    ("SAGEMAKER_SAFE_PORT_RANGE", "abc", "'abc' is not a port range like 10000-10999"),
    ("SAGEMAKER_SAFE_PORT_RANGE", "9000-8000", "'9000-8000' is not a port range within"),
])
def test_server_settings_refuse_bad_values_by_name(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        server.ServerSettings.from_env()


def test_server_settings_take_a_safe_port_range(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_SAFE_PORT_RANGE", "10000-10999")
    assert server.ServerSettings.from_env().safe_port_range == (10000, 10999)
    monkeypatch.setenv("SAGEMAKER_SAFE_PORT_RANGE", "10000")
    assert server.ServerSettings.from_env().safe_port_range == (10000, 10000)


def test_mms_properties_honour_sagemaker_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "17")
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "3")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "5")
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9999")
    s = server.ServerSettings.from_env()
    assert (s.model_dir, s.port, s.workers) == (str(tmp_path), 9999, 5)
    plan = plan_workers(s.workers, 1, 2, [], 8 * GB)
    props = dict(line.split("=", 1) for line in
                 server.mms_properties("unix:/run/i.sock", "unix:/run/m.sock", plan,
                                       s).splitlines())
    assert props["default_response_timeout_seconds"] == "17"  # not MMS's minutes key
    assert "default_response_timeout" not in props
    # MMS takes the largest bundle the front sends: bodies up to the payload limit together,
    # each request with a full head of headers, even of characters JSON writes twice as long
    n, head = s.max_batch_size, '"\xff' * (MAX_HEAD // 2 - 40)
    worst = bundle.encode([({"headers": {"X-H": head}}, b"\xff" * (3 * 2**20 // n))] * n)
    assert len(worst) <= int(props["max_request_size"]) < 3 * 2**20 + 3 * n * MAX_HEAD
    assert props["default_workers_per_model"] == "5"
    assert props["inference_address"] == "unix:/run/i.sock"
    assert props["management_address"] == "unix:/run/m.sock"
    assert props["default_service_handler"] == "imgclf.serving.handler_service"
    assert server.free_port() <= server.MMS_MAX_PORT


def test_mms_listens_on_unix_sockets_in_the_run_dir_and_a_stale_one_is_removed(tmp_path):
    stale = tmp_path / "mms-inference.sock"
    stale.write_bytes(b"")  # a SIGKILLed server's socket: MMS could not bind over it
    inference, management = server.mms_addresses(str(tmp_path), env={})
    assert inference == f"unix:{stale}" and management == f"unix:{tmp_path}/mms-management.sock"
    assert not stale.exists()


def test_mms_falls_back_to_loopback_ports_in_the_safe_range_without_native_io(tmp_path):
    lo, hi = 20000, 20999
    addresses = server.mms_addresses(str(tmp_path), (lo, hi), env={"MMS_USE_NATIVE_IO": "False"})
    ports = [int(a.rsplit(":", 1)[1]) for a in addresses]
    assert all(a.startswith("http://127.0.0.1:") for a in addresses)
    assert ports[0] != ports[1] and all(lo <= p <= hi for p in ports)


def test_a_run_dir_too_long_for_its_sockets_is_refused_by_name(tmp_path):
    room = server.SOCKET_PATH_MAX - len("/mms-management.sock")
    fits = "/" + "d" * (room - 1)
    server.check_run_dir(fits, "IMGCLF_SERVE_RUN_DIR")
    with pytest.raises(ValueError, match="IMGCLF_SERVE_RUN_DIR '/ddd.*' is too long for the Unix "
                                         f"sockets .* at most {room} bytes"):
        server.check_run_dir(fits + "d", "IMGCLF_SERVE_RUN_DIR")


def test_a_bad_pixel_limit_is_refused_by_name(monkeypatch):
    from imgclf import images
    from imgclf.failure import UserError
    monkeypatch.setenv("IMGCLF_MAX_PIXELS", "lots")
    with pytest.raises(UserError, match=r"IMGCLF_MAX_PIXELS='lots' is not an integer"):
        images.max_pixels()
    monkeypatch.setenv("IMGCLF_MAX_PIXELS", "1000")
    assert images.max_pixels() == 1000
