"""The ratings database: SQLite in WAL mode inside the study dir.

Why SQLite: it ships with Python, one file sits beside the manifest, and with WAL plus
``synchronous=FULL`` a transaction the server committed survives the process being killed (the
server answers a rater only after the commit, so an answer the page saw accepted is on disk).
Concurrent raters are threads of one server; each request opens its own connection and writes in
a ``BEGIN IMMEDIATE`` transaction, so two answers never interleave (``busy_timeout`` queues them).

Tables: ``study`` (one row: the manifest's id and digest), ``items`` (from the manifest),
``raters``, ``assignments`` (what each rater sees in which order, with the system shown on the
left), ``answers`` (one row per question, with the choice as seen on screen, the system it means,
and timestamps). Replays are refused twice over: the server checks, and UNIQUE(assignment_id,
question) makes a second write fail inside the transaction.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

DATABASE = "ratings.sqlite"
CHOICES = ("left", "right", "same")
SCORE_RANGE = (1, 10)
MAX_NAME = 64
SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    id TEXT PRIMARY KEY, manifest_sha256 TEXT NOT NULL, mode TEXT NOT NULL, settings TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('pair', 'identical')), comparison_id TEXT NOT NULL,
    system_a TEXT NOT NULL, system_b TEXT NOT NULL, prompt TEXT NOT NULL, seed TEXT NOT NULL,
    media_a TEXT NOT NULL, media_b TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, key TEXT NOT NULL UNIQUE, seed INTEGER NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    id TEXT PRIMARY KEY, rater_id INTEGER NOT NULL REFERENCES raters(id), position INTEGER NOT NULL,
    item_id TEXT NOT NULL REFERENCES items(id), kind TEXT NOT NULL CHECK (kind IN ('first', 'repeat', 'identical')),
    repeat_of TEXT REFERENCES assignments(id), left_system TEXT NOT NULL CHECK (left_system IN ('a', 'b')),
    shown_at REAL, UNIQUE (rater_id, position));
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY, assignment_id TEXT NOT NULL REFERENCES assignments(id),
    rater_id INTEGER NOT NULL REFERENCES raters(id), item_id TEXT NOT NULL REFERENCES items(id),
    question TEXT NOT NULL, choice TEXT CHECK (choice IN ('left', 'right', 'same')),
    preferred TEXT CHECK (preferred IN ('a', 'b', 'same')), left_system TEXT NOT NULL,
    score_left INTEGER, score_right INTEGER, shown_at REAL, answered_at REAL NOT NULL, elapsed_ms INTEGER,
    UNIQUE (assignment_id, question));
CREATE INDEX IF NOT EXISTS assignments_by_rater ON assignments (rater_id, position);
"""


