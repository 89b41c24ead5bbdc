"""The rating server over direct HTTP: token rules, no path from the client reaching the file
system, bounded requests, answer validation with nothing written, and no response naming a model,
run, eval dir or file."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from t2v_exp.rating.server import MAX_BODY, RatingServer, ServerRefused
from t2v_exp.rating.store import Store
from t2v_exp.rating.study import Settings, prepare
from tests.test_rating_fixtures import make_sweep

TOKEN = "a-long-enough-study-token"


@contextmanager
def running(store: Store, host: str = "127.0.0.1", token: str | None = None):
    server = RatingServer((host, 0), store, token)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def request(server: RatingServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        connection.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture
def study(tmp_path):
    sweep = make_sweep(tmp_path, jobs=2)
    study_dir, manifest = prepare(None, sweep_dir=str(sweep), settings=Settings(pairs="all"))
    return sweep, study_dir, Store(study_dir, manifest)


def secrets_of(sweep: Path, study_dir: Path, store: Store) -> list[str]:
    """Strings that must never reach a rater: labels, model and job names, dirs, file names."""
    found = {str(sweep), str(study_dir), "modelscope", "cogvideox", "eval_base", "fine-tuned", "manifest",
             "metrics.json", "sqlite"}
    found |= {s["label"] for s in store.manifest["systems"]}
    found |= {Path(m["path"]).name for m in store.manifest["media"]} | {m["path"] for m in store.manifest["media"]}
    found |= {m["sha256"] for m in store.manifest["media"]}
    return sorted(found)


def answer_rows(store: Store) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def test_off_loopback_needs_a_token(study):
    _, _, store = study
    with pytest.raises(ServerRefused, match="token"):
        RatingServer(("0.0.0.0", 0), store, None)


def test_the_token_is_required_on_every_request(study):
    _, _, store = study
    with running(store, host="0.0.0.0", token=TOKEN) as server:
        key = json.loads(request(server, "POST", "/api/rater", b'{"name": "t"}', {"X-Study-Token": TOKEN})[2])["key"]
        assignment = json.loads(request(server, "GET", "/api/next", None,
                                        {"X-Study-Token": TOKEN, "X-Rater-Key": key})[2])["assignment"]
        routes = [("GET", "/"), ("GET", "/app.js"), ("GET", "/api/next"), ("GET", f"/media/{assignment}/left"),
                  ("POST", "/api/rater"), ("POST", "/api/answer")]
        for method, path in routes:
            body = b'{"name": "x"}' if method == "POST" else None
            for bad in ({}, {"X-Study-Token": "wrong" * 5}, {"Cookie": "study_token=nope"}):
                status, _, content = request(server, method, path, body, {**bad, "X-Rater-Key": key})
                assert status == 401 and b"not allowed" in content, (method, path, bad)
            status, _, _ = request(server, method, path + "?token=wrong", body, {"X-Rater-Key": key})
            assert status == 401
        assert answer_rows(store) == 0 and len(store.table("raters")) == 1
        status, headers, _ = request(server, "GET", f"/?token={TOKEN}")
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert request(server, "GET", f"/media/{assignment}/left", None, {"Cookie": cookie})[0] == 200
        assert request(server, "GET", "/api/next", None, {"Cookie": cookie, "X-Rater-Key": key})[0] == 200


def test_loopback_without_a_token_checks_the_host_header(study):
    _, _, store = study
    with running(store) as server:
        assert request(server, "GET", "/")[0] == 200  # http.client sends Host: 127.0.0.1:<port>
        assert request(server, "GET", "/", None, {"Host": "attacker.example"})[0] == 403


def test_no_client_path_reaches_the_file_system(study):
    sweep, study_dir, store = study
    with running(store) as server:
        key = json.loads(request(server, "POST", "/api/rater", b'{"name": "p"}')[2])["key"]
        assignment = json.loads(request(server, "GET", "/api/next", None, {"X-Rater-Key": key})[2])["assignment"]
        video = Path(store.manifest["media"][0]["path"])
        attempts = ["/../manifest.json", "/manifest.json", "/ratings.sqlite", "/..%2fmanifest.json",
                    "/%2e%2e/%2e%2e/etc/passwd", "/../../../../etc/passwd", "/page/index.html",
                    f"/media/{assignment}/../../manifest.json", f"/media/{assignment}/left/../../../etc/passwd",
                    f"/media/{assignment}/up", f"/media/{video.name}/left", f"/media/..%2f..%2f{video.name}/left",
                    f"/media/{assignment}%2f..%2f..%2fmanifest.json/left", "/media/" + "A" * 40 + "/left",
                    f"/{video}", "/app.js/../../study.py", "//etc/passwd", "/static/../rating/server.py"]
        for path in attempts:
            status, _, content = request(server, "GET", path)
            assert status == 404, path
            assert b"study_id" not in content and b"root:" not in content and len(content) < 100
        status, headers, content = request(server, "GET", f"/media/{assignment}/left")
        assert status == 200 and headers["Content-Type"] == "video/mp4" and "Content-Disposition" not in headers
        status, headers, content = request(server, "GET", f"/media/{assignment}/left", None, {"Range": "bytes=0-9"})
        assert status == 206 and len(content) == 10 and headers["Content-Range"].startswith("bytes 0-9/")


def test_bounded_requests(study):
    _, _, store = study
    with running(store) as server:
        status, _, _ = request(server, "POST", "/api/rater", b"{" + b" " * (MAX_BODY + 1) + b"}")
        assert status == 413
        assert request(server, "GET", "/" + "a" * 5000)[0] == 414
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        connection.putrequest("POST", "/api/rater")
        connection.endheaders()  # no Content-Length
        assert connection.getresponse().status == 411
        connection.close()
        assert request(server, "DELETE", "/api/answer")[0] == 405
        assert request(server, "GET", "/?" + "&".join(f"k{i}=v" for i in range(20)))[0] == 400
        assert request(server, "POST", "/api/rater", b"[" * 5000 + b"]" * 5000)[0] in (400, 413)
        assert request(server, "POST", "/api/rater", b"[" * 4000)[0] == 400  # nested past the parser's depth
        assert len(store.table("raters")) == 0


def test_answers_over_http_are_validated_and_refusals_write_nothing(study):
    _, _, store = study
    with running(store) as server:
        def post_answer(key: str | None, payload) -> int:
            headers = {"Content-Type": "application/json", **({"X-Rater-Key": key} if key else {})}
            return request(server, "POST", "/api/answer", json.dumps(payload).encode(), headers)[0]

        ann = json.loads(request(server, "POST", "/api/rater", b'{"name": "Ann"}')[2])["key"]
        bob = json.loads(request(server, "POST", "/api/rater", b'{"name": "Bob"}')[2])["key"]
        item = json.loads(request(server, "GET", "/api/next", None, {"X-Rater-Key": ann})[2])["assignment"]
        assert post_answer(None, {"assignment": item, "answers": {"overall": "left"}}) == 401
        assert post_answer("forged-key", {"assignment": item, "answers": {"overall": "left"}}) == 401
        assert post_answer(bob, {"assignment": item, "answers": {"overall": "left"}}) == 403
        assert post_answer(ann, {"assignment": "unknownitem1", "answers": {"overall": "left"}}) == 404
        assert post_answer(ann, {"assignment": item, "answers": {"overall": "sideways"}}) == 400
        assert post_answer(ann, [1, 2, 3]) == 400
        assert request(server, "POST", "/api/answer", b"\xff\xfe", {"X-Rater-Key": ann})[0] == 400
        assert request(server, "POST", "/api/rater", b'{"name": ""}')[0] == 400
        assert answer_rows(store) == 0
        assert post_answer(ann, {"assignment": item, "answers": {"overall": "right"}}) == 200
        assert post_answer(ann, {"assignment": item, "answers": {"overall": "left"}}) == 409  # replay
        assert answer_rows(store) == 1 and store.table("answers")[0]["choice"] == "right"


def test_no_response_names_a_model_a_run_or_a_file(study):
    sweep, study_dir, store = study
    forbidden = secrets_of(sweep, study_dir, store)
    seen = []
    with running(store) as server:
        seen.append(request(server, "GET", "/"))
        seen.append(request(server, "GET", "/app.js"))
        seen.append(request(server, "GET", "/style.css"))
        created = request(server, "POST", "/api/rater", b'{"name": "Blind"}')
        seen.append(created)
        key = json.loads(created[2])["key"]
        while True:
            current = request(server, "GET", "/api/next", None, {"X-Rater-Key": key})
            seen.append(current)
            data = json.loads(current[2])
            if data["done"]:
                break
            assert set(data) == {"name", "answered", "total", "mode", "questions", "done", "assignment", "prompt",
                                 "videos"}
            seen += [request(server, "GET", url) for url in data["videos"].values()]
            seen.append(request(server, "POST", "/api/answer", json.dumps(
                {"assignment": data["assignment"], "answers": {"overall": "same"}}).encode(), {"X-Rater-Key": key}))
        seen.append(request(server, "GET", "/nowhere"))
    assert len(seen) > 20
    for status, headers, body in seen:
        text = body.decode("latin-1") + json.dumps(headers)
        leaked = [word for word in forbidden if word in text]
        assert not leaked, (status, leaked)
