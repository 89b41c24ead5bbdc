"""The rating page in a real browser: Debian's Chromium driven by Playwright against the real
entrypoint (``python -m t2v_exp.rate``) in a subprocess. A rater rates with the keyboard, reloads
half-way and continues; the server is killed with SIGKILL mid-study (one answer given while it is
down, one the instant it dies) and restarted with nothing lost; two raters rate at once; the DOM
and every response the page receives are searched for model, run and file names.

The contexts bypass the page's Content-Security-Policy only because Playwright's waits evaluate
strings in the page, which that policy (no eval) forbids.

Skipped only when no Chromium binary exists (or Playwright is not installed), saying which; the
browser is never downloaded: Playwright is pointed at the system binary.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_rating_fixtures import make_run, make_sweep

from .conftest import REPO

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEYS = ["1", "ArrowRight", "0", "2", "ArrowLeft", "ArrowDown"]
SCREENSHOT = os.environ.get("RATING_SCREENSHOT")  # where to save a screenshot of the page (README)


def chromium_binary() -> str | None:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium found (/usr/bin/chromium, chromium or chromium-browser on PATH): "
                    "`apt-get install -y chromium` (as root) to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def rating_server(tmp_path: Path, source: list[str], port: int):
    """The entrypoint serving ``source`` (overrides) on ``port``; yields (process, url)."""
    log = tmp_path / f"server-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "t2v_exp.rate", *source, f"port={port}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    url = None
    while url is None:
        text = log.read_text()
        match = re.search(r"Open (http://\S+)", text)
        if match:
            url = match.group(1)
        elif process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the rating server did not start:\n{text}")
        else:
            time.sleep(0.1)
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)


def progress(page) -> str:
    return page.inner_text("#progress-text")


def wait_for_pair(page, number: int, total: int) -> None:
    page.wait_for_function("([n, t]) => document.querySelector('#progress-text').textContent === `Pair ${n} of ${t}`"
                           " && document.body.dataset.state === 'rating'", arg=[number, total], timeout=30_000)


def press(page, count: int, start: int, total: int) -> None:
    """Answer ``count`` pairs with the keyboard, each after the previous one was accepted."""
    for k in range(count):
        page.keyboard.press(KEYS[(start + k) % len(KEYS)])
        if start + k + 1 < total:
            wait_for_pair(page, start + k + 2, total)


def start_rating(page, url: str, name: str) -> int:
    page.goto(url)
    page.wait_for_selector("#name", state="visible")
    page.fill("#name", name)
    page.keyboard.press("Enter")
    page.wait_for_function("document.body.dataset.state === 'rating'", timeout=30_000)
    total = int(re.search(r"of (\d+)", progress(page)).group(1))
    assert progress(page) == f"Pair 1 of {total}"
    return total


def answers_in(study_dir: Path) -> list[tuple]:
    with sqlite3.connect(study_dir / "ratings.sqlite") as db:
        return db.execute("SELECT r.name, a.assignment_id, a.choice FROM answers a JOIN raters r "
                          "ON r.id = a.rater_id ORDER BY a.id").fetchall()


def test_keyboard_rating_reload_and_sigkill_lose_nothing(browser, tmp_path):
    run = make_run(tmp_path, seeds_per_prompt=3)  # 12 pairs + 2 identical + 2 repeats = 16 screens
    study_dir, port = run / "rating", free_port()
    context = browser.new_context(viewport={"width": 1100, "height": 800}, bypass_csp=True)
    page = context.new_page()
    with rating_server(tmp_path, [f"run_dir={run}"], port) as (process, url):
        total = start_rating(page, url, "Keyboard Kim")
        assert total == 16
        # Both videos load from the server and play, in step.
        page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 2 && !v.paused)",
                               timeout=30_000)
        if SCREENSHOT:
            page.wait_for_timeout(600)
            page.screenshot(path=SCREENSHOT)
        press(page, 5, 0, total)
        assert len(answers_in(study_dir)) == 5
        page.reload()  # the browser closes the page and comes back: it continues where it was
        wait_for_pair(page, 6, total)
        press(page, 3, 5, total)
        # The server dies without warning; the rater answers while it is down.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        page.keyboard.press("1")
        page.wait_for_function("document.querySelector('#status').textContent.includes('not reachable')",
                               timeout=30_000)
    assert len(answers_in(study_dir)) == 8
    with rating_server(tmp_path, [f"study_dir={study_dir}"], port) as (process, url):
        wait_for_pair(page, 10, total)  # the kept answer was sent when the server came back
        assert len(answers_in(study_dir)) == 9
        # Killed the instant after a key press: the answer was either committed (the page's resend
        # is refused as a replay and it moves on) or never arrived (the page sends it again).
        page.keyboard.press("2")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    with rating_server(tmp_path, [f"study_dir={study_dir}"], port):
        wait_for_pair(page, 11, total)
        press(page, total - 10, 10, total)
        page.wait_for_function("document.body.dataset.state === 'done'", timeout=30_000)
        assert page.inner_text("#progress-text") == f"{total} of {total} done"
    rows = answers_in(study_dir)
    assert len(rows) == total and len({r[1] for r in rows}) == total  # every screen once, none twice
    with sqlite3.connect(study_dir / "ratings.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    context.close()


def test_two_raters_at_once_and_nothing_identifying_reaches_the_page(browser, tmp_path):
    sweep = make_sweep(tmp_path, jobs=2)
    study_dir, port = sweep / "rating", free_port()
    forbidden = {str(tmp_path), "sweep", "modelscope", "cogvideox", "eval_base", "fine-tuned", "_shapes", ".mp4",
                 "manifest", "metrics.json", "sqlite", "seed0", "job"}
    seen: list[tuple[str, bytes]] = []

    def record(response) -> None:
        try:
            seen.append((response.url, response.body() + str(response.headers).encode()))
        except Exception:  # noqa: BLE001 - a media response cut short by the next pair has no body to read
            seen.append((response.url, str(response.headers).encode()))

    with rating_server(tmp_path, [f"sweep_dir={sweep}", "pairs=all", "questions=[overall,motion]"], port) as (_, url):
        pages = [browser.new_context(bypass_csp=True).new_page() for _ in range(2)]
        for page in pages:
            page.on("response", record)
        totals = [start_rating(page, url, name) for page, name in zip(pages, ("Rater One", "Rater Two"), strict=True)]
        assert "(1/2)" in pages[0].inner_text("#question")
        for step in range(totals[0]):
            for page in pages:  # both raters' keys go in before either waits: the server sees them interleaved
                page.keyboard.press(KEYS[step % len(KEYS)])
                page.keyboard.press(KEYS[(step + 1) % len(KEYS)])
            for page, total in zip(pages, totals, strict=True):
                if step + 1 < total:
                    wait_for_pair(page, step + 2, total)
                else:
                    page.wait_for_function("document.body.dataset.state === 'done'", timeout=30_000)
            if step == 1:
                for page in pages:
                    dom = page.content() + page.inner_text("body")
                    assert not [w for w in forbidden if w in dom]
                    sources = page.eval_on_selector_all("video", "vs => vs.map(v => v.currentSrc)")
                    assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+/media/[A-Za-z0-9_-]+/(left|right)", s)
                               for s in sources)
    rows = answers_in(study_dir)
    assert len(rows) == 2 * totals[0] * 2  # two raters, every screen, two questions each
    assert {r[0] for r in rows} == {"Rater One", "Rater Two"}
    assert len(seen) > 4 * totals[0]
    for url_seen, body in seen:
        leaked = [w for w in forbidden if w.encode() in body or w in url_seen]
        assert not leaked, (url_seen, leaked)


def test_score_mode_by_keyboard_behind_a_token(browser, tmp_path):
    run = make_run(tmp_path)
    page = browser.new_context(bypass_csp=True).new_page()
    token = "browser-test-token-1234"
    overrides = [f"run_dir={run}", "mode=score", "repeats=0", "identical=0", f"token={token}"]
    with rating_server(tmp_path, overrides, free_port()) as (_, url):
        assert url.endswith(f"/?token={token}")
        bare = browser.new_context().new_page()
        assert bare.goto(url.split("?")[0]).status == 401  # without the token: nothing, not even the page
        total = start_rating(page, url, "Scorer")  # the token travels in a header and, for videos, a cookie
        page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 2)", timeout=30_000)
        assert page.is_visible("#score-buttons") and not page.is_visible("#pairwise-buttons")
        page.keyboard.press("7")
        page.keyboard.press("Backspace")  # changes their mind about the left score
        page.keyboard.press("8")
        page.keyboard.press("0")  # 0 is 10
        wait_for_pair(page, 2, total)
        page.click(".score-row[data-side=left] button:text-is('3')")
        page.click(".score-row[data-side=right] button:text-is('5')")
        wait_for_pair(page, 3, total)
    with sqlite3.connect(run / "rating" / "ratings.sqlite") as db:
        scores = db.execute("SELECT score_left, score_right, choice FROM answers ORDER BY id").fetchall()
    assert scores == [(8, 10, None), (3, 5, None)]
