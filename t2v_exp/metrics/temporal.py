"""Temporal consistency: frame-to-frame SSIM and PSNR, with a motion measure beside them.

Frames are scored in [0, 1] with data range L = 1 (float videos in [-1, 1] as (x + 1) / 2, uint8
as x / 255), which is the same as scoring uint8 frames 0..255 with L = 255: the convention of
every public implementation. SSIM's luminance term is not shift-invariant, so scoring the
project's [-1, 1] tensors with L = 2 would give other, brightness-dependent numbers. Internally
the unit is one uint8 level (L = 255): SSIM, PSNR and motion do not change when the data and L
are scaled together, and uint8 frames stay exact integers.

SSIM follows Wang et al. 2004 as scikit-image's `structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)`
computes it on uint8 frames: an 11-tap Gaussian (sigma 1.5, truncated at 3.5 sigma) applied
separably, population (co)variances, C1 = (0.01 L)^2, C2 = (0.03 L)^2, the SSIM map cropped by the
window radius (5 px) before averaging, then averaged over channels. scikit-image filters with
scipy's "reflect" border, but every pixel that survives the crop has its whole window inside the
frame, so the border rule never matters: we filter without padding and keep only those pixels.

Two implementations give the same numbers. On the CPU the default is a compiled C kernel
(ssim_kernel.c, built on first use; see ssim_native.py): float64 throughout, as scikit-image, with
each frame's filtered maps shared by its two pairs, and one thread per core. Where no C compiler
is available, and on CUDA, the torch implementation below runs instead.

Speed and precision of the torch path (see _band_sums): on the CPU the Gaussian runs as float32 matrix products
and everything else in float32 too, with three things keeping the result within ~1e-7 of the
float64 reference: frames are centred on a per-video level before filtering, the structure term
is computed from the frame difference, and a fixed dither keeps float32 rounding from repeating.
On CUDA everything is float64 (fast there, and immune to TF32 matmuls).

Both SSIM and PSNR reward a frozen video, so `motion` (mean absolute frame difference in [0, 1]
units) is always reported with them.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from . import ssim_native
from .detectors import as_float_videos

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_SIGMA = 1.5
# scipy.ndimage.gaussian_filter's default truncation: radius = int(3.5 * 1.5 + 0.5) = 5, 11 taps.
SSIM_TRUNCATE = 3.5
LEVELS = 255.0  # internal unit: one uint8 level, so L = 255
# Output tile of the blocked filter (see _BlockedPlanes); 16 x 16 measured fastest on 2 cores.
ROW_BLOCK = 16
COLUMN_BLOCK = 16
FRAME_CONVENTION = (
    "scored in [0, 1] with data range L = 1: float [-1, 1] input as (x + 1) / 2, uint8 input as x / 255; "
    "identical to uint8 0..255 with L = 255"
)
SSIM_PROTOCOL = (
    f"Wang 2004, gaussian window 11 taps sigma {SSIM_SIGMA}, K1={SSIM_K1} K2={SSIM_K2}, population covariance, "
    "border crop, channel mean (= skimage structural_similarity gaussian_weights=True, use_sample_covariance=False, "
    "data_range=255 on uint8 frames)"
)


@dataclass
class TemporalSettings:
    psnr_cap_db: float = 100.0  # identical frames give infinite PSNR; they score this instead
    # Frames are processed in chunks of about this many input values (frames x channels x rows
    # x width; see _chunk_plan). A chunk keeps ~16 float32 maps of that size alive, so 2**20
    # peaks near 64 MB; on a 2-core CPU 2**20 was faster than 2**18, 2**19, 2**21 and 2**22.
    values_per_chunk: int = 1 << 20
    device: str = "cpu"  # e.g. "cuda": chunks are moved there, results come back to the CPU
    # On the CPU: "auto" uses the compiled float64 kernel (ssim_kernel.c, built on first use with the
    # system C compiler) and falls back to torch without one; "compiled" requires it; "torch" never
    # uses it. Both give the same numbers (within ~1e-7); the kernel is several times faster.
    implementation: str = "auto"


def gaussian_kernel_1d(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


TAPS = gaussian_kernel_1d().numel()
CROP = TAPS - 1  # the valid SSIM map is (H - 10) x (W - 10)


@functools.lru_cache(maxsize=8)
def _window_matrix(block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[block, block + 10]: row i holds the taps that output i of a block takes from its slab."""
    kernel = gaussian_kernel_1d()
    matrix = torch.zeros(block, block + CROP, dtype=torch.float64)
    for output in range(block):
        matrix[output, output : output + TAPS] = kernel
    return matrix.to(dtype=dtype, device=device)


