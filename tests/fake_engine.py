"""A loopback search engine for crawler tests and benchmarks, 127.0.0.1 only, speaking each
engine's documented format: Bing's result pages (`div.imgpt > a[m]` with JSON `murl`/`purl`),
Baidu's `acjson`, Openverse's `/v1/images/` (results[] with url, foreign_landing_url, license,
license_version, license_url, creator, attribution) and the MediaWiki API of Wikimedia Commons
(generator=search, prop=imageinfo with extmetadata), plus image routes with scripted faults
(status, delay, dribbling bodies, "fail the first n requests" with headers such as
Retry-After) and the time of every request."""

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
        self.results: dict[str, list[str]] = {}          # Bing: keyword -> image URLs
        self.baidu: dict[str, list[str]] = {}
        self.openverse: dict[str, list[dict]] = {}       # keyword -> Openverse result objects
        self.wikimedia: dict[str, list[dict]] = {}       # keyword -> MediaWiki page objects
        self.faults: dict[str, list] = {}                # path -> [requests left, status, headers]
        self.hits: dict[str, int] = {}
        self.times: dict[str, list[float]] = {}          # path -> time.monotonic() of each request
        self.queries: dict[str, list[str]] = {}          # path -> the query string of each request
        self.active = self.max_active = 0                # image requests in flight, and the most at once
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

    def requested_queries(self, path: str) -> list[str]:
        return list(self.queries.get(path, []))

    def fail_first(self, path: str, n: int, status: int = 429, headers: dict | None = None) -> None:
        """The first `n` requests to `path` (an image or a search page) get `status` and `headers`."""
        self.faults[path] = [n, status, headers or {}]

    def openverse_result(self, keyword: str, url: str, license: str = "by-sa", version: str = "2.0",
                         creator: str = "Jane Doe") -> dict:
        """One Openverse image result with the documented fields; appended to `keyword`'s list."""
        ident = len(self.openverse.get(keyword, []))
        item = {"id": f"{keyword}-{ident}", "title": f"{keyword} {ident}", "url": url,
                "foreign_landing_url": f"https://www.flickr.com/photos/jane/{ident}", "creator": creator,
                "creator_url": "https://www.flickr.com/photos/jane", "license": license, "license_version": version,
                "license_url": f"https://creativecommons.org/licenses/{license}/{version}/",
                "provider": "flickr", "source": "flickr", "category": "photograph", "filetype": "jpg",
                "attribution": f'"{keyword} {ident}" by {creator} is licensed under CC {license.upper()} {version}.',
                "thumbnail": url, "width": 160, "height": 120}
        self.openverse.setdefault(keyword, []).append(item)
        return item

    def wikimedia_result(self, keyword: str, url: str, license: str = "CC BY-SA 4.0", artist: str = "Ann Author",
                         mime: str = "image/jpeg") -> dict:
        """One Commons file page (formatversion=2) with imageinfo and extmetadata (Artist is HTML, as
        Commons gives it); appended."""
        ident = len(self.wikimedia.get(keyword, []))
        title = f"File:{keyword.title()} {ident}.jpg"
        ext = {"LicenseShortName": {"value": license, "source": "commons-desc-page"},
               "LicenseUrl": {"value": "https://creativecommons.org/licenses/by-sa/4.0", "source": "commons-desc-page"},
               "Artist": {"value": f'<a href="//commons.wikimedia.org/wiki/User:Ann">{artist}</a>',
                          "source": "commons-desc-page"},
               "UsageTerms": {"value": f"Creative Commons {license}", "source": "commons-desc-page"}}
        item = {"pageid": 1000 + ident, "ns": 6, "title": title, "index": ident + 1,
                "imageinfo": [{"size": 12345, "width": 160, "height": 120, "url": url, "thumburl": url,
                               "descriptionurl": f"https://commons.wikimedia.org/wiki/{title.replace(' ', '_')}",
                               "mime": mime, "extmetadata": ext}]}
        self.wikimedia.setdefault(keyword, []).append(item)
        return item

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
                    engine.times.setdefault(parts.path, []).append(time.monotonic())
                    engine.queries.setdefault(parts.path, []).append(parts.query)
                    fault = engine.faults.get(parts.path)
                    failing = bool(fault and fault[0] > 0)
                    if failing:
                        fault[0] -= 1
                if engine.latency:
                    time.sleep(engine.latency)
                if failing:
                    return self.reply(fault[1], b"slow down", "text/plain", fault[2])
                query = parse_qs(parts.query)
                search = {"/images/async": self.results_page, "/search/acjson": self.baidu_page,
                          "/v1/images/": self.openverse_page, "/w/api.php": self.wikimedia_page}
                if parts.path in search and parts.path not in engine.routes:
                    return search[parts.path](query)
                route = engine.routes.get(parts.path)
                if route is None:
                    return self.reply(404, b"not found", "text/plain")
                with engine.lock:
                    engine.active += 1
                    engine.max_active = max(engine.max_active, engine.active)
                try:
                    if route["delay"]:
                        time.sleep(route["delay"])
                    if route["dribble"]:
                        return self.dribble(route)
                    self.reply(route["status"], route["body"], route["content_type"], route["headers"],
                               route["length"])
                finally:
                    with engine.lock:
                        engine.active -= 1

            def results_page(self, query):
                keyword = query.get("q", [""])[0]
                first = int(query.get("first", ["0"])[0])
                count = int(query.get("count", [str(engine.page_size)])[0])
                urls = engine.results.get(keyword, [])[first:first + count]
                items = "".join(
                    f'<div class="imgpt"><a class="iusc" m="{html.escape(json.dumps({"murl": u, "turl": u, "purl": u + "/page"}, separators=(",", ":")))}" '
                    f'href="#"><img src="{html.escape(u)}"></a></div>' for u in urls)
                self.reply(200, f"<html><body>{items}</body></html>".encode(), "text/html; charset=utf-8")

            def json_reply(self, data):
                self.reply(200, json.dumps(data).encode(), "application/json")

            def baidu_page(self, query):
                first, count = int(query.get("pn", ["0"])[0]), int(query.get("rn", ["30"])[0])
                urls = engine.baidu.get(query.get("word", [""])[0], [])[first:first + count]
                self.json_reply({"queryExt": "", "listNum": len(urls), "data": [{"hoverURL": u} for u in urls] + [{}]})

            def openverse_page(self, query):
                items = engine.openverse.get(query.get("q", [""])[0], [])
                page, size = int(query.get("page", ["1"])[0]), int(query.get("page_size", ["20"])[0])
                if size > 20:  # the documented anonymous limit
                    return self.reply(401, b'{"detail": "page_size > 20 needs a key"}', "application/json")
                self.json_reply({"result_count": len(items), "page_count": -(-len(items) // size), "page_size": size,
                                 "page": page, "results": items[(page - 1) * size:page * size]})

            def wikimedia_page(self, query):
                if query.get("generator") != ["search"] or query.get("gsrnamespace") != ["6"]:
                    return self.json_reply({"error": {"code": "badvalue", "info": "unexpected query"}})
                items = engine.wikimedia.get(query.get("gsrsearch", [""])[0], [])
                offset, limit = int(query.get("gsroffset", ["0"])[0]), int(query.get("gsrlimit", ["10"])[0])
                pages = items[offset:offset + limit]
                answer = {"batchcomplete": True, "query": {"pages": pages}}
                if offset + limit < len(items):
                    answer["continue"] = {"gsroffset": offset + limit, "continue": "gsroffset||"}
                self.json_reply(answer if pages else {"batchcomplete": True})

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
