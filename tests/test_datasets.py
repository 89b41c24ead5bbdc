"""Real-data sets on tiny fixtures laid out like the real ones: video_folder, ssv2, ubc_fashion, msrvtt."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from t2v_exp.data.bad_data import TooManyBadSamplesError
from t2v_exp.data.folder import VideoFolderDataset
from t2v_exp.data.public_sets import MSRVTTDataset, SSv2Dataset, UBCFashionDataset, choose_subset
from t2v_exp.data.sources import DatasetLayoutError, Sample
from t2v_exp.engine.batches import WORKER_START

from .conftest import CONF_DIR
from .data_fixtures import (
    GEOMETRY,
    clip_value,
    flat_frames,
    write_clip,
    write_msrvtt,
    write_sidecar_folder,
    write_ssv2,
    write_ubc_fashion,
)


def check_item(item: dict, num_frames: int = 4) -> None:
    assert item["video"].shape == (num_frames, 3, 32, 32) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert isinstance(item["prompt"], str) and item["prompt"] and isinstance(item["key"], str)


# ----------------------------------------------------------------------------- video_folder


def test_video_folder_sidecars_items_are_deterministic(tmp_path):
    write_sidecar_folder(tmp_path / "data", count=3)
    ds = VideoFolderDataset(root=str(tmp_path / "data"), **GEOMETRY)
    assert len(ds) == 3 and ds.captions() == ["clip number 0", "clip number 1", "clip number 2"]
    item = ds[1]
    check_item(item)
    assert item["key"] == "clip1.mp4" and abs(clip_value(item["video"]) - 80) <= 2
    assert torch.equal(ds[1]["video"], item["video"])
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers receive a pickled copy
    assert torch.equal(clone[1]["video"], item["video"])


def test_video_folder_csv_jsonl_and_line_aligned(tmp_path):
    for i in range(3):
        write_clip(tmp_path / "v" / f"{i}.mp4", value=60 + 50 * i)
    (tmp_path / "captions.csv").write_text('video,caption\nv/0.mp4,"a, quoted caption"\nv/1.mp4,second\n')
    csv_ds = VideoFolderDataset(root=str(tmp_path), metadata_file="captions.csv", path_column="video",
                                caption_column="caption", **GEOMETRY)
    assert csv_ds.captions() == ["a, quoted caption", "second"]

    rows = [{"file_name": "v/2.mp4", "text": ["first of two", "second of two"]}, {"file_name": "v/0.mp4", "text": "x"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    jsonl_ds = VideoFolderDataset(root=str(tmp_path), **GEOMETRY)  # metadata.jsonl is found by default
    assert jsonl_ds.samples[0].captions == ["first of two", "second of two"]
    assert jsonl_ds[0]["prompt"] in {"first of two", "second of two"}  # training draws one of the list

    (tmp_path / "prompts.txt").write_text("prompt zero\nprompt two\n")
    (tmp_path / "videos.txt").write_text("v/0.mp4\nv/2.mp4\n")
    lines_ds = VideoFolderDataset(root=str(tmp_path), prompts_file="prompts.txt", videos_file="videos.txt",
                                  **GEOMETRY)
    assert lines_ds.captions() == ["prompt zero", "prompt two"]
    assert abs(clip_value(lines_ds[1]["video"]) - 160) <= 2
    (tmp_path / "videos.txt").write_text("v/0.mp4\n")
    with pytest.raises(ValueError, match="prompts.txt: 2 prompts but 1 lines"):
        VideoFolderDataset(root=str(tmp_path), prompts_file="prompts.txt", videos_file="videos.txt", **GEOMETRY)


def test_video_folder_images_become_still_clips(tmp_path):
    from PIL import Image

    write_sidecar_folder(tmp_path, count=2)
    Image.fromarray(flat_frames(1, 200, 40, 48)[0]).save(tmp_path / "still.png")
    (tmp_path / "still.txt").write_text("a still image")
    without = VideoFolderDataset(root=str(tmp_path), **GEOMETRY)
    assert "a still image" not in without.captions()
    ds = VideoFolderDataset(root=str(tmp_path), allow_images=True, **GEOMETRY)
    index = ds.captions().index("a still image")
    video = ds[index]["video"]
    check_item(ds[index])
    assert torch.equal(video[0], video[-1]) and abs(clip_value(video) - 200) <= 1


def test_video_folder_validation_fraction_splits_disjointly(tmp_path):
    write_sidecar_folder(tmp_path, count=6)
    train = VideoFolderDataset(root=str(tmp_path), validation_fraction=0.5, split="train", **GEOMETRY)
    val = VideoFolderDataset(root=str(tmp_path), validation_fraction=0.5, split="validation", **GEOMETRY)
    assert len(train) + len(val) == 6
    assert not {s.key for s in train.samples} & {s.key for s in val.samples}


def test_dataloader_with_workers(tmp_path):
    write_sidecar_folder(tmp_path, count=4)
    ds = VideoFolderDataset(root=str(tmp_path), **GEOMETRY)
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context=WORKER_START)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["video"].shape == (2, 4, 3, 32, 32)
    assert torch.equal(batches[1]["video"][0], ds[2]["video"])


def test_hydra_instantiate_contract(tmp_path, compose_train):
    from t2v_exp.engine.batches import instantiate_dataset

    write_sidecar_folder(tmp_path / "clips", count=2)
    cfg = compose_train(["dataset=video_folder", f"dataset.root={tmp_path / 'clips'}",
                         f"paths.cache_dir={tmp_path / 'cache'}"])
    ds = instantiate_dataset(cfg.dataset, split="train", report_dir=str(tmp_path / "run"))
    assert len(ds) == 2 and ds.captions() == ["clip number 0", "clip number 1"]
    assert list((tmp_path / "cache" / "index").glob("video_folder-*.jsonl"))
    assert ds[0]["video"].shape[0] == cfg.model.num_frames


@pytest.mark.parametrize("name", ["video_folder", "anime", "ssv2", "ubc_fashion", "msrvtt"])
def test_missing_root_names_key_and_layout(tmp_path, compose_train, name):
    from t2v_exp.engine.batches import instantiate_dataset

    cfg = compose_train([f"dataset={name}", f"dataset.root={tmp_path / 'absent'}"])
    with pytest.raises(Exception) as caught:
        instantiate_dataset(cfg.dataset, split="train", report_dir=None)
    error = caught.value.__cause__ or caught.value  # Hydra wraps constructor errors
    assert isinstance(error, DatasetLayoutError)
    assert "dataset.root" in str(error) and "Expected layout" in str(error) and "absent" in str(error)


def test_every_dataset_yaml_line_says_how_to_override():
    for path in sorted((CONF_DIR / "dataset").glob("*.yaml")):
        for line in path.read_text().splitlines():
            key_line = line and not line.startswith((" ", "#", "-")) and ":" in line
            if key_line and not line.startswith(("defaults", "_target_")):
                assert "#" in line, f"{path.name}: no override comment on {line!r}"


# ----------------------------------------------------------------------------- ssv2


def test_ssv2_official_layout_webm(tmp_path):
    write_ssv2(tmp_path, train=6, validation=2, videos_dir="20bn-something-something-v2")
    common = dict(root=str(tmp_path), videos_dir="20bn-something-something-v2", **GEOMETRY)
    train = SSv2Dataset(subset_size=None, **common)
    assert len(train) == 6
    assert "Putting a cup on a table" in train.captions() and "Pushing a pen from left to right" in train.captions()
    assert {s.extra["class_id"] for s in train.samples} == {"0", "1"}
    item = train[0]
    check_item(item)
    assert abs(clip_value(item["video"]) - 10 * int(item["key"])) <= 3
    val = SSv2Dataset(subset_size=None, split="validation", **common)
    assert sorted(s.key for s in val.samples) == ["7", "8"]
    subset = SSv2Dataset(subset_size=4, **common)
    assert len(subset) == 4 and {s.key for s in subset.samples} <= {s.key for s in train.samples}
    with pytest.raises(DatasetLayoutError, match="dataset.validation_file"):
        SSv2Dataset(subset_size=None, split="validation", validation_file="nope.json", **common)


def test_ssv2_subset_is_seeded_and_class_balanced():
    samples = [Sample(f"{i}.webm", ["c"], str(i), {"template": "rare" if i < 2 else "common"}) for i in range(40)]
    first = choose_subset(samples, 10, seed=0, class_balance=False)
    assert [s.key for s in first] == [s.key for s in choose_subset(samples, 10, seed=0, class_balance=False)]
    assert [s.key for s in first] != [s.key for s in choose_subset(samples, 10, seed=1, class_balance=False)]
    balanced = choose_subset(samples, 4, seed=0, class_balance=True)
    assert [s.extra["template"] for s in balanced].count("rare") == 2  # both rare videos, not ~0.2 of one


# ----------------------------------------------------------------------------- ubc_fashion, msrvtt


@pytest.mark.parametrize("layout", ["folders", "lists"])
def test_ubc_fashion_as_distributed(tmp_path, layout):
    write_ubc_fashion(tmp_path, train=3, test=1, layout=layout)
    train = UBCFashionDataset(root=str(tmp_path), **GEOMETRY)
    assert sorted(train.captions()) == [f"a model in a train dress number {i}" for i in range(3)]
    check_item(train[2])
    test = UBCFashionDataset(root=str(tmp_path), split="validation", **GEOMETRY)
    assert test.captions() == ["a model in a test dress number 0"]


@pytest.mark.parametrize("layout", ["frozen", "original", "clip4clip"])
def test_msrvtt_layouts_are_found_without_settings(tmp_path, layout):
    write_msrvtt(tmp_path, per_split={"train": 2, "validate": 1, "test": 2}, layout=layout)
    for split, keys in (("train", ["video0", "video1"]), ("validation", ["video2"]), ("test", ["video3", "video4"])):
        ds = MSRVTTDataset(root=str(tmp_path), split=split, **GEOMETRY)
        assert [s.key for s in ds.samples] == keys
        check_item(ds[0])


def test_ubc_fashion_list_naming_missing_videos_says_where_they_are(tmp_path):
    write_ubc_fashion(tmp_path, train=3, test=1, layout="lists")
    (tmp_path / "videos").rename(tmp_path / "crawl")  # not a folder the lists are looked up in
    with pytest.raises(TooManyBadSamplesError, match=r"3 of 3 samples are bad.*The videos are in .*crawl") as caught:
        UBCFashionDataset(root=str(tmp_path), **GEOMETRY)
    setting = str(caught.value).split("set dataset.videos_dir=")[1].split(" ")[0]  # pasted as printed
    assert len(UBCFashionDataset(root=str(tmp_path), videos_dir=setting, **GEOMETRY)) == 3


def test_msrvtt_random_caption_per_epoch_and_all_captions(tmp_path):
    write_msrvtt(tmp_path, per_split={"train": 2, "validate": 1})
    ds = MSRVTTDataset(root=str(tmp_path), **GEOMETRY)
    assert len(ds) == 2 and len(ds.all_captions(0)) == 20
    prompts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        prompts.add(ds[0]["prompt"])
    assert len(prompts) > 2 and prompts <= set(ds.all_captions(0))
    ds.set_epoch(3)
    assert ds[0]["prompt"] == ds[0]["prompt"]  # same (seed, epoch, index) -> same caption
    val = MSRVTTDataset(root=str(tmp_path), split="validation", **GEOMETRY)
    assert [s.key for s in val.samples] == ["video2"] and val[0]["prompt"] == "video2 caption 0"


# ----------------------------------------------------------------------------- buckets (optional)


def test_buckets_group_by_shape_and_are_deterministic(tmp_path):
    from t2v_exp.data.buckets import bucket_batches, nearest_bucket
    from t2v_exp.data.video_io import write_video

    buckets = [(8, 32, 32), (8, 24, 40), (4, 24, 40)]
    assert nearest_bucket(360, 640, buckets, [0, 1, 2]) == 1  # wide and long enough: the wide 8-frame bucket
    assert nearest_bucket(360, 640, buckets, [2]) == 2  # wide but short: only the 4-frame one fits
    assert nearest_bucket(300, 300, buckets, [0, 1, 2]) == 0 and nearest_bucket(300, 300, buckets, []) is None
    for i in range(4):
        wide = i % 2 == 0
        path = write_video(tmp_path / f"{i}.mp4", flat_frames(10, 50, 24 if wide else 32, 40 if wide else 32), fps=8)
        path.with_suffix(".txt").write_text(f"video {i}")
    ds = VideoFolderDataset(root=str(tmp_path), **GEOMETRY, buckets=[list(b) for b in buckets])
    ids = ds.bucket_of
    assert ids == [1, 0, 1, 0]  # 10 frames at 8 fps: long enough for the 8-frame buckets
    batches = bucket_batches(ids, 2, seed=0, epoch=0)
    assert sorted(map(sorted, batches)) == [[0, 2], [1, 3]]
    assert batches == bucket_batches(ids, 2, seed=0, epoch=0)


@pytest.mark.parametrize("labels_layout", ["root", "labels"])
def test_ssv2_as_distributed_is_found_without_layout_settings(tmp_path, labels_layout):
    write_ssv2(tmp_path, train=4, validation=2, videos_dir="20bn-something-something-v2", labels_layout=labels_layout)
    train = SSv2Dataset(root=str(tmp_path), subset_size=None, **GEOMETRY)
    assert len(train) == 4
    assert {s.extra["class_id"] for s in train.samples} == {"0", "1"}  # the labels file was found too
    assert all("20bn-something-something-v2" in s.path for s in train.samples)
    val = SSv2Dataset(root=str(tmp_path), subset_size=None, split="validation", **GEOMETRY)
    assert sorted(s.key for s in val.samples) == ["5", "6"]


def test_missing_videos_error_says_where_they_are_and_which_setting_to_use(tmp_path):
    write_ssv2(tmp_path, train=4, validation=2, videos_dir="downloads/webm")
    with pytest.raises(TooManyBadSamplesError, match=r"set dataset.videos_dir=downloads/webm") as caught:
        SSv2Dataset(root=str(tmp_path), subset_size=None, videos_dir="", **GEOMETRY)
    # The hint, pasted as printed, loads the set.
    setting = str(caught.value).split("set dataset.videos_dir=")[1].split(" ")[0]
    assert len(SSv2Dataset(root=str(tmp_path), subset_size=None, videos_dir=setting, **GEOMETRY)) == 4
