"""smctl's one ``/invocations`` client: batching within the payload limit, retries of 5xx and
connection errors, a refused batch retried image by image.

The stand-in server parses every request with the serving code's own ``input_fn`` and decodes
each image with ``imgclf.images`` (what the container runs), and can be told to answer 503 first.
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from serving_support import color_image, encode, free_port, truncated_jpeg
from smctl.client import HttpTransport, InvocationsClient, TransportError, json_body
from smctl_helpers import JsonHandler


class _Handler(JsonHandler):
    def do_POST(self):
        from imgclf.images import ImageDecodeError, decode_image
        from imgclf.serving.handler import input_fn
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        with srv.lock:
            srv.seen.append(body)
            fail = srv.fail_first > 0
            srv.fail_first -= 1
        if fail:
            return self.send_json(503, {"error": "still starting"})
        try:
            req = input_fn(body, self.headers.get("Content-Type"))
            for i, img in enumerate(req.images):
                try:
                    decode_image(img)
                except ImageDecodeError as e:
                    return self.send_json(400, {"error": f"image {i}: {e}"})
        except Exception as e:  # noqa: BLE001 - the container's 4xx
            return self.send_json(getattr(e, "status", 400), {"error": str(e)})
        preds = [{"label": "red", "index": 0, "probability": 1.0, "bytes": len(img),
                  "topk": [{"label": "red", "index": 0, "probability": 1.0}]} for img in req.images]
        self.send_json(200, {"predictions": preds})


@pytest.fixture
def server():
    pytest.importorskip("torch")  # input_fn lives next to the model code
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.seen, httpd.fail_first, httpd.lock = [], 0, threading.Lock()
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _client(httpd, **kw) -> InvocationsClient:
    return InvocationsClient(HttpTransport(f"http://127.0.0.1:{httpd.server_address[1]}"),
                             backoff_s=0.01, **kw)


def test_5xx_is_retried_until_an_answer(server):
    server.fail_first = 2
    client = _client(server)
    resp = client.send(encode(color_image("red")), "image/jpeg")
    assert resp.status == 200 and client.requests_sent == 3 and len(server.seen) == 3


def test_retries_stop_after_three_and_return_the_last_answer(server):
    server.fail_first = 10
    client = _client(server)
    resp = client.send(encode(color_image("red")), "image/jpeg")
    assert resp.status == 503 and "still starting" in resp.detail() and len(server.seen) == 4


def test_connection_errors_are_retried_then_raised():
    client = InvocationsClient(HttpTransport(f"http://127.0.0.1:{free_port()}", timeout=2),
                               backoff_s=0.01)
    with pytest.raises(TransportError, match="cannot reach"):
        client.send(b"x", "image/jpeg")
    assert client.requests_sent == 4


def test_batches_stay_within_the_payload_and_image_limits():
    client = InvocationsClient(HttpTransport("http://127.0.0.1:1"), max_payload_bytes=10_000,
                               max_images=3)
    sizes = [3000, 3000, 3000, 100, 100, 100, 100, 7000, 20]
    groups = client.batches(sizes, batch_size=8)
    assert [i for g in groups for i in g] == list(range(len(sizes)))  # order kept, none lost
    for g in groups:
        assert len(g) <= 3
        assert len(json_body([b"\0" * sizes[i] for i in g], 1_000_000)) <= 10_000
    assert groups[0] == [0, 1]  # a third 3000-byte image (4000 in base64) would not fit
    assert client.too_big(7500) and not client.too_big(7000)


def test_one_bad_image_costs_only_itself(server, tmp_path):
    good = [encode(color_image("red", seed=i)) for i in range(5)]
    (tmp_path / "bad.jpg").write_bytes(truncated_jpeg())
    images = [(f"g{i}", b) for i, b in enumerate(good[:2])] + [("bad", tmp_path / "bad.jpg")] + \
             [(f"g{i}", b) for i, b in enumerate(good[2:], 2)] + [("gone", tmp_path / "gone.jpg")]
    client = _client(server, concurrency=2)
    items = list(client.predict(images, batch_size=3))
    assert [it.key for it in items] == [k for k, _ in images]
    by_key = {it.key: it for it in items}
    assert by_key["bad"].status == 400 and "image 0" in by_key["bad"].error
    assert by_key["gone"].status is None and by_key["gone"].error.startswith("cannot read")
    for k in ("g0", "g1", "g2", "g3", "g4"):
        assert by_key[k].prediction["label"] == "red"
    assert by_key["g3"].prediction["bytes"] == len(good[3])
    # batch [g0 g1 bad] refused, then g0, g1, bad alone; batch [g2 g3 g4] once ("gone" is unread)
    assert len(server.seen) == 5
