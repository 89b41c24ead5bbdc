"""A rating study from evaluations the project already wrote: systems, comparisons, items, manifest.

A *system* is one evaluation directory (``metrics.json`` plus its videos): a run's ``eval_base`` or
``eval``, a sweep job's, or any directory of ``python -m t2v_exp.evaluate``. Systems that show the
same videos byte for byte (the base of every job of one family in a sweep) are one system, so the
base is rated once and the analysis can link the fine-tuned models through it. An *item* is one
(prompt, seed) of one comparison (two systems), shown as two videos; identical-pair items (the
same file on both sides) catch raters who favour a screen side.

The study directory holds ``manifest.json`` (systems, comparisons, items, and for each video file its
absolute path, size and SHA-256) and the SQLite database (``store.py``). The server serves files
from the manifest only and checks the digests before it starts, so a file replaced after the
study was built is refused instead of being shown under the old label.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
STUDY_SUBDIR = "rating"  # a sweep's or run's study lives in <dir>/rating unless study_dir= says otherwise
MODES = ("pairwise", "score")
PAIRS = ("base", "all")
DEFAULT_QUESTIONS = ({"id": "overall", "text": "Which video is better overall?"},)
VIDEO_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/mp4", ".mkv": "video/webm"}
SHOWN = 3  # differing prompts/seeds named in an error line before "... (N more)"


class StudyError(ValueError):
    """The evaluations cannot make a study (the message is one line naming what is wrong)."""


@dataclass
class Evaluation:
    """One evaluation directory read from its metrics.json: (prompt, seed) -> video file."""

    directory: Path
    label: str
    role: str  # base | fine-tuned | eval
    videos: dict[tuple[str, Any], Path] = field(default_factory=dict)


@dataclass
class Settings:
    mode: str = "pairwise"
    questions: list[dict[str, str]] = field(default_factory=lambda: [dict(q) for q in DEFAULT_QUESTIONS])
    pairs: str = "base"
    repeats: int = 2  # items each rater sees twice (sides swapped): consistency
    identical: int = 2  # identical-pair items: side bias
    items_per_rater: int | None = None  # None: every item
    seed: int = 0

    def check(self) -> None:
        if self.mode not in MODES:
            raise StudyError(f"mode={self.mode!r}: expected one of {', '.join(MODES)} (mode=score for 1-10 scores)")
        if self.pairs not in PAIRS:
            raise StudyError(f"pairs={self.pairs!r}: expected base (each model vs its base) or all (every pair)")
        for name in ("repeats", "identical"):
            if int(getattr(self, name)) < 0:
                raise StudyError(f"{name}={getattr(self, name)} must be >= 0")
        if self.items_per_rater is not None and int(self.items_per_rater) < 1:
            raise StudyError(f"items_per_rater={self.items_per_rater} must be >= 1 (or null for every item)")
        if not self.questions:
            raise StudyError("questions=[] : a study needs at least one question")
        ids = [q["id"] for q in self.questions]
        if len(set(ids)) != len(ids) or not all(i and i.replace("_", "").isalnum() for i in ids):
            raise StudyError(f"questions: ids must be unique words (letters, digits, _), got {ids}")


def normalise_questions(raw: Any) -> list[dict[str, str]]:
    """``[overall, motion]`` or ``[{id: motion, text: "Which moves more naturally?"}]``."""
    texts = {"overall": "Which video is better overall?",
             "alignment": "Which video matches the prompt better?",
             "motion": "Which video moves more naturally?"}
    questions = []
    for entry in raw or []:
        if isinstance(entry, str):
            questions.append({"id": entry, "text": texts.get(entry, entry.replace("_", " ").capitalize() + "?")})
        elif isinstance(entry, dict) and entry.get("id"):
            questions.append({"id": str(entry["id"]), "text": str(entry.get("text") or texts.get(entry["id"], entry["id"]))})
        else:
            raise StudyError(f"questions: {entry!r} is neither a name nor a mapping with an id")
    return questions


# -- reading evaluations ---------------------------------------------------------------------------
def read_evaluation(directory: Path, label: str, role: str) -> Evaluation:
    directory = Path(directory).expanduser()
    path = directory / "metrics.json"
    if not path.is_file():
        raise StudyError(f"{directory}: no metrics.json (pass an evaluation dir: a run's eval/ or eval_base/, "
                         "or an output dir of python -m t2v_exp.evaluate)")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"{path}: unreadable ({exc})") from None
    video_dir = Path(report.get("video_dir") or directory / "videos")
    if not video_dir.is_dir():
        video_dir = directory / "videos"  # the evaluation dir was moved: its videos moved with it
    found = Evaluation(directory, label, role)
    for video in report.get("videos") or []:
        if not isinstance(video, dict) or not video.get("file"):
            continue
        # Pair by (prompt, seed) like the evaluator, never by file order; a folder of videos
        # without seeds pairs by file name.
        key = (str(video.get("prompt")), int(video["seed"]) if video.get("seed") is not None else video["file"])
        if key in found.videos:
            raise StudyError(f"{path}: two videos share prompt {key[0]!r} and seed {key[1]!r}; they cannot be paired")
        file = video_dir / str(video["file"])
        if not file.is_file():
            raise StudyError(f"{path}: video {file} is missing")
        found.videos[key] = file
    if not found.videos:
        raise StudyError(f"{path}: lists no videos")
    return found


def check_same_plan(evaluations: list[Evaluation]) -> None:
    """Every evaluation shows the same (prompt, seed) list; else one line naming what differs."""
    first = evaluations[0]
    for other in evaluations[1:]:
        if other.videos.keys() == first.videos.keys():
            continue
        only_a, only_b = sorted(first.videos.keys() - other.videos.keys(), key=str), \
            sorted(other.videos.keys() - first.videos.keys(), key=str)
        prompts_a, prompts_b = {k[0] for k in first.videos}, {k[0] for k in other.videos}
        what = "prompts" if prompts_a != prompts_b else "seeds"
        if what == "prompts":
            shown_a, shown_b = sorted(prompts_a - prompts_b), sorted(prompts_b - prompts_a)
        else:
            shown_a, shown_b = [f"{p!r} seed {s}" for p, s in only_a], [f"{p!r} seed {s}" for p, s in only_b]
        raise StudyError(
            f"{first.directory} and {other.directory} differ in {what}: only in the first {_few(shown_a)}; "
            f"only in the second {_few(shown_b)} (evaluate both with the same prompts, num_videos, "
            "seeds_per_prompt and seed)")


def _few(values: list) -> str:
    if not values:
        return "none"
    shown = ", ".join(repr(v) if not isinstance(v, str) or not v.startswith("'") else v for v in values[:SHOWN])
    return shown + (f" ... ({len(values) - SHOWN} more)" if len(values) > SHOWN else "")


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """Job dirs of a Hydra sweep (``<job number>_<model>_<dataset>``) that have both evaluations."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise StudyError(f"sweep_dir={sweep_dir} is not a directory")
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.split("_", 1)[0].isdigit()),
                  key=lambda d: (int(d.name.split("_", 1)[0]), d.name))
    usable = []
    for job in jobs:
        missing = [name for name in ("eval_base", "eval") if not (job / name / "metrics.json").is_file()]
        if missing:
            log.warning("skipping job %s: no %s/metrics.json (the job failed or did not evaluate)",
                        job.name, " or ".join(missing))
        else:
            usable.append(job)
    if not usable:
        raise StudyError(f"sweep_dir={sweep_dir}: no job dir with both eval_base/metrics.json and eval/metrics.json")
    return usable


