"""Typed schemas for the dataset config group (registered under ``schema/dataset``)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class DatasetConfig:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    num_frames: int = MISSING
    height: int = MISSING
    width: int = MISSING
    fps: int = 8
    seed: int = 0


@dataclass
class ShapesConfig(DatasetConfig):
    num_videos: int = 16
    domain: str = "horizontal"
    clip_frames: int | None = None


SCHEMAS = {"shapes": ShapesConfig}


def register_dataset_schemas(cs) -> None:
    for name, node in SCHEMAS.items():
        cs.store(group="schema/dataset", name=name, node=node)
