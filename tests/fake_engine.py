"""A loopback search engine for crawler tests and benchmarks: Bing's result-page format
(`div.imgpt > a[m]` with JSON `murl`) plus image routes with scripted faults. 127.0.0.1 only."""

from __future__ import annotations

import html
import io
import json
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image


def smooth_image(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A distinct, natural-looking (low-frequency) picture per seed."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8))
    return small.resize(size, Image.BICUBIC)


def noise_image(seed: int, size: tuple[int, int] = (1200, 1200)) -> Image.Image:
    """Incompressible pixels: a large file on the wire."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels in ~50 KB: tiny on the wire, huge decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" * (1 + (side + 7) // 8)
    raw = zlib.compress(row * side, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


class FakeEngine:
    """Context manager: starts the server on 127.0.0.1 with a free port, stops it on exit."""

    def __init__(self, latency: float = 0.0, page_size: int = 20):
        self.latency, self.page_size = latency, page_size
        self.routes: dict[str, dict] = {}
        self.results: dict[str, list[str]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    # -- scripting
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes = b"", content_type: str = "image/jpeg", status: int = 200,
            delay: float = 0.0, headers: dict | None = None, length: bool = True,
            dribble: float = 0.0, dribble_for: float = 60.0) -> str:
        """A route. `dribble` > 0: after the headers, one byte every `dribble` seconds (body
        bytes first, then zeros) for up to `dribble_for` seconds or until the client hangs up."""
        self.routes[path] = dict(body=body, content_type=content_type, status=status, delay=delay,
                                 headers=headers or {}, length=length, dribble=dribble, dribble_for=dribble_for)
        return self.url(path)

    def result(self, keyword: str, *urls: str) -> None:
        self.results.setdefault(keyword, []).extend(urls)

    # -- serving
    def __enter__(self) -> "FakeEngine":
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                with engine.lock:
                    engine.hits[parts.path] = engine.hits.get(parts.path, 0) + 1
                if engine.latency:
                    time.sleep(engine.latency)
                if parts.path == "/images/async":
                    return self.results_page(parse_qs(parts.query))
                route = engine.routes.get(parts.path)
                if route is None:
                    return self.reply(404, b"not found", "text/plain")
                if route["delay"]:
                    time.sleep(route["delay"])
                if route["dribble"]:
                    return self.dribble(route)
                self.reply(route["status"], route["body"], route["content_type"], route["headers"], route["length"])

            def results_page(self, query):
                keyword = query.get("q", [""])[0]
                first = int(query.get("first", ["0"])[0])
                count = int(query.get("count", [str(engine.page_size)])[0])
                urls = engine.results.get(keyword, [])[first:first + count]
                items = "".join(
                    f'<div class="imgpt"><a class="iusc" m="{html.escape(json.dumps({"murl": u, "turl": u}, separators=(",", ":")))}" '
                    f'href="#"><img src="{html.escape(u)}"></a></div>' for u in urls)
                self.reply(200, f"<html><body>{items}</body></html>".encode(), "text/html; charset=utf-8")

            def dribble(self, route):
                body, end = route["body"], time.monotonic() + route["dribble_for"]
                try:
                    self.send_response(route["status"])
                    self.send_header("Content-Type", route["content_type"])
                    self.end_headers()
                    self.wfile.flush()
                    i = 0
                    while time.monotonic() < end:
                        self.wfile.write(body[i:i + 1] or b"\0")
                        self.wfile.flush()
                        i += 1
                        time.sleep(route["dribble"])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def reply(self, status, body, content_type, headers=None, length=True):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    if length:
                        self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