def sources(*, run_dir: str | None = None, sweep_dir: str | None = None, eval_dirs: list[str] | None = None
            ) -> tuple[dict[str, str], list[Evaluation]]:
    """The evaluations named by exactly one of run_dir= / sweep_dir= / eval_dirs=."""
    given = [name for name, value in (("run_dir", run_dir), ("sweep_dir", sweep_dir), ("eval_dirs", eval_dirs))
             if value]
    if len(given) != 1:
        raise StudyError("pass exactly one of run_dir=, sweep_dir= or eval_dirs=[a,b,...] "
                         f"(got {', '.join(given) or 'none'}); or study_dir= of an existing study")
    if run_dir:
        run = Path(run_dir).expanduser()
        return ({"kind": "run", "path": str(run.resolve())},
                [read_evaluation(run / "eval_base", "base", "base"),
                 read_evaluation(run / "eval", "fine-tuned", "fine-tuned")])
    if sweep_dir:
        found = []
        for job in sweep_jobs(Path(sweep_dir)):
            found += [read_evaluation(job / "eval_base", f"{job.name} (base)", "base"),
                      read_evaluation(job / "eval", job.name, "fine-tuned")]
        return {"kind": "sweep", "path": str(Path(sweep_dir).expanduser().resolve())}, found
    dirs = [Path(d).expanduser() for d in eval_dirs]
    if len(dirs) < 2:
        raise StudyError(f"eval_dirs needs two or more evaluation dirs, got {len(dirs)}")
    labels = unique_labels(dirs)
    return ({"kind": "eval_dirs", "path": None},
            [read_evaluation(d, label, "eval") for d, label in zip(dirs, labels, strict=True)])


