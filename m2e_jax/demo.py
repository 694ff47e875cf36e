"""A local try-on web page for a trained checkpoint: `python -m m2e_jax.demo --workdir runs/synthetic`.

The page picks a model photo and a person photo from the checkpoint's test set (the synthetic
world's test split for configs/synthetic.py) or takes uploads: a photo, its DensePose output (a
Detectron `_IUV.png` or a detectron2 `apply_net.py dump` file) and an optional parsing PNG
(0 other, 1 upper, 2 lower garment). It shows the try-on beside the inputs, the warp / PAN / TRN /
FTN stages on request, and offers the result as a PNG at the person photo's resolution.

The try-on is m2e_jax.tryon_pipeline's, as the infer command's: the same checkpoint loading, photo
checks, letterbox, networks and full-resolution composition, so a bad upload gets the command's
one-line message (the file named by its upload name) and the server keeps serving. This module is
the HTTP server around it. The checkpoint is loaded and the forward pass compiled once, at startup.

The server is the standard library's (http.server): Gradio pins pillow < 13 (we pin 13.0.0) and
stores every upload on disk under the file name the browser sent; this page needs neither. It
loads nothing from the network (no CDN, no fonts, no analytics): one HTML page with inline CSS and
JS, and images as data URLs. Requests never name files: uploads arrive as base64 bytes in a JSON
body of at most `--max_upload_mb`; the readers open them through server-named files in a private
temporary folder deleted after each request; test-set picks are indices. It binds to 127.0.0.1
unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import http.server
import importlib.resources
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from m2e_jax import checkpointing, densepose, input_pipeline, storage_clients, xla_flags
from m2e_jax import tryon_pipeline as pipeline
from m2e_jax.readers import images, photos

DEFAULT_PORT = 7860  # Gradio's default: where users of try-on demos look first
DEFAULT_MAX_UPLOAD_MB = 20.0
ROLES = ("model", "person")
# The stages the page shows on request: label -> tryon_pipeline.Result.stages key (network size).
STAGES = {"warp": "warped", "PAN": "aligned", "TRN": "refined", "FTN": "output"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class DemoError(Exception):
    """A problem with a request or an argument; the message is the one line the page shows."""


# The user's problem (one line); anything else is a bug, answered with one line too while the server
# keeps serving (and its traceback logged on the server's stderr).
_USER_ERRORS = (DemoError, *pipeline.USER_ERRORS)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded file: `name` as the browser sent it (shown in messages only) and its bytes."""

    name: str
    data: bytes


def upload_name(raw: Any, fallback: str) -> str:
    """A printable base name for messages (never used as a path)."""
    name = os.path.basename(str(raw or "").replace("\\", "/"))
    name = "".join(c for c in name if c.isprintable())[:120]
    return name or fallback


def too_large_message(size: int, limit: int) -> str:
    return f"upload too large: {size / 1e6:.1f} MB (limit {limit / 1e6:.1f} MB, --max_upload_mb)"


# ---------------------------------------------------------------- photos