class _BlockedPlanes:
    """Planes [P, H, W] in a zero-padded buffer that the SSIM Gaussian filters as two batched
    matrix products, one per axis (BLAS is far faster than PyTorch's depthwise CPU convolution).

    An output tile of ROW_BLOCK x COLUMN_BLOCK pixels reads a slab 10 rows (then 10 columns)
    longer, so each pass is one batched product of overlapping slabs with a [block, block + 10]
    window matrix. Pass 1 writes its result transposed within each row block, which makes the
    slabs of pass 2 contiguous too; the result keeps that tiled layout
    [P, row blocks, column blocks, COLUMN_BLOCK, ROW_BLOCK], fine for maps that are only combined
    elementwise and summed. Tiles run past the valid (H - 10) x (W - 10) outputs; `valid` marks
    the real ones (the others read padding or the next plane, and are never used).
    """

    def __init__(self, planes: int, height: int, width: int, dtype: torch.dtype, device: torch.device):
        self.planes, self.height, self.width = planes, height, width
        self.row_blocks = -(-height // ROW_BLOCK)
        self.column_blocks = -(-width // COLUMN_BLOCK)
        self.rows, self.columns = self.row_blocks * ROW_BLOCK, self.column_blocks * COLUMN_BLOCK
        size = planes * self.rows * self.columns
        # The last slab reads 10 rows past the last plane: a zero tail keeps that finite.
        self._buffer = torch.empty(size + CROP * self.columns, dtype=dtype, device=device)
        self._buffer[size:].zero_()
        grid = self._buffer[:size].view(planes, self.rows, self.columns)
        grid[:, height:].zero_()
        grid[:, :height, width:].zero_()
        self._grid = grid

    def data(self, start: int, stop: int | None = None) -> torch.Tensor:
        """Writable [stop - start, H, W] view of planes start..stop-1."""
        return self._grid[start:stop, : self.height, : self.width]

    def filtered(self) -> torch.Tensor:
        dtype, device = self._buffer.dtype, self._buffer.device
        slabs = self.planes * self.row_blocks
        # Pass 1, along H: per (plane, row block) the slab [ROW_BLOCK + 10, columns], taken
        # transposed by strides alone, times the window matrix transposed -> [columns, ROW_BLOCK].
        row_slabs = self._buffer.as_strided(
            (slabs, self.columns, ROW_BLOCK + CROP), (ROW_BLOCK * self.columns, 1, self.columns)
        )
        size = slabs * self.columns * ROW_BLOCK
        along_h = torch.empty(size + CROP * ROW_BLOCK, dtype=dtype, device=device)
        along_h[size:].zero_()  # read by the last column slab, for outputs past the edge
        row_window = _window_matrix(ROW_BLOCK, dtype, device).T.expand(slabs, -1, -1)
        torch.bmm(row_slabs, row_window, out=along_h[:size].view(slabs, self.columns, ROW_BLOCK))
        # Pass 2, along W: per tile the window matrix times a contiguous slab
        # [COLUMN_BLOCK + 10, ROW_BLOCK] -> [COLUMN_BLOCK, ROW_BLOCK].
        tiles = slabs * self.column_blocks
        column_slabs = along_h.as_strided(
            (tiles, COLUMN_BLOCK + CROP, ROW_BLOCK), (COLUMN_BLOCK * ROW_BLOCK, ROW_BLOCK, 1)
        )
        column_window = _window_matrix(COLUMN_BLOCK, dtype, device).expand(tiles, -1, -1)
        out = torch.bmm(column_window, column_slabs)
        return out.view(self.planes, self.row_blocks, self.column_blocks, COLUMN_BLOCK, ROW_BLOCK)

    @property
    def valid(self) -> torch.Tensor:
        """Bool [row blocks, column blocks, COLUMN_BLOCK, ROW_BLOCK]: outputs inside the crop."""
        return _valid_outputs(self.height, self.width, self._buffer.device)


@functools.lru_cache(maxsize=8)
def _valid_outputs(height: int, width: int, device: torch.device) -> torch.Tensor:
    row_blocks, column_blocks = -(-height // ROW_BLOCK), -(-width // COLUMN_BLOCK)
    rows = torch.arange(row_blocks * ROW_BLOCK, device=device).view(row_blocks, 1, 1, ROW_BLOCK)
    columns = torch.arange(column_blocks * COLUMN_BLOCK, device=device).view(1, column_blocks, COLUMN_BLOCK, 1)
    return (rows < height - CROP) & (columns < width - CROP)


@functools.lru_cache(maxsize=8)
def _dither(height: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed pattern in [-0.5, 0.5) added to every filtered map, and its own filtered image.

    Frames of integer levels make float32 rounding repeat (the same few products recur, and flat
    areas repeat one window exactly), so the errors pile up instead of averaging out: measured up
    to 2.4e-6 of SSIM on flat or decorrelated content far from the centring level. The filter is
    linear, so adding the pattern and then subtracting its filtered image changes nothing but the
    rounding. The image is computed with the same float32 arithmetic, so a map that is exactly
    zero (a static pair's difference) still comes out exactly zero.
    """
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    columns = torch.arange(width, dtype=torch.float64)[None, :]
    # Additive recurrence with the plastic number: well spread in 2-D, no random generator.
    plastic = 1.324717957244746
    pattern = (torch.frac(0.5 + rows / plastic + columns / plastic**2) - 0.5).to(dtype=dtype, device=device)
    alone = _BlockedPlanes(1, height, width, dtype, device)
    alone.data(0).copy_(pattern)
    return pattern, alone.filtered()[0]


def _band_sums(frames: torch.Tensor, shifts: torch.Tensor, owned_rows: int, dtype: torch.dtype) -> torch.Tensor:
    """Sums behind SSIM, PSNR and motion for each consecutive pair of a band of frames.

    `frames` [T, C, h, W] (uint8, or float in [-1, 1]) are rows r..r+h-1 of the frames, 10 rows
    more than the h - 10 SSIM rows the band scores; its first `owned_rows` rows are the ones it
    counts for PSNR and motion. Returns float64 [3, T - 1]: the SSIM map summed over the band
    and the channels, and the sums of squared and of absolute differences (in levels).

    `shifts` [T, C, 1, 1] is the level each frame is centred on, one per video and channel, so
    the difference of two frames of a video is exact. Variances are shift-invariant, and centring
    keeps E[x^2] - E[x]^2 from cancelling large moments; the means get the shift back for the
    luminance term. The structure term uses the difference d = x - y:
    2 cov + C2 = (var_x + var_y + C2) - var_d, with var_d filtered from d minus its (rounded)
    mean, which is small wherever the frames agree, unlike E[xy] - E[x] E[y].
    """
    count, channels, height, width = frames.shape
    pairs = count - 1
    planes = _BlockedPlanes((2 * count + pairs) * channels, height, width, dtype, frames.device)
    pattern, pattern_filtered = _dither(height, width, dtype, frames.device)
    shape = (count, channels, height, width)
    # Convert, then centre in place: uint8 - float32 in one op was ~25x slower on the CPU.
    if frames.dtype == torch.uint8:
        centred = frames.to(dtype).sub_(shifts)  # a copy: uint8 -> float
    else:
        centred = frames.to(dtype, copy=True).mul_(LEVELS / 2).add_(LEVELS / 2 - shifts)  # (x + 1) * 127.5 - shift
    torch.add(centred, pattern, out=planes.data(0, count * channels).view(shape))
    torch.addcmul(pattern, centred, centred, out=planes.data(count * channels, 2 * count * channels).view(shape))

    difference = centred[:-1] - centred[1:]
    del centred
    owned = difference[:, :, :owned_rows]
    # Row sums first keep the float32 accumulations short: exact for integer levels in rows up to
    # 258 px, ~1e-7 relative beyond; the float64 sum over rows adds nothing.
    squares = torch.linalg.vecdot(owned, owned).to(torch.float64).sum(dim=(1, 2))
    absolute = owned.abs().sum(dim=-1).to(torch.float64).sum(dim=(1, 2))
    mean_difference = (difference.sum(dim=-1).to(torch.float64).sum(dim=-1) / (height * width)).round().to(dtype)
    difference -= mean_difference[..., None, None]
    torch.addcmul(pattern, difference, difference, out=planes.data(2 * count * channels).view(pairs, channels, height, width))
    del difference

    moments = planes.filtered().unflatten(0, (-1, channels))
    ssim_map = _ssim_map(moments, count, shifts, mean_difference, pattern_filtered)
    ssim = torch.where(planes.valid, ssim_map, 0).sum(dim=-1).to(torch.float64).sum(dim=(1, 2, 3, 4))
    return torch.stack([ssim, squares, absolute])


def _ssim_map(moments: torch.Tensor, count: int, shifts: torch.Tensor, mean_difference: torch.Tensor,
              pattern_filtered: torch.Tensor) -> torch.Tensor:
    """The tiled SSIM map of each consecutive pair from the filtered (dithered) maps: [T - 1, C, tiles]."""
    tile = (1, 1, 1, 1)
    mean, mean_square, difference_square = moments.split([count, count, count - 1])
    c1 = (SSIM_K1 * LEVELS) ** 2
    c2 = (SSIM_K2 * LEVELS) ** 2
    mean = mean - pattern_filtered  # mean of the centred frame
    # var + C2/2 and mean^2 + C1/2, per frame; the pair sums give SSIM's denominators.
    spread = torch.addcmul(mean_square, mean, mean, value=-1).sub_(pattern_filtered - c2 / 2)
    true_mean = mean + shifts.view(count, -1, *tile)
    energy = torch.addcmul(torch.tensor(c1 / 2, dtype=mean.dtype, device=mean.device), true_mean, true_mean)
    brightness = energy[:-1] + energy[1:]  # mx^2 + my^2 + C1
    spread = spread[:-1] + spread[1:]  # var_x + var_y + C2
    local_difference = mean[:-1] - mean[1:]  # mx - my
    luminance = torch.addcmul(brightness, local_difference, local_difference, value=-1)  # 2 mx my + C1
    local_difference -= mean_difference.view(count - 1, -1, *tile)
    difference_variance = torch.addcmul(difference_square, local_difference, local_difference, value=-1)
    difference_variance -= pattern_filtered
    structure = torch.sub(spread, difference_variance, out=difference_variance)  # 2 cov + C2
    return luminance.mul_(structure).div_(brightness.mul_(spread))


def _chunk_plan(total_frames: int, channels: int, height: int, width: int, values: int) -> tuple[int, int]:
    """(frames per chunk, SSIM rows per band) for chunks of about `values` input values.

    Bands of rows keep a chunk small enough for the CPU caches at any frame size. A chunk of T
    frames filters 2T + T - 1 planes for its T - 1 pairs, and a band of b SSIM rows reads
    b + 10 rows; among the plans that fit, take the one that filters the least per pair.
    """
    best = None
    for count in range(2, min(total_frames, 64) + 1):
        rows = min(height - CROP, values // (count * channels * width) - CROP)
        if rows < 1 and count > 2:
            break
        rows = max(rows, 1)
        cost = (3 * count - 1) / (count - 1) * (rows + CROP) / rows
        if best is None or cost < best[0]:
            best = (cost, count, rows)
    return best[1], best[2]


def _channels_first(videos: Any) -> torch.Tensor:
    """[N, F, C, H, W]: uint8 stays uint8 (converted chunk by chunk), floats float32 in [-1, 1]."""
    if not isinstance(videos, torch.Tensor):
        videos = torch.as_tensor(videos)
    if videos.dtype == torch.uint8 and videos.ndim == 5:
        as_float_videos(videos[:, :0])  # validates the layout without converting every frame
        return videos.permute(0, 1, 4, 2, 3)
    return as_float_videos(videos)


def _video_shifts(first_frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N, C]: each video's centring level, its first frame's rounded mean level (an integer, so
    uint8 frames stay exact after centring)."""
    levels = first_frames.to(torch.float64)
    if first_frames.dtype != torch.uint8:
        levels = (levels + 1.0) * (LEVELS / 2)
    return levels.mean(dim=(-2, -1)).round().to(dtype)


def _torch_sums(videos: torch.Tensor, values_per_chunk: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """float64 [N, F - 1] each, with torch: the SSIM map sums, squared and absolute differences."""
    count, frames, channels, height, width = videos.shape
    dtype = torch.float64 if device.type == "cuda" else torch.float32
    shifts = _video_shifts(videos[:, 0].to(device), dtype).repeat_interleave(frames, dim=0)[..., None, None]
    sequence = videos.flatten(0, 1)
    total = count * frames
    per_chunk, band = _chunk_plan(total, channels, height, width, values_per_chunk)
    # Chunks of frames overlap by one frame and score every consecutive pair in them (the pairs
    # that straddle two videos are dropped afterwards); bands of rows overlap by the 10 rows a
    # window reaches past them.
    sums = []
    for start in range(0, total - 1, per_chunk - 1):
        stop = min(start + per_chunk, total)
        chunk = sequence[start:stop].to(device)
        chunk_sums = 0
        for top in range(0, height - CROP, band):
            bottom = min(top + band + CROP, height)
            owned = band if bottom < height else height - top
            chunk_sums = chunk_sums + _band_sums(chunk[:, :, top:bottom], shifts[start:stop], owned, dtype)
        sums.append(chunk_sums.cpu())
    within_video = torch.arange(total - 1) % frames != frames - 1
    ssim, squares, absolute = torch.cat(sums, dim=1)[:, within_video].view(3, count, frames - 1)
    return ssim, squares, absolute


def _compiled_sums(videos: torch.Tensor, values_per_chunk: int) -> tuple[torch.Tensor, ...]:
    """The same sums from the compiled float64 kernel, runs of frames scored by parallel threads.

    Each call gets a run of consecutive frames of one video (consecutive runs share one frame).
    Videos are cut into at least as many runs as there are threads, so a single long video still
    uses every core."""
    count, frames, channels, height, width = videos.shape
    pairs = frames - 1
    threads = max(1, torch.get_num_threads())
    # The kernel reads uint8 frames in place and holds two frames at a time, so uint8 videos are cut
    # only for the threads (each cut re-filters one frame); float videos are converted to float64
    # per run, so their runs are also kept near `values_per_chunk`.
    runs = -(-threads // count)
    if videos.dtype != torch.uint8:
        runs = max(runs, -(-pairs // max(1, values_per_chunk // (channels * height * width) - 1)))
    runs = min(pairs, runs)
    step = -(-pairs // runs)
    tasks = [(video, start, min(start + step, pairs)) for video in range(count) for start in range(0, pairs, step)]
    kernel = gaussian_kernel_1d().numpy()
    constants = ((SSIM_K1 * LEVELS) ** 2, (SSIM_K2 * LEVELS) ** 2)

    def score(task):
        video, start, stop = task
        chunk = videos[video, start : stop + 1]
        if videos.dtype == torch.uint8:  # the kernel reads decoded [T, H, W, C] frames itself
            chunk = chunk.permute(0, 2, 3, 1).contiguous()  # a view of the caller's frames, usually
        else:  # [-1, 1] -> levels 0..255
            chunk = chunk.to(torch.float64).add_(1.0).mul_(LEVELS / 2).contiguous()
        return task, ssim_native.pair_sums(chunk.numpy(), kernel, *constants)

    sums = torch.zeros(3, count, pairs, dtype=torch.float64)
    with ThreadPoolExecutor(max_workers=min(threads, len(tasks))) as pool:
        for (video, start, stop), found in pool.map(score, tasks):
            sums[:, video, start:stop] = torch.from_numpy(found)
    return sums.unbind(0)


def _implementation(settings: TemporalSettings, device: torch.device) -> str:
    """"compiled" (the C kernel, CPU only) or "torch", from settings.implementation."""
    wanted = settings.implementation
    if wanted not in ("auto", "compiled", "torch"):
        raise ValueError(f"temporal implementation must be auto, compiled or torch, got {wanted!r}")
    if wanted == "torch" or device.type != "cpu":
        return "torch"
    reason = ssim_native.available()
    if reason is None:
        return "compiled"
    if wanted == "compiled":
        raise ssim_native.NativeKernelUnavailable(reason)
    return "torch"


def temporal_scores(videos: Any, settings: TemporalSettings | None = None) -> dict[str, Any]:
    """Frame-to-frame SSIM, PSNR and motion for each video and their means over videos.

    `videos`: float [N, F, C, H, W] in [-1, 1] or uint8 [N, F, H, W, C], C in (1, 3). Returns
    `per_video` lists (keys temporal_ssim, temporal_psnr, motion), their means at the top level,
    and the protocol fields the numbers depend on.
    """
    settings = settings or TemporalSettings()
    videos = _channels_first(videos)
    count, frames, channels, height, width = videos.shape
    if frames < 2:
        raise ValueError(f"temporal metrics need at least 2 frames per video, got {frames}")
    if min(height, width) < TAPS:
        raise ValueError(f"SSIM needs frames of at least {TAPS}x{TAPS} pixels, got {height}x{width}")
    device = torch.device(settings.device)
    implementation = _implementation(settings, device)
    if implementation == "compiled":
        ssim, squares, absolute = _compiled_sums(videos, settings.values_per_chunk)
    else:
        ssim, squares, absolute = _torch_sums(videos, settings.values_per_chunk, device)
    ssim = ssim / (channels * (height - CROP) * (width - CROP))
    mse = squares / (channels * height * width)
    motion = absolute / (channels * height * width * LEVELS)
    psnr = (10.0 * torch.log10(LEVELS**2 / mse)).clamp(max=settings.psnr_cap_db)  # inf where mse == 0
    capped_pairs = int((psnr >= settings.psnr_cap_db).sum())
    ssim, psnr, motion = ssim.mean(dim=1), psnr.mean(dim=1), motion.mean(dim=1)
    return {
        "temporal_ssim": float(ssim.mean()),
        "temporal_psnr": float(psnr.mean()),
        "motion": float(motion.mean()),
        "per_video": {"temporal_ssim": ssim.tolist(), "temporal_psnr": psnr.tolist(), "motion": motion.tolist()},
        "protocol": {
            "num_videos": count,
            "frames_per_video": frames,
            "frame_pairs_per_video": frames - 1,
            "resolution": [height, width],
            "frames": FRAME_CONVENTION,
            "frame_range": [0.0, 1.0],
            "data_range": 1.0,
            "ssim": SSIM_PROTOCOL,
            "implementation": "compiled float64 kernel" if implementation == "compiled" else f"torch ({device.type})",
            "psnr_cap_db": settings.psnr_cap_db,
            "psnr_capped_pairs": capped_pairs,
            "motion": "mean |f[t+1] - f[t]| with frames in [0, 1]",
        },
    }
