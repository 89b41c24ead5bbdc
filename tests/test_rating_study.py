"""Rating study: built from a run, a sweep or eval dirs; refusals in one line; the store's
assignments (seeded per rater, repeats, identical pairs) and answer validation with nothing
written on a refusal; concurrent raters lose nothing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest

from t2v_exp.rating.store import Refused, Store, plan_assignments
from t2v_exp.rating.study import Settings, StudyError, prepare, verify_media
from tests.test_rating_fixtures import PROMPTS, make_run, make_sweep, write_clip, write_eval

from .conftest import REPO


def answer_count(store: Store) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def test_run_study_pairs_base_and_finetuned_by_prompt_and_seed(tmp_path):
    run = make_run(tmp_path, seeds_per_prompt=2)
    study_dir, manifest = prepare(None, run_dir=str(run))
    assert study_dir == run / "rating" and (study_dir / "manifest.json").is_file()
    assert [s["label"] for s in manifest["systems"]] == ["base", "fine-tuned"]
    assert manifest["comparisons"] == [{"id": "c0", "a": "s0", "b": "s1"}]
    pairs = [i for i in manifest["items"] if i["kind"] == "pair"]
    identical = [i for i in manifest["items"] if i["kind"] == "identical"]
    assert len(pairs) == len(PROMPTS) * 2 and len(identical) == 2 and all(i["a"] == i["b"] for i in identical)
    media = {m["id"]: m for m in manifest["media"]}
    for item in pairs:  # each side shows the video of the same (prompt, seed)
        for side, folder in (("a", "eval_base"), ("b", "eval")):
            path = media[item[side]]["path"]
            assert f"/{folder}/videos/" in path and path.endswith(f"_seed{item['seed']}.mp4")
    assert all(len(m["sha256"]) == 64 and m["bytes"] > 0 for m in media.values())
    # The same sources rebuild to the same study: it is resumed, not replaced.
    again_dir, again = prepare(None, run_dir=str(run))
    assert again["study_id"] == manifest["study_id"]
    with pytest.raises(StudyError, match="already holds a study"):
        prepare(None, run_dir=str(run), settings=Settings(mode="score"))


def test_sweep_study_merges_identical_bases_and_lists_pairs(tmp_path):
    sweep = make_sweep(tmp_path, jobs=2)
    # A third job training the first family again (another seed): its base is the same files.
    import shutil

    shutil.copytree(sweep / "0_modelscope_tiny_shapes" / "eval_base", sweep / "2_modelscope_tiny_shapes" / "eval_base")
    write_eval(sweep / "2_modelscope_tiny_shapes" / "eval", (10, 10, 250))
    (sweep / "3_broken_job").mkdir()  # a job that died before evaluating: skipped
    _, manifest = prepare(None, sweep_dir=str(sweep))
    labels = {s["id"]: s["label"] for s in manifest["systems"]}
    assert len(manifest["systems"]) == 5  # two bases, three fine-tuned: job 2's base is job 0's
    assert [(labels[c["a"]], labels[c["b"]]) for c in manifest["comparisons"]] == [
        ("0_modelscope_tiny_shapes (base)", "0_modelscope_tiny_shapes"),
        ("1_cogvideox_tiny_shapes (base)", "1_cogvideox_tiny_shapes"),
        ("0_modelscope_tiny_shapes (base)", "2_modelscope_tiny_shapes")]
    _, every = prepare(tmp_path / "all", sweep_dir=str(sweep), settings=Settings(pairs="all"))
    assert len(every["comparisons"]) == 3  # the three fine-tuned models, pairwise


def test_sweep_jobs_on_different_prompts_compare_with_their_own_bases_only(tmp_path):
    sweep = make_sweep(tmp_path, jobs=1)
    other = sweep / "1_cogvideox_tiny_shapes"
    write_eval(other / "eval_base", (250, 250, 250), prompts=("a white star moving up",))
    write_eval(other / "eval", (0, 0, 250), prompts=("a white star moving up",))
    _, manifest = prepare(None, sweep_dir=str(sweep))
    assert len(manifest["comparisons"]) == 2
    assert sum(i["prompt"] == "a white star moving up" for i in manifest["items"] if i["kind"] == "pair") == 1
    with pytest.raises(StudyError, match="differ in prompts"):
        prepare(tmp_path / "all", sweep_dir=str(sweep), settings=Settings(pairs="all"))


def test_eval_dirs_that_differ_are_refused_in_one_line(tmp_path):
    a = write_eval(tmp_path / "a" / "eval", (200, 0, 0))
    b = write_eval(tmp_path / "b" / "eval", (0, 200, 0), prompts=PROMPTS[:3] + ("a purple star moving up",))
    with pytest.raises(StudyError) as refused:
        prepare(tmp_path / "study", eval_dirs=[str(a), str(b)])
    message = str(refused.value)
    assert "\n" not in message and "differ in prompts" in message
    assert "a yellow circle moving down" in message and "a purple star moving up" in message
    c = write_eval(tmp_path / "c" / "eval", (0, 0, 200), seeds_per_prompt=2)
    with pytest.raises(StudyError, match="differ in seeds"):
        prepare(tmp_path / "study", eval_dirs=[str(a), str(c)])
    with pytest.raises(StudyError, match="no metrics.json"):
        prepare(tmp_path / "study", eval_dirs=[str(a), str(tmp_path)])
    with pytest.raises(StudyError, match="exactly one of"):
        prepare(tmp_path / "study", run_dir=str(a), eval_dirs=[str(a), str(c)])
    study_dir, manifest = prepare(tmp_path / "study", eval_dirs=[str(a), str(write_eval(tmp_path / "d" / "eval", (9, 9, 9)))])
    assert [s["label"] for s in manifest["systems"]] == ["a/eval", "d/eval"]


def test_a_changed_video_is_refused_before_serving(tmp_path):
    run = make_run(tmp_path)
    _, manifest = prepare(None, run_dir=str(run))
    verify_media(manifest)
    victim = sorted((run / "eval" / "videos").glob("*.mp4"))[0]
    write_clip(victim, (255, 255, 255), shift=9)
    with pytest.raises(StudyError, match="changed since the study was built"):
        verify_media(manifest)


def test_assignments_are_seeded_per_rater_with_repeats_and_identical_pairs(tmp_path):
    _, manifest = prepare(None, run_dir=str(make_run(tmp_path, seeds_per_prompt=3)))
    first = plan_assignments(manifest, seed=1)
    assert [a["item_id"] for a in first] == [a["item_id"] for a in plan_assignments(manifest, seed=1)]
    other = plan_assignments(manifest, seed=2)
    assert [a["item_id"] for a in first] != [a["item_id"] for a in other]
    kinds = [a["kind"] for a in first]
    assert kinds.count("first") == 12 and kinds.count("identical") == 2 and kinds.count("repeat") == 2
    by_id = {a["id"]: a for a in first}
    for repeat in (a for a in first if a["kind"] == "repeat"):
        original = by_id[repeat["repeat_of"]]
        assert original["item_id"] == repeat["item_id"] and original["position"] < repeat["position"]
        assert original["left_system"] != repeat["left_system"]  # shown again with the sides swapped
    sides = [a["left_system"] for a in first if a["kind"] == "first"]
    assert 0 < sides.count("a") < len(sides)
    manifest["settings"]["items_per_rater"] = 5
    capped = plan_assignments(manifest, seed=3, counts={})
    assert sum(a["kind"] == "first" for a in capped) == 5


def test_answers_are_validated_and_a_refusal_writes_nothing(tmp_path):
    study_dir, manifest = prepare(None, run_dir=str(make_run(tmp_path)),
                                  settings=Settings(questions=[{"id": "overall", "text": "?"},
                                                               {"id": "motion", "text": "?"}]))
    store = Store(study_dir, manifest)
    ann, bob = store.rater("Ann"), store.rater("Bob")
    assert store.rater(" Ann ")["key"] == ann["key"] == store.rater("ANN")["key"]  # the same rater continues
    current = store.next_assignment(ann["id"])
    good = {"assignment": current["id"], "answers": {"overall": "left", "motion": "same"}}
    cases = [
        ({"assignment": "doesnotexist", "answers": good["answers"]}, 404),
        ({**good, "answers": {"overall": "left"}}, 400),  # a question missing
        ({**good, "answers": {"overall": "left", "motion": "up"}}, 400),
        ({**good, "answers": {"overall": "left", "motion": "same", "extra": "left"}}, 400),
        ({**good, "elapsed_ms": -5}, 400),
        ("not an object", 400),
    ]
    for payload, status in cases:
        with pytest.raises(Refused) as refused:
            store.answer(ann, payload)
        assert refused.value.status == status, payload
    with pytest.raises(Refused) as refused:
        store.answer(bob, good)  # Ann's item, Bob's key
    assert refused.value.status == 403
    later = [a for a in store.table("assignments") if a["rater_id"] == ann["id"] and a["position"] == 3][0]
    with pytest.raises(Refused) as refused:
        store.answer(ann, {**good, "assignment": later["id"]})  # skipping ahead
    assert refused.value.status == 409
    assert answer_count(store) == 0
    assert store.answer(ann, good)["answered"] == 1
    with pytest.raises(Refused) as refused:
        store.answer(ann, good)  # replayed
    assert refused.value.status == 409
    assert answer_count(store) == 2  # one row per question of the one accepted answer
    row = store.table("answers")[0]
    assert row["left_system"] == current["left_system"] and row["answered_at"] >= row["shown_at"] > 0
    assert row["preferred"] == ("a" if row["choice"] == "left" and row["left_system"] == "a" else
                                "b" if row["choice"] == "left" else "same")


def test_concurrent_raters_lose_nothing(tmp_path):
    study_dir, manifest = prepare(None, run_dir=str(make_run(tmp_path, seeds_per_prompt=2)))
    store = Store(study_dir, manifest)
    errors = []

    def rate(name: str) -> None:
        try:
            rater = store.rater(name)
            while (assignment := store.next_assignment(rater["id"])) is not None:
                store.answer(rater, {"assignment": assignment["id"], "answers": {"overall": "left"}})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rate, args=(f"rater {k}",)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    per_rater = len(plan_assignments(manifest, seed=0))
    assert answer_count(store) == 6 * per_rater
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert json.loads((study_dir / "manifest.json").read_text())["study_id"] == manifest["study_id"]


def run_rate(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2v_exp.rate", *args, f"hydra.run.dir={cwd}/hydra"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_entrypoint_refusals_and_analyze(tmp_path):
    a = write_eval(tmp_path / "a" / "eval", (200, 0, 0))
    b = write_eval(tmp_path / "b" / "eval", (0, 200, 0), seeds_per_prompt=2)
    refused = run_rate(f"eval_dirs=[{a},{b}]", f"study_dir={tmp_path / 'study'}", cwd=tmp_path)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "differ in seeds" in errors[0] and "Traceback" not in refused.stderr
    run = make_run(tmp_path)
    exposed = run_rate(f"run_dir={run}", "host=0.0.0.0", "port=0", cwd=tmp_path)
    assert exposed.returncode != 0 and "set token=" in exposed.stderr
    study_dir, manifest = prepare(None, run_dir=str(run))
    from t2v_exp.rating.simulate import rate_study

    rate_study(Store(study_dir, manifest), raters=2, strengths={"s0": 0.0, "s1": 0.5})
    analysed = run_rate("analyze", f"study_dir={study_dir}", "draws=200", cwd=tmp_path)
    assert analysed.returncode == 0, analysed.stderr
    assert "## Human rating study" in analysed.stdout and (study_dir / "results.json").is_file()
