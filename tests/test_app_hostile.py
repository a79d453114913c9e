"""camkit app against a hostile or careless visitor (issue 26): the Clean tab and the machine's
paths stay off a public bind, every image goes through the upload cap and the guarded decode
(a pasted data: URL, a path the request names, a URL), two sessions' cleaner clicks never
mix, the app's temporary folder stays bounded and goes with the app, and a bad --host or a
busy port is one line. Raw requests speak Gradio's queue protocol (POST queue/join, then the
SSE stream of queue/data), which is what a hostile client sends; every server binds 127.0.0.1."""

import base64
import io
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest
from PIL import Image

from camkit.errors import CamkitError
from helpers import free_port, served

gradio = pytest.importorskip("gradio", reason="camkit[app] (gradio) is not installed")
import requests  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

import camkit.app as appmod  # noqa: E402
from camkit.app import APP_MAX_PIXELS, launch, prepare, prune_temp, read_auth  # noqa: E402

CLEAN_ENDPOINTS = {"/rank", "/pick", "/decide", "/apply", "/undo"}


@pytest.fixture(scope="module")
def data(canvas_dir, tmp_path_factory):
    """A private copy of the dataset: this module's cleaner clicks and applies land there."""
    return Path(shutil.copytree(canvas_dir, tmp_path_factory.mktemp("hostile") / "data"))


@pytest.fixture(scope="module")
def server(tiny_run, data):
    with served(tiny_run, data) as url:
        yield url


def call(server: str, api_name: str, data: list, session: str | None = None, event_data=None) -> dict:
    """One event through Gradio's queue as any HTTP client may send it; the completion message."""
    deps = requests.get(server + "config", timeout=30).json()["dependencies"]
    body = {"data": data, "fn_index": next(d["id"] for d in deps if d.get("api_name") == api_name),
            "session_hash": session or uuid.uuid4().hex, "event_data": event_data}
    joined = requests.post(server + "gradio_api/queue/join", json=body, timeout=60)
    joined.raise_for_status()
    event = joined.json()["event_id"]
    with requests.get(server + "gradio_api/queue/data", params={"session_hash": body["session_hash"]},
                      stream=True, timeout=300) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("event_id") == event and message.get("msg") == "process_completed":
                    return message
    pytest.fail(f"no completion for {api_name}")


def explain(server: str, image: dict) -> dict:
    return call(server, "explain", [image, "cam", "pred", 0.5, "jet", False])


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# ---------------------------------------------------------------- item 13 (first: before this module's server starts)

def test_closing_the_last_app_removes_its_temporary_folder(tiny_run, canvas_dir):
    """Uploads and overlays go to the app's own folder, which goes with the last app of the
    process (the CLI's Ctrl-C closes it the same way: tests/test_hostile.py checks exit 130)."""
    port = free_port()
    blocks = launch(tiny_run, port=port, block=False)
    folder = appmod.app_temp_dir()
    assert appmod._temp["open"] == 1, "another app of this process still serves"
    Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
        handle_file(str(canvas_dir / "bag" / "0000.png")), "cam", "pred", 0.5, "jet", False, api_name="/explain")
    assert folder.name.startswith("camkit-app-") and os.environ["GRADIO_TEMP_DIR"] == str(folder)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) > 0
    blocks.close()
    assert not folder.exists() and os.environ.get("GRADIO_TEMP_DIR") != str(folder)


# ---------------------------------------------------------------- item 2: no Clean tab, no path, on a public bind

@pytest.mark.parametrize("host, share", [("0.0.0.0", False), ("127.0.0.1", True)])
def test_a_public_app_has_no_clean_endpoint_and_no_machine_path(tiny_run, data, host, share):
    """Built as `launch` builds it for --host 0.0.0.0 or --share (nothing is bound here)."""
    blocks = prepare(tiny_run, host=host, share=share, data=data)
    config = json.dumps(blocks.get_config_file())
    assert set(blocks.get_api_info()["named_endpoints"]) == {"/explain"}
    assert '"Clean"' not in config and "clean-decisions" not in config
    for path in (data, data.resolve(), tiny_run, tiny_run.resolve()):
        assert str(path) not in config


def test_a_public_app_served_asks_a_login_and_shows_no_clean_endpoint_or_path(tiny_run, data):
    """The Blocks of a public launch with a login, served on loopback: what a visitor gets."""
    blocks = prepare(tiny_run, host="0.0.0.0", data=data, auth=[("me", "s3cret")])
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                  auth=[("me", "s3cret")])
    url, visitor = f"http://127.0.0.1:{port}/", requests.Session()
    try:
        assert visitor.get(url + "config", timeout=30).status_code == 401
        assert visitor.post(url + "login", data={"username": "me", "password": "no"}, timeout=30).status_code == 400
        assert visitor.post(url + "login", data={"username": "me", "password": "s3cret"}, timeout=30).ok
        config = visitor.get(url + "config", timeout=30).text
        info = visitor.get(url + "gradio_api/info", timeout=30).json()
    finally:
        blocks.close()
    assert set(info["named_endpoints"]) == {"/explain"} and not info["unnamed_endpoints"]
    assert str(data) not in config and str(tiny_run) not in config and "Clean" not in config