def unique_labels(dirs: list[Path]) -> list[str]:
    """The shortest path tails that tell the dirs apart (``run1/eval`` vs ``run2/eval``)."""
    resolved = [d.resolve() for d in dirs]
    for depth in range(1, max(len(d.parts) for d in resolved) + 1):
        labels = ["/".join(d.parts[-depth:]) for d in resolved]
        if len(set(labels)) == len(labels):
            return labels
    raise StudyError(f"eval_dirs lists the same directory twice: {[str(d) for d in dirs]}")


# -- building --------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(source: dict[str, str], evaluations: list[Evaluation], settings: Settings) -> dict[str, Any]:
    settings.check()
    media: dict[str, dict[str, Any]] = {}  # sha256 -> media entry: one entry per distinct file content
    paths: dict[Path, str] = {}

    def media_id(path: Path) -> str:
        if path not in paths:
            digest = sha256_of(path)
            if digest not in media:
                media[digest] = {"id": f"m{len(media)}", "path": str(path.resolve()), "sha256": digest,
                                 "bytes": path.stat().st_size, "type": VIDEO_TYPES.get(path.suffix.lower(), "video/mp4")}
            paths[path] = media[digest]["id"]
        return paths[path]

    def ordered(evaluation: Evaluation) -> list[tuple]:
        return sorted(evaluation.videos, key=lambda k: (k[0], str(k[1])))

    # Systems showing the same files for the same (prompt, seed)s (every job's copy of one base
    # model) are one system.
    systems: list[dict[str, Any]] = []
    by_content: dict[tuple, str] = {}
    system_of: list[str] = []
    evaluation_of: dict[str, Evaluation] = {}
    for number, evaluation in enumerate(evaluations, 1):
        log.info("hashing videos of %s (%d/%d)", evaluation.directory, number, len(evaluations))
        content = tuple((key, media_id(evaluation.videos[key])) for key in ordered(evaluation))
        if content not in by_content:
            by_content[content] = f"s{len(systems)}"
            evaluation_of[by_content[content]] = evaluation
            systems.append({"id": by_content[content], "label": evaluation.label, "role": evaluation.role,
                            "eval_dirs": [str(evaluation.directory.resolve())]})
        else:
            next(s for s in systems if s["id"] == by_content[content])["eval_dirs"].append(
                str(evaluation.directory.resolve()))
        system_of.append(by_content[content])
    if len(systems) < 2:
        raise StudyError("every evaluation shows the same video files: there is nothing to compare")
    comparisons = comparison_pairs(evaluations, system_of, systems, settings.pairs)
    items: list[dict[str, Any]] = []
    for comparison in comparisons:
        # Only the two sides of a comparison must share prompts and seeds (a sweep's jobs may
        # each have their own dataset when every model is compared with its own base).
        first, second = evaluation_of[comparison["a"]], evaluation_of[comparison["b"]]
        check_same_plan([first, second])
        for key in ordered(first):
            items.append({"id": f"i{len(items)}", "kind": "pair", "comparison": comparison["id"], "prompt": key[0],
                          "seed": key[1], "a": paths[first.videos[key]], "b": paths[second.videos[key]]})
    rng = random.Random(settings.seed)
    pair_items = list(items)
    for _ in range(min(settings.identical, len(pair_items))):
        # An identical pair: one side's video on both sides. Which side's is random, so neither
        # system's look tells the rater an identical item apart.
        source_item = rng.choice(pair_items)
        shown = source_item[rng.choice("ab")]
        items.append({"id": f"i{len(items)}", "kind": "identical", "comparison": source_item["comparison"],
                      "prompt": source_item["prompt"], "seed": source_item["seed"], "a": shown, "b": shown})
    return {"format": FORMAT, "study_id": secrets.token_hex(8), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": source, "systems": systems, "comparisons": comparisons,
            "settings": {"mode": settings.mode, "questions": settings.questions, "pairs": settings.pairs,
                         "repeats": int(settings.repeats), "identical": int(settings.identical),
                         "items_per_rater": None if settings.items_per_rater is None else int(settings.items_per_rater),
                         "seed": int(settings.seed)},
            "media": sorted(media.values(), key=lambda m: int(m["id"][1:])), "items": items}


