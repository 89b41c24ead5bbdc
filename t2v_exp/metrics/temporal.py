"""Temporal consistency: frame-to-frame SSIM and PSNR, with a motion measure beside them.

SSIM follows Wang et al. 2004 exactly as scikit-image's reference
`structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=L, channel_axis=-1)` computes it: an 11-tap Gaussian (sigma 1.5, truncated at 3.5
sigma) applied separably with half-sample symmetric borders (scipy's "reflect"), population
(co)variances, C1 = (0.01 L)^2, C2 = (0.03 L)^2, the SSIM map cropped by the window radius
before averaging, then averaged over channels. Everything runs batched in float64.

Both SSIM and PSNR reward a frozen video, so `motion` (mean absolute frame difference as a
fraction of the data range) is always reported with them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from .detectors import as_float_videos

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_SIGMA = 1.5
# scipy.ndimage.gaussian_filter's default truncation: radius = int(3.5 * 1.5 + 0.5) = 5, 11 taps.
SSIM_TRUNCATE = 3.5


@dataclass
class TemporalSettings:
    psnr_cap_db: float = 100.0  # identical frames give infinite PSNR; they score this instead
    data_range: float = 2.0  # L for videos in [-1, 1]
    # Frame pairs are processed in chunks of about this many values per map (C*H*W per pair);
    # ~20 float64 maps of that size are alive at once, so 2**22 keeps the peak near 0.7 GB.
    values_per_chunk: int = 1 << 22
    device: str = "cpu"  # e.g. "cuda": chunks are moved there, results come back to the CPU


def gaussian_kernel_1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _symmetric_pad_index(size: int, pad: int) -> torch.Tensor:
    """Indices padding an axis the way scipy's mode="reflect" does (edge sample repeated)."""
    positions = torch.arange(-pad, size + pad) % (2 * size)
    return torch.where(positions >= size, 2 * size - 1 - positions, positions)


@functools.lru_cache(maxsize=16)
def gaussian_filter_matrix(size: int) -> torch.Tensor:
    """[size, size] float64 matrix applying the SSIM Gaussian along one axis, borders included.

    Filtering as two matrix products (rows, then columns) instead of a float64 convolution:
    PyTorch's CPU float64 convolution is unoptimised, while float64 matmul goes to BLAS; on
    2 cores this was ~5-10x faster for 128-256 px frames. The "reflect" border is folded into
    the matrix, so edge taps accumulate onto the mirrored pixels.
    """
    kernel = gaussian_kernel_1d()
    taps = kernel.numel()
    source = _symmetric_pad_index(size, taps // 2)
    rows = torch.arange(size).repeat_interleave(taps)
    tap_index = torch.arange(taps).repeat(size)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    return matrix.index_put_((rows, source[rows + tap_index]), kernel[tap_index], accumulate=True)


def _gaussian_filter_2d(maps: torch.Tensor) -> torch.Tensor:
    """Gaussian filter of [..., H, W] over H and W with scipy "reflect" borders, same size out."""
    height, width = maps.shape[-2:]
    along_height = gaussian_filter_matrix(height).to(maps.device)
    along_width = gaussian_filter_matrix(width).to(maps.device)
    return along_height @ maps @ along_width.T


def ssim_pairs(first: torch.Tensor, second: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean SSIM of each image pair; inputs [B, C, H, W], returns float64 [B].

    Matches scikit-image's Gaussian-weighted, population-covariance SSIM, border crop included.
    """
    window = gaussian_kernel_1d().numel()
    if min(first.shape[-2:]) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window} pixels, got {tuple(first.shape[-2:])}")
    x = first.double()
    y = second.double()
    channels = x.shape[1]
    # All five moment maps of all channels are filtered in one batched product.
    moments = _gaussian_filter_2d(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.split(channels, dim=1)
    var_x = mean_xx - mean_x * mean_x
    var_y = mean_yy - mean_y * mean_y
    cov_xy = mean_xy - mean_x * mean_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    )
    radius = window // 2
    cropped = ssim_map[..., radius:-radius, radius:-radius]
    return cropped.mean(dim=(-2, -1)).mean(dim=1)


def psnr_pairs(first: torch.Tensor, second: torch.Tensor, data_range: float, cap_db: float) -> torch.Tensor:
    """PSNR of each image pair in dB, float64 [B]; zero error scores `cap_db` instead of inf."""
    mse = (first.double() - second.double()).pow(2).flatten(1).mean(dim=1)
    psnr = 10.0 * torch.log10(data_range**2 / mse)  # inf where mse == 0
    return psnr.clamp(max=cap_db)


def temporal_scores(videos: Any, settings: TemporalSettings | None = None) -> dict[str, Any]:
    """Frame-to-frame SSIM, PSNR and motion for each video and their means over videos.

    Returns `per_video` lists (keys temporal_ssim, temporal_psnr, motion), their means at the
    top level, and the protocol fields the numbers depend on.
    """
    settings = settings or TemporalSettings()
    videos = as_float_videos(videos)
    count, frames = videos.shape[:2]
    if frames < 2:
        raise ValueError(f"temporal metrics need at least 2 frames per video, got {frames}")
    first = videos[:, :-1].flatten(0, 1)
    second = videos[:, 1:].flatten(0, 1)
    pairs_per_chunk = max(1, settings.values_per_chunk // first[0].numel())
    ssim_chunks, psnr_chunks, motion_chunks = [], [], []
    for start in range(0, first.shape[0], pairs_per_chunk):
        a = first[start : start + pairs_per_chunk].to(settings.device)
        b = second[start : start + pairs_per_chunk].to(settings.device)
        ssim_chunks.append(ssim_pairs(a, b, settings.data_range).cpu())
        psnr_chunks.append(psnr_pairs(a, b, settings.data_range, settings.psnr_cap_db).cpu())
        motion = (a.double() - b.double()).abs().flatten(1).mean(dim=1) / settings.data_range
        motion_chunks.append(motion.cpu())
    pairs = frames - 1
    ssim = torch.cat(ssim_chunks).view(count, pairs).mean(dim=1)
    psnr = torch.cat(psnr_chunks).view(count, pairs)
    capped_pairs = int((psnr >= settings.psnr_cap_db).sum())
    psnr = psnr.mean(dim=1)
    motion = torch.cat(motion_chunks).view(count, pairs).mean(dim=1)
    return {
        "temporal_ssim": float(ssim.mean()),
        "temporal_psnr": float(psnr.mean()),
        "motion": float(motion.mean()),
        "per_video": {"temporal_ssim": ssim.tolist(), "temporal_psnr": psnr.tolist(), "motion": motion.tolist()},
        "protocol": {
            "num_videos": count,
            "frames_per_video": frames,
            "frame_pairs_per_video": pairs,
            "resolution": [int(videos.shape[3]), int(videos.shape[4])],
            "data_range": settings.data_range,
            "ssim": (
                f"Wang 2004, gaussian window {gaussian_kernel_1d().numel()} taps sigma {SSIM_SIGMA}, "
                f"K1={SSIM_K1} K2={SSIM_K2}, population covariance, border crop, channel mean "
                "(= skimage structural_similarity gaussian_weights=True, use_sample_covariance=False)"
            ),
            "psnr_cap_db": settings.psnr_cap_db,
            "psnr_capped_pairs": capped_pairs,
            "motion": "mean |f[t+1] - f[t]| / data_range",
        },
    }