def read_uploaded_photo(role: str, photo: Upload | None, iuv: Upload | None, parse: Upload | None,
                        select: str = "largest", max_pixels: int = images.MAX_PIXELS) -> photos.Photo:
    """A checked photo (as tryon_pipeline.read_photo returns) from uploaded bytes.

    DensePose is a Detectron `_IUV.png` (told apart by its PNG signature) or a detectron2 dump whose
    entry is found by the photo's upload name, as the CLI finds it by file name. An image over
    `max_pixels` is refused from its header, before it is decoded. Raises DemoError
    with the CLI's message, the temporary paths replaced by the upload names.
    """
    if photo is None:
        raise DemoError(f"{role} photo: nothing uploaded (pick one from the test set or upload a photo)")
    if iuv is None:
        raise DemoError(f"{photo.name}: no DensePose output uploaded for the {role} photo "
                        "(its _IUV.png or a detectron2 dump file)")
    with tempfile.TemporaryDirectory(prefix="m2e_demo_") as tmp:
        names: dict[str, str] = {}

        def spool(upload: Upload, fname: str) -> str:
            path = os.path.join(tmp, fname)
            with open(path, "wb") as f:
                f.write(upload.data)
            names[path] = upload.name
            return path

        try:
            image_path = spool(photo, f"{role}_photo")
            iuv_path = spool(iuv, f"{role}_densepose")
            if iuv.data.startswith(_PNG_MAGIC):
                ref = photos.IuvRef(png=iuv_path)
            else:
                # matched on the upload's name (a string here, never opened), as photo_ref does
                ref = photos.DumpIndex(iuv_path).ref(photo.name)
                if ref is None or ref.problem:
                    raise DemoError(f"{iuv.name}: {ref.problem if ref else 'no entry'} for {photo.name}")
            parse_path = spool(parse, f"{role}_parse") if parse is not None else None
            return pipeline.read_photo(photos.ImageRef(name=role, image=image_path, item="", iuv=ref,
                                                parse=parse_path), select, max_pixels)
        except pipeline.USER_ERRORS as e:
            message = one_line(e)
            for path, name in names.items():
                message = message.replace(path, name)
            raise DemoError(message) from None


# ---------------------------------------------------------------- the try-on

def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


@dataclasses.dataclass
class Demo:
    """What the page serves: the restored try-on (`net.checkpoint`: where it came from), the garment
    it transfers (index into densepose.GARMENT_KINDS), the test set (None when it cannot be opened:
    the page then offers uploads only, saying why) and the upload limits."""

    net: pipeline.TryOn
    garment_kind: int
    test_set: Any = None
    test_note: str = ""
    select: str = "largest"
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1e6)
    max_pixels: int = images.MAX_PIXELS
    resolution: str = "full"
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def test_count(self) -> int:
        return 0 if self.test_set is None else len(self.test_set)

    def info(self) -> dict:
        return {"checkpoint": self.net.checkpoint, "height": self.net.height, "width": self.net.width,
                "garment_kind": densepose.GARMENT_KINDS[self.garment_kind], "test_count": self.test_count,
                "test_note": self.test_note, "max_upload_bytes": self.max_upload_bytes,
                "stages": list(STAGES)}

    def pick(self, role: str, index: Any) -> photos.Photo:
        if isinstance(index, bool) or not isinstance(index, int):
            raise DemoError(f"{role} pick: expected a test-set index, got {index!r}")
        if not 0 <= index < self.test_count:
            raise DemoError(f"{role} pick {index}: the test set has {self.test_count} photos"
                            + (f" (0..{self.test_count - 1})" if self.test_count else f" ({self.test_note})"))
        return pipeline.example_photos(self.test_set[index])[ROLES.index(role)]

    def photo(self, role: str, spec: Any) -> tuple[photos.Photo, str]:
        """(the photo a request names for `role`, its name for messages): {"pick": i} or {"photo":
        file, "densepose": file, "parse": file or null}, each file {"name": str, "data": base64}."""
        if not isinstance(spec, dict):
            raise DemoError(f"{role}: pick a test-set photo or upload one")
        if "pick" in spec:
            return self.pick(role, spec["pick"]), f"test-set {role} photo {spec['pick']}"
        files = {key: _decode_file(spec.get(key), f"{role} {key}") for key in ("photo", "densepose", "parse")}
        photo = read_uploaded_photo(role, files["photo"], files["densepose"], files["parse"], self.select,
                                    self.max_pixels)
        return photo, files["photo"].name

    def answer(self, request: Any) -> dict:
        """The JSON reply to a try-on request: images as data URLs, or {"error": one line}."""
        start = time.perf_counter()
        try:
            if not isinstance(request, dict):
                raise DemoError("bad request: expected a JSON object")
            (model, model_name), (person, person_name) = (self.photo(r, request.get(r)) for r in ROLES)
            with self.lock:  # one try-on at a time: bounded memory, and the timing means something
                t0 = time.perf_counter()
                (result,) = self.net.tryon([pipeline.Pair(model, person, model_name, person_name)],
                                           self.garment_kind, self.resolution, batch_size=1)
                network_ms = (time.perf_counter() - t0) * 1e3
        except _USER_ERRORS as e:
            return {"error": one_line(e)}
        stages = STAGES if request.get("stages") else {}
        reply: dict[str, Any] = {
            "result": data_url(result.image), "size": list(result.image.shape[1::-1]),
            "model": data_url(model.image), "person": data_url(person.image),
            "stages": {label: data_url(result.stages[key]) for label, key in stages.items()},
            "notes": [one_line(n) for n in result.notes]}
        picks = [request[r].get("pick") if isinstance(request[r], dict) else None for r in ROLES]
        if picks[0] is not None and picks[0] == picks[1]:  # one test example: its ground truth if known
            example = self.test_set[picks[0]]
            if int(np.asarray(example["has_target"])):
                reply["truth"] = data_url(np.asarray(example["target_image"]))
        reply["network_ms"] = round(network_ms, 1)
        reply["total_ms"] = round((time.perf_counter() - start) * 1e3, 1)
        return reply

    def test_image(self, index: int, role: str) -> bytes:
        return png_bytes(self.pick(role, index).image)