class Refused(Exception):
    """A request the store will not carry out: an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE: take the write lock up front, so a check-then-write cannot race another writer."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def manifest_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


class Store:
    """The study's database; one short-lived connection per call (safe from any thread)."""

    def __init__(self, study_dir: Path, manifest: dict[str, Any]):
        self.path = Path(study_dir) / DATABASE
        self.manifest = manifest
        self.settings = manifest["settings"]
        self.questions = [q["id"] for q in self.settings["questions"]]
        self.items = {item["id"]: item for item in manifest["items"]}
        with self.connection() as db:
            db.executescript(SCHEMA)
            row = db.execute("SELECT id, manifest_sha256 FROM study").fetchone()
            if row is None:
                with transaction(db):
                    db.execute("INSERT INTO study VALUES (?, ?, ?, ?, ?)",
                               (manifest["study_id"], manifest_digest(manifest), self.settings["mode"],
                                json.dumps(self.settings), time.time()))
                    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                        (i["id"], i["kind"], i["comparison"], *self.systems_of(i), i["prompt"], str(i["seed"]),
                         i["a"], i["b"]) for i in manifest["items"]])
            elif row["id"] != manifest["study_id"]:
                raise ValueError(f"{self.path} belongs to study {row['id']}, the manifest beside it to "
                                 f"{manifest['study_id']}: keep each study's database with its manifest")

    def systems_of(self, item: dict) -> tuple[str, str]:
        comparison = next(c for c in self.manifest["comparisons"] if c["id"] == item["comparison"])
        return comparison["a"], comparison["b"]

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        db = connect(self.path)
        try:
            yield db
        finally:
            db.close()

    # -- raters and their assignments --------------------------------------------------------------
    def rater(self, name: str) -> dict[str, Any]:
        """The rater of this name, created with their assignments on first sight (a returning rater
        typing the same name continues where they stopped, from any browser)."""
        name = clean_name(name)
        with self.connection() as db, transaction(db):
            row = db.execute("SELECT * FROM raters WHERE name = ? COLLATE NOCASE", (name,)).fetchone()
            if row is None:
                seed = rater_seed(self.manifest["study_id"], name, int(self.settings["seed"]))
                cursor = db.execute("INSERT INTO raters (name, key, seed, created_at) VALUES (?, ?, ?, ?)",
                                    (name, secrets.token_urlsafe(24), seed, time.time()))
                counts = dict(db.execute("SELECT item_id, COUNT(*) FROM assignments WHERE kind = 'first' "
                                         "GROUP BY item_id").fetchall())
                rows = plan_assignments(self.manifest, seed, counts)
                db.executemany("INSERT INTO assignments (id, rater_id, position, item_id, kind, repeat_of, "
                               "left_system) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(r["id"], cursor.lastrowid, r["position"], r["item_id"], r["kind"], r["repeat_of"],
                                 r["left_system"]) for r in rows])
                row = db.execute("SELECT * FROM raters WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return dict(row)

    def rater_by_key(self, key: str | None) -> dict[str, Any] | None:
        if not key or len(key) > 100:
            return None
        with self.connection() as db:
            row = db.execute("SELECT * FROM raters WHERE key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def progress(self, rater_id: int) -> tuple[int, int]:
        with self.connection() as db:
            total = db.execute("SELECT COUNT(*) FROM assignments WHERE rater_id = ?", (rater_id,)).fetchone()[0]
            done = db.execute("SELECT COUNT(DISTINCT assignment_id) FROM answers WHERE rater_id = ?",
                              (rater_id,)).fetchone()[0]
        return int(done), int(total)

    def next_assignment(self, rater_id: int) -> dict[str, Any] | None:
        """The rater's first unanswered assignment (stamped with when it was first shown)."""
        with self.connection() as db:
            row = db.execute(
                "SELECT * FROM assignments a WHERE rater_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM answers WHERE assignment_id = a.id) ORDER BY position LIMIT 1", (rater_id,)).fetchone()
            if row is None:
                return None
            if row["shown_at"] is None:
                db.execute("UPDATE assignments SET shown_at = ? WHERE id = ? AND shown_at IS NULL", (time.time(), row["id"]))
        return dict(row)

    def assignment(self, assignment_id: str) -> dict[str, Any] | None:
        if not isinstance(assignment_id, str) or len(assignment_id) > 64:
            return None
        with self.connection() as db:
            row = db.execute("SELECT * FROM assignments WHERE id = ?", (assignment_id,)).fetchone()
        return dict(row) if row else None

    def media_for(self, assignment: dict[str, Any], side: str) -> str:
        """The manifest media id shown on ``side`` of an assignment."""
        item = self.items[assignment["item_id"]]
        system_side = assignment["left_system"] if side == "left" else other(assignment["left_system"])
        return item[system_side]

    # -- answers -----------------------------------------------------------------------------------
    def answer(self, rater: dict[str, Any], payload: Any) -> dict[str, Any]:
        """Validate and record one assignment's answers; Refused (nothing written) when invalid."""
        if not isinstance(payload, dict):
            raise Refused(400, "expected a JSON object")
        assignment_id, answers = payload.get("assignment"), payload.get("answers")
        elapsed = payload.get("elapsed_ms")
        if elapsed is not None and (not isinstance(elapsed, int) or isinstance(elapsed, bool)
                                    or not 0 <= elapsed < 10 ** 9):
            raise Refused(400, "elapsed_ms must be a non-negative integer")
        assignment = self.assignment(assignment_id) if isinstance(assignment_id, str) else None
        if assignment is None:
            raise Refused(404, "unknown item")
        if assignment["rater_id"] != rater["id"]:
            raise Refused(403, "this item belongs to another rater")
        rows = self.answer_rows(assignment, answers)
        now = time.time()
        with self.connection() as db:
            try:
                with transaction(db):
                    if db.execute("SELECT 1 FROM answers WHERE assignment_id = ?", (assignment["id"],)).fetchone():
                        raise Refused(409, "already answered")
                    current = db.execute(
                        "SELECT id FROM assignments a WHERE rater_id = ? AND NOT EXISTS "
                        "(SELECT 1 FROM answers WHERE assignment_id = a.id) ORDER BY position LIMIT 1",
                        (rater["id"],)).fetchone()
                    if current is None or current["id"] != assignment["id"]:
                        raise Refused(409, "not the current item: reload the page")
                    db.executemany(
                        "INSERT INTO answers (assignment_id, rater_id, item_id, question, choice, preferred, "
                        "left_system, score_left, score_right, shown_at, answered_at, elapsed_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(assignment["id"], rater["id"], assignment["item_id"], question, choice, preferred,
                          assignment["left_system"], left, right, assignment["shown_at"], now, elapsed)
                         for question, choice, preferred, left, right in rows])
            except sqlite3.IntegrityError:  # a concurrent duplicate slipped past the check
                raise Refused(409, "already answered") from None
        done, total = self.progress(rater["id"])
        return {"ok": True, "answered": done, "total": total}

    def answer_rows(self, assignment: dict[str, Any], answers: Any) -> list[tuple]:
        if not isinstance(answers, dict) or set(answers) != set(self.questions):
            raise Refused(400, f"answers must give exactly the questions {self.questions}")
        left_system = assignment["left_system"]
        rows = []
        for question in self.questions:
            value = answers[question]
            if self.settings["mode"] == "pairwise":
                if value not in CHOICES:
                    raise Refused(400, f"{question}: expected one of {', '.join(CHOICES)}")
                preferred = "same" if value == "same" else (left_system if value == "left" else other(left_system))
                rows.append((question, value, preferred, None, None))
            else:
                low, high = SCORE_RANGE
                if not isinstance(value, dict) or set(value) != {"left", "right"} or not all(
                        isinstance(value[s], int) and not isinstance(value[s], bool) and low <= value[s] <= high
                        for s in ("left", "right")):
                    raise Refused(400, f"{question}: expected {{left: {low}-{high}, right: {low}-{high}}}")
                rows.append((question, None, None, value["left"], value["right"]))
        return rows

    # -- reading everything back (analysis) --------------------------------------------------------
    def table(self, name: str) -> list[dict[str, Any]]:
        if name not in ("raters", "assignments", "answers", "items", "study"):
            raise ValueError(name)
        with self.connection() as db:
            return [dict(r) for r in db.execute(f"SELECT * FROM {name}").fetchall()]  # noqa: S608 - fixed names


