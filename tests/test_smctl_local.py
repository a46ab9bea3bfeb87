"""smctl against real local servers: ``invoke --url`` and ``data fetch`` over loopback HTTP.

The invoke stand-in parses each request with the serving code's own ``input_fn`` (the same
function the container runs), so a request the container would reject fails here too.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from smctl.cli import main
from smctl_helpers import JsonHandler, aws_env, tiny_jpeg, tiny_png  # noqa: F401


class _Server:
    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.seen = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- invoke --url --------------------------------------------------------------------------------
class _Ctx:
    """The bit of the MMS context ``input_fn`` reads: the request headers."""

    def __init__(self, headers):
        self.request_processor = [self]
        self._headers = headers

    def get_request_properties(self):
        return self._headers


class _InvocationsHandler(JsonHandler):
    def do_POST(self):
        from imgclf.serving.handler import input_fn
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ctype = self.headers.get("Content-Type")
        self.server.seen.append({"path": self.path, "content_type": ctype, "body": body,
                                 "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.path != "/invocations":
            return self.send_json(404, {"error": "not found"})
        try:
            req = input_fn(body, ctype, _Ctx(dict(self.headers)))
        except Exception as e:  # the container answers 4xx with a short JSON message
            return self.send_json(getattr(e, "status", 400), {"error": str(e)})
        k = req.topk or 5
        labels = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
        preds = []
        for i, img in enumerate(req.images):
            top = [{"label": labels[j], "index": j, "probability": round(0.7 / (j + 1), 6)}
                   for j in range(min(k, 3))]
            preds.append({**top[0], "topk": top, "bytes": len(img)})
        self.send_json(200, {"predictions": preds})


@pytest.fixture
def invocations_server():
    pytest.importorskip("torch")  # input_fn lives next to the model code
    with _Server(_InvocationsHandler) as s:
        yield s


def test_invoke_url_sends_raw_image_with_its_type_and_topk(invocations_server, aws_env, capsys):
    jpeg = tiny_jpeg()
    (aws_env / "dog.jpg").write_bytes(jpeg)
    rc = main(["invoke", "dog.jpg", "--url", invocations_server.url, "--top-k", "2"])
    assert rc == 0
    seen = invocations_server.httpd.seen[-1]
    assert seen["path"] == "/invocations" and seen["content_type"] == "image/jpeg"
    assert seen["body"] == jpeg
    assert seen["headers"]["x-amzn-sagemaker-custom-attributes"] == "topk=2"
    assert seen["headers"]["accept"] == "application/json"
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dog.jpg:"
    assert [l.split()[1] for l in out[2:]] == ["001.Affenpinscher", "002.Afghan_hound"]


def test_invoke_url_batches_several_images_as_json(invocations_server, aws_env, capsys):
    (aws_env / "a.png").write_bytes(tiny_png())
    (aws_env / "b.jpeg").write_bytes(tiny_jpeg())
    rc = main(["invoke", "a.png", "b.jpeg", "--url", invocations_server.url + "/invocations",
               "--top-k", "3"])
    assert rc == 0
    seen = invocations_server.httpd.seen[-1]
    assert seen["content_type"] == "application/json"
    doc = json.loads(seen["body"])
    assert doc["topk"] == 3 and len(doc["instances"]) == 2
    out = capsys.readouterr().out
    assert "a.png:" in out and "b.jpeg:" in out and "003.Airedale_terrier" in out


def test_invoke_url_error_is_one_line(invocations_server, aws_env, capsys):
    (aws_env / "bad.json").write_text('{"instances": 5}')
    rc = main(["invoke", "bad.json", "--url", invocations_server.url])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "answered 400" in err[0]


def test_invoke_url_unreachable(aws_env, capsys):
    (aws_env / "a.png").write_bytes(tiny_png())
    with _Server(_InvocationsHandler) as s:  # take a free port, then close it
        url = s.url
    rc = main(["invoke", "a.png", "--url", url])
    assert rc == 1
    assert "cannot reach" in capsys.readouterr().err


# -- data fetch / verify -----------------------------------------------------------------------
def dog_zip(truncated: bool = True, evil: bool = False) -> bytes:
    """A few real JPEGs in the dogImages layout, plus the truncated Leonberger like the real set."""
    buf = io.BytesIO()
    colors = {"001.Affenpinscher": (60, 50, 40), "097.Leonberger": (180, 140, 60)}
    counts = {"train": 3, "valid": 2, "test": 1}
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("dogImages/", "")
        for split, n in counts.items():
            for cls, color in colors.items():
                for i in range(n):
                    zf.writestr(f"dogImages/{split}/{cls}/{cls.split('.')[1]}_{i:05d}.jpg",
                                tiny_jpeg(color, (40, 30)))
        if truncated:
            good = tiny_jpeg((200, 160, 80), (64, 48))
            zf.writestr("dogImages/train/097.Leonberger/Leonberger_06571.jpg", good[: len(good) * 2 // 3])
        zf.writestr("__MACOSX/dogImages/._junk", "mac metadata")
        if evil:
            zf.writestr("../evil.jpg", "x")
    return buf.getvalue()


def _zip_handler(payload: bytes):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.server.seen.append(self.path)
            if self.path != "/dogImages.zip":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
    return H


def test_fetch_extracts_counts_and_finds_truncated_jpeg(aws_env, capsys):
    with _Server(_zip_handler(dog_zip())) as s:
        rc = main(["data", "fetch", "--url", s.url + "/dogImages.zip", "--dest", "data"])
        assert rc == 0
        assert s.httpd.seen == ["/dogImages.zip"]
        out = capsys.readouterr().out
        rows = {l.split()[0]: l.split()[1:] for l in out.splitlines()
                if l.split() and l.split()[0] in ("train", "valid", "test")}
        assert rows == {"train": ["2", "6", "1"], "valid": ["2", "4", "0"], "test": ["2", "2", "0"]}
        assert "unreadable: data/dogImages/train/097.Leonberger/Leonberger_06571.jpg: " \
               "cannot decode image: image file is truncated" in out
        assert "'smctl data upload data/dogImages' skips them" in out
        assert not (aws_env / "data" / "__MACOSX").exists()
        state = json.loads((aws_env / "smctl-state.json").read_text())
        assert state["data_dir"] == "data/dogImages"

        # second run reuses the zip (no download)
        assert main(["data", "fetch", "--url", s.url + "/dogImages.zip", "--dest", "data"]) == 0
        assert s.httpd.seen == ["/dogImages.zip"]
        assert "already downloaded" in capsys.readouterr().err

    # verify on its own exits 1 and lists the file
    assert main(["data", "verify", "data/dogImages"]) == 1
    out = capsys.readouterr().out
    assert "Leonberger_06571.jpg" in out and "1 unreadable file(s)" in out


def test_verify_clean_dataset_passes_and_reports_class_mismatch(aws_env, capsys):
    with _Server(_zip_handler(dog_zip(truncated=False))) as s:
        assert main(["data", "fetch", "--url", s.url + "/dogImages.zip", "--dest", "d"]) == 0
    capsys.readouterr()
    assert main(["data", "verify", "d/dogImages"]) == 0
    extra = aws_env / "d" / "dogImages" / "test" / "133.Yorkshire_terrier"
    extra.mkdir()
    (extra / "y.jpg").write_bytes(tiny_jpeg())
    assert main(["data", "verify", "d/dogImages"]) == 1
    assert "problem: test: classes differ from train: 133.Yorkshire_terrier" in capsys.readouterr().out


def test_fetch_errors_are_one_line(aws_env, capsys):
    with _Server(_zip_handler(dog_zip(evil=True))) as s:
        assert main(["data", "fetch", "--url", s.url + "/missing.zip", "--dest", "x"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("smctl: error: download failed:") and "404" in err[-1]
        assert not list((aws_env / "x").glob("*.part"))
        assert main(["data", "fetch", "--url", s.url + "/dogImages.zip", "--dest", "y"]) == 1
        assert "escapes the folder" in capsys.readouterr().err
        assert not (aws_env / "evil.jpg").exists()


# -- invoke --url against the real host-run server (MMS behind the gate) ---------------------------
@pytest.fixture(scope="module")
def host_server(tmp_path_factory):
    """``python -m imgclf.serving.server`` on a free loopback port with the serving tests' tiny
    colour model (trained in-process in seconds)."""
    from serving_support import host_server as serve, train_color_model
    model = tmp_path_factory.mktemp("served") / "model"
    train_color_model(str(model))
    with serve(str(model)) as url:
        yield url


@pytest.mark.slow
def test_invoke_url_against_the_real_host_server(host_server, aws_env, capsys):
    from serving_support import color_image, encode
    (aws_env / "red.jpg").write_bytes(encode(color_image("red", seed=3), "JPEG"))
    (aws_env / "blue.png").write_bytes(encode(color_image("blue", seed=4), "PNG"))
    assert main(["invoke", "red.jpg", "--url", host_server, "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "red.jpg:" and len(out) == 4  # name, header, 2 rows (topk=2 honoured)
    assert out[2].split()[:2] == ["1", "red"]
    assert main(["invoke", "red.jpg", "blue.png", "--url", host_server]) == 0  # JSON batch
    out = capsys.readouterr().out.splitlines()
    firsts = [out[i + 2].split()[1] for i, l in enumerate(out) if l.endswith(":")]
    assert firsts == ["red", "blue"]