def _decode_file(raw: Any, what: str) -> Upload | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), str):
        raise DemoError(f"{what}: expected {{'name': ..., 'data': base64}}")
    try:
        data = base64.b64decode(raw["data"], validate=True)
    except (binascii.Error, ValueError):
        raise DemoError(f"{what}: the upload is not valid base64") from None
    return Upload(upload_name(raw.get("name"), what), data)


def warm_up(net: pipeline.TryOn, garment_kind: int, resolution: str) -> None:
    """Compiles the batch-of-one forward pass (and the full-resolution try-on at the network's size,
    the test set's) on a blank pair, so the first request answers at full speed."""
    blank = photos.Photo(np.zeros((net.height, net.width, 3), np.uint8),
                         np.zeros((net.height, net.width, 3), np.uint8), None)
    net.tryon([pipeline.Pair(blank, blank)], garment_kind, resolution, batch_size=1)


def open_test_set(config) -> tuple[Any, str]:
    """(the config's test split as a random-access source, "") or (None, why it is unavailable)."""
    split = config.dataset.test_split
    try:
        source = input_pipeline.open_source(config, split)
        if len(source) == 0:
            return None, f"the {split} split is empty"
        return source, ""
    except Exception as e:  # a missing or foreign dataset must not stop the page: uploads still work
        return None, f"test set unavailable ({type(e).__name__}: {one_line(e)})"


# ---------------------------------------------------------------- HTTP

_TEST_IMAGE = re.compile(r"^/api/test/(\d{1,7})/(model|person)\.png$")


class Handler(http.server.BaseHTTPRequestHandler):
    """GET / (the page), GET /api/test/<i>/<model|person>.png, POST /api/tryon."""

    server_version = "m2e_jax.demo"
    demo: Demo  # set on the subclass make_server creates

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        logging.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                return self._send(200, page(self.demo.info()).encode(), "text/html; charset=utf-8")
            m = _TEST_IMAGE.match(path)
            if m:
                return self._send(200, self.demo.test_image(int(m.group(1)), m.group(2)), "image/png")
            self._json(404, {"error": f"no such page: {path[:100]}"})
        except DemoError as e:
            self._json(404, {"error": one_line(e)})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/api/tryon":
            self.close_connection = True
            return self._json(404, {"error": "no such endpoint"})
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self.close_connection = True  # a body of unknown length is not read
            return self._json(411, {"error": "bad request: Content-Length required"})
        if int(length) > self.demo.max_upload_bytes:
            self.close_connection = True  # refused before reading a byte of it
            return self._json(413, {"error": too_large_message(int(length), self.demo.max_upload_bytes)})
        body = self.rfile.read(int(length))
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return self._json(400, {"error": f"bad request: not JSON ({one_line(e)[:200]})"})
        try:
            reply = self.demo.answer(request)
        except Exception as e:  # a bug must not stop the server; the user still gets one line
            logging.exception("try-on request failed")
            reply = {"error": f"internal error: {type(e).__name__}: {one_line(e)[:300]}"}
        self._json(200 if "error" not in reply else 422, reply)


