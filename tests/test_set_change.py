"""The paired change of FVD and KVD between base and fine-tuned, from the saved features.

The coverage tests simulate an evaluation: P prompts x S seeds, each video's features = a prompt
effect (shared by base and tuned, as the same prompt is) + seed noise (correlated between base and
tuned, as the same seed is), and reference clips. The marginals are Gaussian with diagonal
covariances, so the population Fréchet distances are exact: ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)),
and so is the population KVD (tests/test_metrics_kvd.py's closed form).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2v_exp.metrics.frechet import frechet_distance_from_features
from t2v_exp.metrics.kvd import kvd_batched
from t2v_exp.metrics.set_change import (
    frechet_from_gram,
    frechet_from_rows,
    kvd_from_gram,
    noise_floor,
    point_statistics,
    replicate_statistics,
    set_metric_changes,
    set_metric_changes_with_reason,
)
from tests.test_metrics_kvd import population_mmd2

pytestmark = pytest.mark.filterwarnings("ignore::t2v_exp.metrics.frechet.SmallSampleWarning")


def gram_blocks(first, second):
    return first @ first.T, second @ second.T, first @ second.T


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("sizes", [(12, 9), (30, 25)])
def test_gram_and_feature_space_frechet_agree_with_the_eigenvalue_form(ddof, sizes):
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(sizes[0], 20, generator=generator, dtype=torch.float64) * 1.5
    second = torch.randn(sizes[1], 20, generator=generator, dtype=torch.float64) + 0.4
    expected = frechet_distance_from_features(first, second, ddof)["distance"]
    assert float(frechet_from_gram(*gram_blocks(first, second), ddof)) == pytest.approx(expected, rel=1e-8)
    assert float(frechet_from_rows(first, second, ddof)) == pytest.approx(expected, rel=1e-8)
    rows = torch.tensor([0, 0, 3, 5, 5, 5, 7, 1])  # a resample with duplicates: still the same distance
    duplicated = frechet_distance_from_features(first[rows], second, ddof)["distance"]
    assert float(frechet_from_gram(*gram_blocks(first[rows], second), ddof)) == pytest.approx(duplicated, rel=1e-8)


def test_gram_kvd_is_the_u_statistic_and_skips_copies_of_one_row():
    generator = torch.Generator().manual_seed(1)
    first, second = torch.randn(10, 16, generator=generator, dtype=torch.float64), \
        torch.randn(7, 16, generator=generator, dtype=torch.float64)
    assert float(kvd_from_gram(*gram_blocks(first, second), 16)) == pytest.approx(float(kvd_batched(first, second)))
    rows = torch.tensor([0, 0, 2, 3, 3, 9])  # a resample: the two copies of rows 0 and 3 are not a pair
    with_copies = float(kvd_from_gram(*gram_blocks(first[rows], second), 16, rows, torch.arange(7)))
    k_xx = ((first[rows] @ first[rows].T) / 16 + 1) ** 3
    distinct = (rows[:, None] != rows[None, :]).double()
    k_yy = ((second @ second.T) / 16 + 1) ** 3
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (7 * 6)
    cross = ((first[rows] @ second.T / 16 + 1) ** 3).mean()
    expected = (k_xx * distinct).sum() / distinct.sum() + within_y - 2 * cross
    assert with_copies == pytest.approx(float(expected), rel=1e-12)


# -- the simulation -------------------------------------------------------------------------------
D, PROMPTS, SEEDS, REFERENCE = 64, 8, 2, 16


def frechet_truth(mu1, s1, mu2, s2) -> float:
    return float((mu1 - mu2).pow(2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())


def simulation(tuned_scale: float, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    s_prompt = torch.rand(D, generator=generator, dtype=torch.float64) + 0.2
    s_seed = torch.rand(D, generator=generator, dtype=torch.float64) + 0.2
    mu_ref = torch.zeros(D, dtype=torch.float64)
    mu_base = 0.6 * torch.randn(D, generator=generator, dtype=torch.float64)
    mu_tuned = mu_base + 0.3 * torch.randn(D, generator=generator, dtype=torch.float64)
    s_base, s_ref = s_prompt + s_seed, s_prompt + s_seed
    s_tuned = tuned_scale * s_base
    return {"s_prompt": s_prompt, "s_seed": s_seed, "mu_ref": mu_ref, "mu_base": mu_base, "mu_tuned": mu_tuned,
            "scale": tuned_scale,
            "fvd": frechet_truth(mu_tuned, s_tuned, mu_ref, s_ref) - frechet_truth(mu_base, s_base, mu_ref, s_ref),
            "kvd": population_mmd2(mu_tuned, s_tuned, mu_ref, s_ref) - population_mmd2(mu_base, s_base, mu_ref, s_ref)}


def draw(sim: dict, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def normal(*shape):
        return torch.randn(*shape, D, generator=generator, dtype=torch.float64)

    effect = sim["s_prompt"].sqrt() * normal(PROMPTS, 1)
    noise = sim["s_seed"].sqrt() * normal(PROMPTS, SEEDS)
    tuned_noise = 0.5 * noise + 0.75**0.5 * sim["s_seed"].sqrt() * normal(PROMPTS, SEEDS)  # same seed: correlated
    base = (sim["mu_base"] + effect + noise).reshape(-1, D)
    tuned = (sim["mu_tuned"] + sim["scale"] ** 0.5 * (effect + tuned_noise)).reshape(-1, D)
    reference = sim["mu_ref"] + (sim["s_prompt"] + sim["s_seed"]).sqrt() * normal(REFERENCE)
    return base, tuned, reference


def simulate(sim: dict, replicates: int, resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    groups = [np.arange(p * SEEDS, (p + 1) * SEEDS) for p in range(PROMPTS)]
    found = {name: [] for name in ("fvd_low", "fvd_high", "fvd", "kvd_low", "kvd_high", "kvd")}
    for replicate in range(replicates):
        base, tuned, reference = draw(sim, generator)
        point = point_statistics(base, tuned, reference, 1, groups)
        values = replicate_statistics(base, tuned, reference, groups, resamples=resamples, seed=replicate, ddof=1)
        for metric in ("fvd", "kvd"):
            deltas = values[f"{metric}_tuned"] - values[f"{metric}_base"]
            low, high = np.quantile(deltas, [0.025, 0.975])
            found[f"{metric}_low"].append(low)
            found[f"{metric}_high"].append(high)
            found[metric].append(point[f"{metric}_tuned"] - point[f"{metric}_base"])
    return {name: np.array(values) for name, values in found.items()}


def covered(result: dict, metric: str, truth: float) -> float:
    return float(np.mean((result[f"{metric}_low"] <= truth) & (truth <= result[f"{metric}_high"])))


def test_prompt_bootstrap_covers_a_known_fvd_and_kvd_change():
    # Base and tuned differ in their means, share covariances: FVD's small-N bias is the same on
    # both sides and cancels in the difference. 300 simulated evaluations (8 prompts x 2 seeds, 16
    # reference clips, 64-d features), 400 resamples each (5-7 s on one quiet core). Monte Carlo SE of a
    # coverage near 0.95 over 300 replicates: 0.0126; the band [0.91, 0.99] is about +-3 SE.
    sim = simulation(tuned_scale=1.0)
    result = simulate(sim, replicates=300, resamples=400)
    assert 0.91 <= covered(result, "fvd", sim["fvd"]) <= 0.99
    assert 0.91 <= covered(result, "kvd", sim["kvd"]) <= 0.99
    # The point estimates of the change: unbiased (within 4 Monte Carlo SE) for both here.
    for metric in ("fvd", "kvd"):
        assert abs(result[metric].mean() - sim[metric]) < 4 * result[metric].std() / len(result[metric]) ** 0.5


def test_when_covariances_differ_kvd_still_covers_but_fvd_covers_only_its_small_n_expectation():
    # Tuned 1.2x as spread as base: FVD's small-N bias no longer cancels (estimate ~16 for a true
    # change of ~5 at N=16, d=64), so the FVD interval covers the expected change at this N, not the
    # population change: the reason an FVD change under 256 videos is flagged indicative_only.
    # KVD's estimates are unbiased whatever the covariances, and so is their difference.
    sim = simulation(tuned_scale=1.2)
    result = simulate(sim, replicates=300, resamples=400)
    assert 0.91 <= covered(result, "kvd", sim["kvd"]) <= 0.99
    assert covered(result, "fvd", sim["fvd"]) < 0.6
    assert 0.9 <= covered(result, "fvd", float(result["fvd"].mean())) <= 0.99


# -- from two metrics.json reports ----------------------------------------------------------------
def write_report(directory, base_rows: dict, reference: np.ndarray, order: list, prompts_of: dict) -> dict:
    """A metrics.json-like dict whose fvd_features.npz lists the videos in ``order``."""
    directory.mkdir(parents=True, exist_ok=True)
    videos = [{"file": f"{i:03d}_seed{key[1]}.mp4", "prompt": prompts_of[key], "seed": key[1]}
              for i, key in enumerate(order)]
    np.savez(directory / "fvd_features.npz", generated=np.stack([base_rows[key] for key in order]).astype(np.float32),
             reference=reference.astype(np.float32), generated_names=np.array([v["file"] for v in videos]),
             reference_names=np.array([f"validation[{i}]" for i in range(len(reference))]))
    protocol = {"detector_sha256": "abc", "frames_per_clip": 8, "resize_mode": "direct", "ddof": 1, "feature_dim": 400}
    return {"out_dir": str(directory), "videos": videos,
            "metrics": {"fvd": {"status": "ok", "fvd": 1.0, "features_file": "fvd_features.npz", "protocol": protocol}}}


@pytest.fixture
def two_reports(tmp_path):
    rng = np.random.default_rng(0)
    keys = [(p, s) for p in range(6) for s in (10 + 2 * p, 11 + 2 * p)]
    prompts_of = {key: f"prompt {key[0]}" for key in keys}
    base = {key: rng.normal(size=400) for key in keys}
    tuned = {key: base[key] * 0.5 + rng.normal(size=400) + 0.3 for key in keys}
    reference = rng.normal(size=(10, 400))
    base_report = write_report(tmp_path / "base", base, reference, keys, prompts_of)
    tuned_report = write_report(tmp_path / "tuned", tuned, reference, keys[::-1], prompts_of)  # other file order
    return base_report, tuned_report, (base, tuned, reference, keys)


def test_set_metric_changes_pairs_by_prompt_and_seed_and_reports_every_field(two_reports):
    base_report, tuned_report, (base, tuned, reference, keys) = two_reports
    rows = set_metric_changes(base_report, tuned_report, resamples=200)
    assert set(rows) == {"fvd", "kvd"}
    fvd_row = rows["fvd"]
    # the point values are FVD of each side's rows as they are (float32 features, as saved)
    as_saved = {side: torch.from_numpy(np.stack([rows_[k] for k in keys]).astype(np.float32)).double()
                for side, rows_ in (("base", base), ("tuned", tuned))}
    reference64 = torch.from_numpy(reference.astype(np.float32)).double()
    for side in ("base", "tuned"):
        expected = frechet_distance_from_features(as_saved[side], reference64, 1)["distance"]
        assert fvd_row[side] == pytest.approx(expected, rel=1e-7)
    assert fvd_row["delta"] == pytest.approx(fvd_row["tuned"] - fvd_row["base"])
    for row in rows.values():
        assert row["kind"] == "set_change" and row["confidence"] == 0.95 and row["resamples"] == 200
        assert (row["n_prompts"], row["n_pairs"], row["n_reference"]) == (6, 12, 10)
        assert row["ci_low"] <= row["ci_high"] and "prompts resampled" in row["method"] and row["seed"] == 0
        assert row["noise_floor"]["value"] is not None and "disjoint halves" in row["noise_floor"]["method"]
        assert isinstance(row["indicative_only"], bool)
    assert rows["fvd"]["indicative_only"] is True  # 12 videos: FVD's bias
    json.dumps(rows)  # plain numbers: ready for metrics.json
    # the same evaluations listed in another order give the same numbers
    shuffled = dict(base_report, videos=list(reversed(base_report["videos"])))
    assert set_metric_changes(shuffled, tuned_report, resamples=200) == rows


def test_missing_or_mismatched_features_give_nothing_and_a_reason(two_reports, tmp_path):
    base_report, tuned_report, _ = two_reports
    no_file = json.loads(json.dumps(base_report))
    del no_file["metrics"]["fvd"]["features_file"]
    rows, reason = set_metric_changes_with_reason(no_file, tuned_report)
    assert rows == {} and "saved no FVD features" in reason
    assert set_metric_changes(no_file, tuned_report) == {}
    skipped = dict(base_report, metrics={"fvd": {"status": "skipped"}})
    assert "no FVD score" in set_metric_changes_with_reason(skipped, tuned_report)[1]
    gone = dict(base_report, out_dir=str(tmp_path / "elsewhere"))
    assert "does not exist" in set_metric_changes_with_reason(gone, tuned_report)[1]
    other_detector = json.loads(json.dumps(tuned_report))
    other_detector["metrics"]["fvd"]["protocol"]["detector_sha256"] = "def"
    assert "detector_sha256 differs" in set_metric_changes_with_reason(base_report, other_detector)[1]


def test_noise_floor_is_the_mean_over_half_splits():
    generator = torch.Generator().manual_seed(3)
    reference = torch.randn(12, 30, generator=generator, dtype=torch.float64)
    floor = noise_floor(reference, ddof=1, splits=1, seed=5)
    order = torch.from_numpy(np.random.default_rng(5).permutation(12))
    first, second = reference[order[:6]], reference[order[6:]]
    assert floor["fvd"] == pytest.approx(frechet_distance_from_features(first, second, 1)["distance"], rel=1e-7)
    assert floor["kvd"] == pytest.approx(float(kvd_batched(first, second)), rel=1e-10)
    assert floor["n_per_half"] == 6
    assert noise_floor(reference[:3], ddof=1)["fvd"] is None  # halves of one clip: no covariance


# -- what the features are computed from (evaluation.py) ------------------------------------------
class CaptionedSplit:
    def __init__(self, captions):
        self._captions = captions

    def captions(self):
        return list(self._captions)

    def __len__(self):
        return len(self._captions)


def plan_of(prompts, seeds_per_prompt):
    from t2v_exp.scoring.evaluation import PlannedVideo

    return [PlannedVideo(index=i, prompt=prompts[i // seeds_per_prompt], prompt_index=i // seeds_per_prompt,
                         repeat=i % seeds_per_prompt, seed=i) for i in range(len(prompts) * seeds_per_prompt)]


def test_reference_is_the_clips_of_the_plans_prompts_in_the_same_mix():
    from t2v_exp.scoring.evaluation import reference_selection

    split = CaptionedSplit(["a", "x", "b", "a", "c", "a", "b"])
    indices, record = reference_selection(split, plan_of(["b", "a"], seeds_per_prompt=2))
    assert indices == [2, 6, 0, 3]  # up to two clips per prompt (two videos of each), in the plan's order
    assert (record["prompts"], record["prompts_with_clips"], record["clips"]) == (2, 2, 4) and "warning" not in record
    indices, record = reference_selection(split, plan_of(["c", "zzz"], seeds_per_prompt=1))
    assert indices == [4] and "1 of 2 prompts have no clip" in record["warning"]


def test_prompts_without_clips_fall_back_to_the_first_clips_with_a_warning():
    from t2v_exp.scoring.evaluation import reference_selection

    indices, record = reference_selection(CaptionedSplit(["a", "b", "c", "d", "e"]), plan_of(["p", "q"], 2))
    assert indices == [0, 1, 2, 3] and "first 4 clips" in record["selection"] and "prompts=FILE" in record["warning"]


def test_generated_videos_are_scored_as_decoded_from_their_files(tmp_path):
    from t2v_exp.scoring.evaluation import decoded_videos
    from t2v_exp.scoring.sampling import write_videos

    # smooth moving gradients (odd sizes: padded to even when written, cropped back when decoded)
    rows, cols = torch.linspace(0, 1, 33)[:, None], torch.linspace(0, 1, 35)[None, :]
    frames = torch.stack([torch.stack([(rows + cols) / 2 * (1 - t / 10), rows.expand(33, 35), cols.expand(33, 35)])
                          for t in range(5)])
    videos01 = torch.stack([frames, frames.flip(-1)]) * 0.6 + 0.2
    names = write_videos(videos01, ["a red circle", "a blue square"], tmp_path, fps=8, seeds=[0, 1])
    decoded = decoded_videos(tmp_path, names, videos01)
    assert decoded.shape == (2, 5, 3, 33, 35) and decoded.min() >= -1 and decoded.max() <= 1
    error = (decoded - (videos01 * 2 - 1)).abs()
    assert 0 < float(error.mean()) < 0.03  # H.264 crf 18 yuv420p changed the frames, a little