def test_the_loopback_app_serves_the_clean_tab_without_machine_paths(server, data, tiny_run):
    config = requests.get(server + "config", timeout=30).text
    info = requests.get(server + "gradio_api/info", timeout=30).json()
    assert CLEAN_ENDPOINTS <= set(info["named_endpoints"])
    assert str(data) not in config and str(data.resolve()) not in config and str(tiny_run) not in config


def test_remote_clean_is_served_only_behind_a_login(tiny_run, data):
    with pytest.raises(CamkitError, match="--allow-remote-clean needs --auth-file"):
        prepare(tiny_run, host="0.0.0.0", data=data, allow_remote_clean=True)
    blocks = prepare(tiny_run, host="0.0.0.0", data=data, allow_remote_clean=True, auth=[("me", "secret")])
    assert CLEAN_ENDPOINTS <= set(blocks.get_api_info()["named_endpoints"])


@pytest.mark.parametrize("text, message", [("me:pw\n# comment\n\nyou:a:b\n", None), ("", "no user:password"),
                                           ("me\n", "line 1: expected user:password"),
                                           (":pw\n", "line 1: expected")])
def test_auth_file_holds_user_password_lines(tmp_path, text, message):
    path = tmp_path / "logins"
    path.write_text(text)
    if message is None:
        assert read_auth(path) == [("me", "pw"), ("you", "a:b")]
    else:
        with pytest.raises(CamkitError, match=message):
            read_auth(path)


def test_remote_clean_without_a_login_is_one_line(cli, tiny_run):
    code, out, err = cli("app", tiny_run, "--port", free_port(), "--share", "--allow-remote-clean")
    assert code == 2 and "--allow-remote-clean needs --auth-file" in err and "Traceback" not in err
    assert "camkit app on" not in out


# ---------------------------------------------------------------- item 5: every image capped, guarded decode

@pytest.fixture
def bomb_png() -> bytes:
    side = int(APP_MAX_PIXELS ** 0.5) + 100       # over the app's cap, under PIL's own warning
    return png_bytes(Image.new("1", (side, side)))


def test_a_pasted_decompression_bomb_is_refused_by_the_guarded_decode(server, bomb_png, canvas_dir):
    """A data: URL in a FileData without its "meta": Gradio hands it to preprocess as it came."""
    reply = explain(server, {"path": "x", "url": data_url(bomb_png)})
    assert not reply["success"] and "pasted image" in reply["output"]["error"]
    assert "too large" in reply["output"]["error"]
    good = explain(server, {"path": "x", "url": data_url((canvas_dir / "bag" / "0000.png").read_bytes())})
    assert good["success"] and good["output"]["data"][0]["label"] in ("bag", "trouser")   # a good paste works


def test_a_pasted_image_over_the_upload_cap_is_refused_before_decoding(server, monkeypatch):
    noise = png_bytes(Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)))
    monkeypatch.setattr(appmod, "MAX_UPLOAD_BYTES", len(noise) - 1)
    reply = explain(server, {"path": "x", "url": data_url(noise)})
    assert not reply["success"] and "larger than the app's" in reply["output"]["error"]


def test_a_request_body_over_the_cap_is_refused_before_it_is_read(server, monkeypatch):
    """A data: URL far over the cap is refused by its length (413), not parsed into memory;
    without its length it is cut at the cap; uploads keep Gradio's own cap and still work."""
    monkeypatch.setattr(appmod, "MAX_UPLOAD_BYTES", 1000)
    body = json.dumps({"data": [{"path": "x", "url": data_url(b"\0" * 2_000_000)}], "fn_index": 0,
                       "session_hash": uuid.uuid4().hex}).encode()
    refused = requests.post(server + "gradio_api/queue/join", data=body, timeout=60,
                            headers={"content-type": "application/json"})
    assert refused.status_code == 413 and "larger than the app's" in refused.json()["detail"]
    chunked = requests.post(server + "gradio_api/queue/join", data=iter([body[:900_000], body[900_000:]]),
                            timeout=60, headers={"content-type": "application/json"})
    assert not chunked.ok
    small = png_bytes(Image.new("RGB", (64, 64)))
    uploaded = requests.post(server + "gradio_api/upload", files={"files": ("a.png", small)}, timeout=60)
    assert uploaded.ok and Path(uploaded.json()[0]).is_file()


@pytest.mark.parametrize("payload, message", [
    ({"path": "x", "url": "data:image/png;base64,%%%"}, "not valid base64"),
    ({"path": "x", "url": "data:image/png,rawbytes"}, "not a base64 data: URL"),
    ({"path": "https://example.com/big.png", "meta": {"_type": "gradio.FileData"}}, "a URL is not fetched"),
    ({"path": "https://example.com/big.png"}, "not an uploaded image")])