def other(side: str) -> str:
    return "b" if side == "a" else "a"


def clean_name(name: Any) -> str:
    if not isinstance(name, str):
        raise Refused(400, "name must be text")
    cleaned = " ".join(unicodedata.normalize("NFC", name).split())
    if not cleaned or len(cleaned) > MAX_NAME or not cleaned.isprintable():
        raise Refused(400, f"name must be 1-{MAX_NAME} printable characters")
    return cleaned


def rater_seed(study_id: str, name: str, study_seed: int) -> int:
    """Each rater's own order, reproducible from the study and the name."""
    digest = hashlib.sha256(f"{study_id}\0{study_seed}\0{name.casefold()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def plan_assignments(manifest: dict[str, Any], seed: int, counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One rater's sequence: pair items in a seeded order (capped at items_per_rater, least-rated
    items first so raters spread over the study), identical pairs at random places, and
    ``repeats`` items shown again later with sides swapped."""
    settings = manifest["settings"]
    rng = np.random.default_rng(seed)
    pairs = [i["id"] for i in manifest["items"] if i["kind"] == "pair"]
    identical = [i["id"] for i in manifest["items"] if i["kind"] == "identical"]
    order = [pairs[k] for k in rng.permutation(len(pairs))]
    cap = settings.get("items_per_rater")
    if cap is not None and cap < len(order):
        counts = counts or {}
        ranked = sorted(range(len(order)), key=lambda k: (counts.get(order[k], 0), k))  # stable: seeded order breaks ties
        order = [order[k] for k in sorted(ranked[:cap])]
    sequence: list[dict[str, Any]] = [{"item_id": i, "kind": "first", "repeat_of": None,
                                       "left_system": "a" if rng.random() < 0.5 else "b"} for i in order]
    for item_id in identical:
        sequence.insert(int(rng.integers(0, len(sequence) + 1)), {
            "item_id": item_id, "kind": "identical", "repeat_of": None, "left_system": "a" if rng.random() < 0.5 else "b"})
    for entry in sequence:
        entry["id"] = secrets.token_urlsafe(12)  # opaque: the page names items by these only
    firsts = [k for k, e in enumerate(sequence) if e["kind"] == "first"]
    repeats = min(int(settings.get("repeats", 0)), len(firsts))
    originals = sorted(rng.choice(firsts[: max(repeats, (len(firsts) + 1) // 2)], size=repeats, replace=False)) \
        if repeats else []
    for original in reversed(originals):
        # Shown again at least a few items later, sides swapped: agreeing with oneself must not be
        # the same key press on the same screen.
        source = sequence[original]
        low = min(len(sequence), original + 4)
        position = int(rng.integers(low, len(sequence) + 1))
        sequence.insert(position, {"id": secrets.token_urlsafe(12), "item_id": source["item_id"], "kind": "repeat",
                                   "repeat_of": source["id"], "left_system": other(source["left_system"])})
    for position, entry in enumerate(sequence):
        entry["position"] = position
    return sequence
