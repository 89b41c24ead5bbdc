"""Small random-weight detector files for the metrics tests, built once per test session.

Other metrics test modules import the builders from here. Each file goes through the same
loading path a real checkpoint would: a torchvision inception_v3 state dict, a CLIP state dict
made from clip's own model class, and a TorchScript module with the I3D port's call signature.
The tests at the bottom pin down the stand-ins' own contracts, which the FVD tests rely on.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

I3D_FEATURES = 400


@functools.cache
def weights_dir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="t2v_metrics_weights_"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


class TinyI3D(torch.nn.Module):
    """Stand-in for i3d_torchscript.pt: same forward signature, same input contract.

    It refuses what the real port would mis-handle silently (wrong layout, size, range), so a
    test passing through it shows the metric fed it [N, 3, T, 224, 224] in [-1, 1].
    """

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(3, 7, 7), stride=(1, 4, 4))
        self.head = torch.nn.Linear(8, I3D_FEATURES)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError("expected [N, 3, T, H, W]")
        if x.shape[3] != 224 or x.shape[4] != 224:
            raise ValueError("expected 224x224 frames")
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise ValueError("expected values in [-1, 1]")
        if rescale or resize:
            raise ValueError("stand-in supports only rescale=False, resize=False")
        hidden = F.relu(self.conv(x)).mean(dim=(3, 4))  # [N, 8, T']
        logits = self.head(hidden.transpose(1, 2)).mean(dim=1)  # time-averaged logits
        if return_features:
            return logits
        return torch.softmax(logits, dim=1)


class PlainI3D(torch.nn.Module):
    """A port with no keyword switches at all: forward(x) -> features."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3, 4)))


@functools.cache
def i3d_file() -> Path:
    torch.manual_seed(0)
    path = weights_dir() / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D().eval()).save(str(path))
    return path


@functools.cache
def plain_i3d_file() -> Path:
    torch.manual_seed(1)
    path = weights_dir() / "plain_i3d.pt"
    torch.jit.script(PlainI3D().eval()).save(str(path))
    return path


@functools.cache
def inception_file() -> Path:
    """Random torchvision inception_v3 state dict with the aux head, like the published one (fp16 to halve the file)."""
    from torchvision.models import inception_v3

    torch.manual_seed(2)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = {key: value.half() if value.is_floating_point() else value for key, value in model.state_dict().items()}
    path = weights_dir() / "inception_v3.pth"
    torch.save(state, path)
    return path


CLIP_RESOLUTION = 32


@functools.cache
def clip_file() -> Path:
    """A tiny ViT CLIP built with clip's own CLIP class; clip.load rebuilds it from the shapes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP

    torch.manual_seed(3)
    model = CLIP(
        embed_dim=32,
        image_resolution=CLIP_RESOLUTION,
        vision_layers=1,
        vision_width=64,  # clip derives heads as width // 64
        vision_patch_size=8,
        context_length=77,
        vocab_size=49408,  # must cover the BPE tokenizer's ids
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    state = {key: value.half() for key, value in model.state_dict().items()}
    path = weights_dir() / "tiny_clip.pt"
    torch.save(state, path)
    return path


def test_i3d_stand_in_enforces_the_input_contract():
    detector = torch.jit.load(str(i3d_file()))
    good = torch.zeros(1, 3, 16, 224, 224)
    assert detector(good, rescale=False, resize=False, return_features=True).shape == (1, I3D_FEATURES)
    for bad in (torch.zeros(1, 3, 16, 112, 112), torch.zeros(1, 16, 3, 224, 224), torch.full((1, 3, 16, 224, 224), 2.0)):
        with pytest.raises(Exception, match="expected"):
            detector(bad, rescale=False, resize=False, return_features=True)


def test_clip_file_round_trips_through_clip_load():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip

    model, _ = clip.load(str(clip_file()), device="cpu", jit=False)
    assert model.visual.input_resolution == CLIP_RESOLUTION
    assert model.encode_text(clip.tokenize(["a red square"])).shape == (1, 32)