def test_hostile_image_payloads_are_one_sentence(server, payload, message):
    reply = explain(server, payload)
    assert not reply["success"] and message in reply["output"]["error"]


def test_a_request_cannot_make_the_app_read_a_file_of_the_machine(server, canvas_dir):
    """A FileData without "meta" naming a local image: it was opened and drawn for anyone."""
    reply = explain(server, {"path": str(canvas_dir / "bag" / "0000.png")})
    assert not reply["success"] and "not an uploaded image" in reply["output"]["error"]
    assert str(canvas_dir) not in json.dumps(reply)


# ---------------------------------------------------------------- item 7: two sessions, decisions keyed by file

def opened(pick_reply: dict) -> str:
    """The file a pick shows, as its description names it ("**bag/0003.png**: label ...")."""
    return pick_reply["output"]["data"][3].split("**")[1]


def test_a_click_is_saved_for_the_image_its_session_shows_after_another_session_applies(server, data):
    """Session B opens suspect #1; session A deletes #0, applies and re-ranks (every position
    shifts); B's click is saved for the file B was shown, not for whatever is #1 now."""
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    shown_b = call(server, "rank", [], b)["output"]["data"][0]
    call(server, "rank", [], a)
    rel_b = opened(call(server, "pick", [None], b, {"index": 1, "value": shown_b[1]}))
    rel_a = opened(call(server, "pick", [None], a, {"index": 0, "value": shown_b[0]}))
    assert rel_a != rel_b and (data / rel_a).is_file() and (data / rel_b).is_file()
    assert call(server, "decide", [None, "delete"], a)["output"]["data"][0].startswith(f"saved: {rel_a} ")
    assert "1 file(s) moved" in call(server, "apply", [], a)["output"]["data"][0]
    reranked = call(server, "rank", [], a)["output"]["data"][0]
    assert rel_a not in [item["caption"].split(" · ")[0] for item in reranked]
    assert reranked[1]["caption"].split(" · ")[0] != rel_b             # position 1 names another file now
    other = "trouser" if rel_b.startswith("bag/") else "bag"
    status = call(server, "decide", [None, f"relabel:{other}"], b)["output"]["data"][0]
    assert status.startswith(f"saved: {rel_b} → relabel:{other}")
    saved = json.loads((data / "clean-decisions.json").read_text())
    assert saved["decisions"] == {rel_b: f"relabel:{other}"}
    again = call(server, "decide", [None, "keep"], a)                   # A's re-rank closed A's open file
    assert again["output"]["data"][0] == "select an image first"
    assert "1 file(s) moved back" in call(server, "undo", [], b)["output"]["data"][0]


# ---------------------------------------------------------------- item 13: a bounded temporary folder, gone on close

def test_prune_keeps_the_newest_files_within_the_budget(tmp_path):
    for n in range(20):
        (tmp_path / f"{n:02d}").mkdir()
        path = tmp_path / f"{n:02d}" / "upload.png"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1_000_000 + n, 1_000_000 + n))
    assert prune_temp(tmp_path, budget=5000, keep=2) == 5000
    assert sorted(p.parent.name for p in tmp_path.rglob("*.png")) == ["15", "16", "17", "18", "19"]
    assert len(list(tmp_path.iterdir())) == 5                          # emptied folders removed too
    assert prune_temp(tmp_path, budget=0, keep=3) == 3000               # the newest are never pruned


def test_uploads_leave_a_bounded_temporary_folder(server, monkeypatch, tmp_path):
    monkeypatch.setattr(appmod, "TEMP_BUDGET", 150_000)
    monkeypatch.setattr(appmod, "TEMP_KEEP", 2)
    client = Client(server, verbose=False)
    sizes = []
    for n in range(8):
        path = tmp_path / f"noise{n}.png"
        Image.frombytes("RGB", (180, 180), os.urandom(180 * 180 * 3)).save(path)
        sizes.append(path.stat().st_size)
        client.predict(handle_file(str(path)), "cam", "pred", 0.5, "jet", False, api_name="/explain")
    folder = appmod.app_temp_dir()
    held = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert held <= 150_000 + 4 * max(sizes) < sum(sizes)   # the budget, the newest kept, the last answer


# ---------------------------------------------------------------- item 15: a bad --host, a busy port

@pytest.mark.parametrize("host, message", [("::1", "IPv4 only"), ("nosuch.invalid", "this machine can resolve"),
                                           ("192.0.2.1", "not an address of this machine")])
def test_a_bad_host_is_one_line(cli, tiny_run, host, message):
    code, out, err = cli("app", tiny_run, "--host", host, "--port", free_port())
    assert code == 2 and message in err and "Traceback" not in err and "camkit app on" not in out


def test_a_busy_port_is_one_line(cli, tiny_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli("app", tiny_run, "--port", port)
    assert code == 2 and f"port {port} is already in use on 127.0.0.1" in err and "Traceback" not in err
    assert "camkit app on" not in out