def comparison_pairs(evaluations: list[Evaluation], system_of: list[str], systems: list[dict],
                     pairs: str) -> list[dict[str, str]]:
    """(a, b) system pairs: a is the reference (the base, or the earlier dir), b the challenger.

    pairs=base: a run or sweep compares each fine-tuned model with its own base; eval_dirs compare
    each dir with the first. pairs=all: every pair of distinct systems (a sweep's bases left out:
    "which fine-tuned model is better")."""
    found: list[tuple[str, str]] = []
    if pairs == "base":
        if any(e.role == "base" for e in evaluations):
            for i, evaluation in enumerate(evaluations):
                if evaluation.role == "fine-tuned":
                    base_index = i - 1  # sources() lists each job's base right before its fine-tuned eval
                    found.append((system_of[base_index], system_of[i]))
        else:
            found = [(system_of[0], s) for s in system_of[1:]]
    else:
        roles = {s["id"]: s["role"] for s in systems}
        candidates = [s["id"] for s in systems if roles[s["id"]] != "base" or len(systems) == 2]
        if len(candidates) < 2:  # a run: its two systems are base and fine-tuned
            candidates = [s["id"] for s in systems]
        found = list(itertools.combinations(candidates, 2))
    labels = {s["id"]: s["label"] for s in systems}
    for a, b in found:
        if a == b:  # e.g. a fine-tuning that changed no video: nothing a rater could tell apart
            log.warning("not compared: %s shows the same video files as %s", labels[b], labels[a])
    unique = list(dict.fromkeys((a, b) for a, b in found if a != b))
    if not unique:
        raise StudyError(f"pairs={pairs}: no two different systems to compare")
    return [{"id": f"c{i}", "a": a, "b": b} for i, (a, b) in enumerate(unique)]


# -- the study directory ---------------------------------------------------------------------------
def default_study_dir(run_dir: str | None, sweep_dir: str | None) -> Path | None:
    base = run_dir or sweep_dir
    return Path(base).expanduser() / STUDY_SUBDIR if base else None


def load_manifest(study_dir: Path) -> dict[str, Any]:
    path = Path(study_dir).expanduser() / MANIFEST
    if not path.is_file():
        raise StudyError(f"study_dir={study_dir}: no {MANIFEST} (build one with sweep_dir=, run_dir= or eval_dirs=)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"{path}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise StudyError(f"{path}: manifest format {manifest.get('format')!r}, this version reads {FORMAT}")
    return manifest


def write_manifest(study_dir: Path, manifest: dict[str, Any]) -> Path:
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)  # a reader never sees half a manifest
    return path


def same_study(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Rebuilding from the same sources gives the same systems, items and files (ids are random)."""
    def shape(m: dict) -> Any:
        media = {x["id"]: x["sha256"] for x in m["media"]}
        return ([(s["label"], s["eval_dirs"]) for s in m["systems"]], m["comparisons"],
                [(i["kind"], i["comparison"], i["prompt"], i["seed"], media[i["a"]], media[i["b"]]) for i in m["items"]],
                m["settings"])
    return shape(old) == shape(new)


def verify_media(manifest: dict[str, Any]) -> None:
    """Every file still exists with its recorded size and digest; else one line naming the first."""
    for number, entry in enumerate(manifest["media"], 1):
        path = Path(entry["path"])
        if not path.is_file():
            raise StudyError(f"video {path} of the study is gone ({number} of {len(manifest['media'])} files checked)")
        if path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            raise StudyError(f"video {path} changed since the study was built (its SHA-256 differs): "
                             "build a new study in another study_dir=")


def prepare(study_dir: Path | None, *, run_dir: str | None = None, sweep_dir: str | None = None,
            eval_dirs: list[str] | None = None, settings: Settings | None = None) -> tuple[Path, dict[str, Any]]:
    """The study dir and its manifest: an existing study when only study_dir= is given or when the
    sources rebuild to the same study, a new one otherwise (refused over a different existing one)."""
    study_dir = Path(study_dir).expanduser() if study_dir else default_study_dir(run_dir, sweep_dir)
    if not (run_dir or sweep_dir or eval_dirs):
        if study_dir is None:
            raise StudyError("pass sweep_dir=, run_dir=, eval_dirs=[a,b] (a new or resumed study) or study_dir= "
                             "(an existing study)")
        return study_dir, load_manifest(study_dir)
    if study_dir is None:
        raise StudyError("eval_dirs= needs study_dir= too (where the manifest and the ratings go)")
    source, evaluations = sources(run_dir=run_dir, sweep_dir=sweep_dir, eval_dirs=eval_dirs)
    manifest = build_manifest(source, evaluations, settings or Settings())
    if (study_dir / MANIFEST).is_file():
        old = load_manifest(study_dir)
        if not same_study(old, manifest):
            raise StudyError(f"study_dir={study_dir} already holds a study of other evaluations or settings; "
                             "pass another study_dir= (or study_dir= alone to resume that one)")
        return study_dir, old
    write_manifest(study_dir, manifest)
    log.info("new study in %s: %d systems, %d comparisons, %d items", study_dir, len(manifest["systems"]),
             len(manifest["comparisons"]), len(manifest["items"]))
    return study_dir, manifest