def make_server(demo: Demo | None, host: str = "127.0.0.1",
                port: int = DEFAULT_PORT) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server for `demo` bound to (host, port); port 0 picks a free one. (main binds
    before loading the checkpoint and sets `server.RequestHandlerClass.demo` after.)"""
    handler = type("DemoHandler", (Handler,), {"demo": demo})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def server_url(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}/"


def load_demo(workdir: str | None = None, checkpoint: str | None = None, step: int | None = None,
              select: str = "largest", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
              max_pixels: int = images.MAX_PIXELS, resolution: str = "full", fallback: bool = True) -> Demo:
    """Restores the checkpoint (tryon_pipeline.restore, as infer does), opens its test set, compiles
    the forward pass."""
    located = checkpointing.find_step(workdir, checkpoint, step)
    net = pipeline.restore(located, fallback=fallback,
                           warn=lambda m: print(f"m2e_jax.demo: warning: {one_line(m)}", file=sys.stderr))
    warm_up(net, net.garment_kind, resolution)
    test_set, note = open_test_set(net.config)
    return Demo(net, net.garment_kind, test_set, note, select, int(max_upload_mb * 1e6), max_pixels,
                resolution)


# ---------------------------------------------------------------- the page

def page(info: dict) -> str:
    """The whole page (m2e_jax/demo_page.html: inline CSS and JS, nothing loaded from elsewhere)."""
    template = importlib.resources.files("m2e_jax").joinpath("demo_page.html").read_text(encoding="utf-8")
    return template.replace("__INFO__", json.dumps(info).replace("<", "\\u003c"))


# ---------------------------------------------------------------- command line

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m2e_jax.demo", description=__doc__.split("\n\n")[0])
    checkpointing.add_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free one)")
    p.add_argument("--max_upload_mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help="largest try-on request accepted (all its files, base64-encoded)")
    p.add_argument("--max_pixels", type=int, default=images.MAX_PIXELS,
                   help="largest uploaded image (width x height), refused from its header")
    pipeline.add_arguments(p)
    xla_flags.add_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    storage_clients.install()  # before any path is built
    xla_flags.configure(args.cpu_convolutions)  # before the first JAX computation
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:  # listen first: a taken port is reported before the checkpoint is loaded
        server = make_server(None, args.host, args.port)
    except OSError as e:  # port taken, address not on this machine, ...
        print(f"m2e_jax.demo: error: --host {args.host} --port {args.port}: cannot listen there "
              f"({e.strerror or e})", file=sys.stderr)
        return 1
    try:
        if args.max_upload_mb <= 0:
            raise DemoError(f"--max_upload_mb must be > 0, got {args.max_upload_mb}")
        if args.max_pixels <= 0:
            raise DemoError(f"--max_pixels must be > 0, got {args.max_pixels}")
        demo = load_demo(args.workdir, args.checkpoint, args.step, args.select, args.max_upload_mb,
                         args.max_pixels, args.resolution, not args.no_fallback)
        server.RequestHandlerClass.demo = demo
    except _USER_ERRORS as e:
        server.server_close()
        print(f"m2e_jax.demo: error: {one_line(e)}", file=sys.stderr)
        return 1
    if demo.test_note:
        print(f"m2e_jax.demo: {demo.test_note}; uploads only", file=sys.stderr)
    print(f"m2e_jax.demo: serving {demo.net.checkpoint} at {server_url(server)} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
