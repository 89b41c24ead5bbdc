import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2v_exp.metrics.detectors import MissingWeightsError
from t2v_exp.metrics.inception_score import (
    SAMPLES_PER_SCORE,
    InceptionScoreSettings,
    build_inception,
    inception_score,
    inception_score_from_probs,
    split_permutation,
    split_sizes,
    split_warning,
)
from tests.test_metrics_fixtures import inception_file


def numpy_inception_score(probs, splits, order):
    """Reference: the original split/KL formula, in numpy, on a given sample order."""
    probs = probs[order]
    count = len(probs)
    scores = []
    for index in range(splits):
        part = probs[index * count // splits : (index + 1) * count // splits]
        marginal = np.mean(part, axis=0, keepdims=True)
        kl = part * (np.log(part) - np.log(marginal))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("count,classes,splits,seed", [(103, 20, 10, 0), (40, 7, 3, 5), (10, 1000, 10, 1)])
def test_from_probs_matches_numpy_reference(count, classes, splits, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(classes, 0.3), size=count)
    order = split_permutation(count, seed).numpy()
    expected_mean, expected_std = numpy_inception_score(probs, splits, order)
    mean, std = inception_score_from_probs(torch.from_numpy(probs), splits=splits, seed=seed)
    assert mean == pytest.approx(expected_mean, rel=1e-8, abs=1e-8)
    assert std == pytest.approx(expected_std, rel=1e-8, abs=1e-8)


def test_known_values_and_seed_dependence():
    one_hot = torch.eye(10).repeat(10, 1)  # 100 confident samples spread evenly over 10 classes
    assert inception_score_from_probs(one_hot, splits=1) == pytest.approx((10.0, 0.0))
    same_class = torch.zeros(50, 10)
    same_class[:, 3] = 1
    assert inception_score_from_probs(same_class, splits=5) == pytest.approx((1.0, 0.0))
    probs = torch.from_numpy(np.random.default_rng(0).dirichlet(np.full(8, 0.2), size=60))
    assert inception_score_from_probs(probs, 5, seed=0) != inception_score_from_probs(probs, 5, seed=1)
    assert inception_score_from_probs(probs, 1, seed=0)[0] == pytest.approx(inception_score_from_probs(probs, 1, seed=1)[0])
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_probs(probs[:4], splits=10)


def test_loads_local_state_dict_and_scores_frames():
    settings = InceptionScoreSettings(weights_path=str(inception_file()), splits=2, quantize_uint8=False)
    videos = torch.rand(2, 2, 3, 40, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = inception_score(videos, settings)

    model, record = build_inception(str(inception_file()))
    frames = F.interpolate(videos.flatten(0, 1), size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        probs = torch.softmax(model(frames).double(), dim=1)
    expected = inception_score_from_probs(probs, splits=2, seed=0)

    assert (result["inception_score_frame"], result["inception_score_frame_std"]) == pytest.approx(expected, rel=1e-6)
    protocol = result["protocol"]
    assert protocol["num_frames_scored"] == 4 and protocol["num_classes"] == 1000
    assert protocol["detector_resolution"] == [299, 299] and protocol["splits"] == 2
    assert protocol["detector_sha256"] == hashlib.sha256(inception_file().read_bytes()).hexdigest()
    assert protocol["detector"] == "IS (torchvision Inception-v3)"


def test_missing_weights_name_the_setting(tmp_path):
    with pytest.raises(MissingWeightsError, match="metric_settings.inception_score.weights_path"):
        build_inception(str(tmp_path / "absent.pth"))


# ----------------------------------------------------------------------------- weight layouts


def _randomised_source_model(aux_logits=True):
    """A torchvision inception_v3 with random weights and BatchNorm statistics, rounded to fp16.

    Random running statistics matter: a fresh model has mean 0 / var 1, so a load that skipped
    them would still match. Weights are rounded to fp16 (halving the files) before the model
    keeps them, so the source model and the file hold the same numbers.
    """
    from torchvision.models import inception_v3

    torch.manual_seed(11)
    model = inception_v3(weights=None, aux_logits=aux_logits, init_weights=False).eval()
    generator = torch.Generator().manual_seed(12)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    state = {key: value.half() if value.is_floating_point() else value for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    return model, state


@pytest.fixture(scope="module")
def torchvision_source():
    return _randomised_source_model()


def shape_only(shapes):
    """State dict with the given key -> shape, each a stride-0 view of one number.

    Layout checks read keys and shapes only, and torch.save stores such a view's single-element
    storage, so a 100 MB network's layout costs a few kB on disk.
    """
    return {key: torch.zeros((), dtype=torch.float16).expand(shape) for key, shape in shapes.items()}


def torchvision_shapes(aux_logits, classes=1000, counters=True):
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, aux_logits=aux_logits, init_weights=False, num_classes=classes)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()
            if counters or not key.endswith("num_batches_tracked")}


def saved(tmp_path, name, state):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("variant", ["with_aux", "without_aux", "without_batch_counters"])
def test_torchvision_layouts_load_and_give_the_source_models_logits(tmp_path, torchvision_source, variant):
    source, state = torchvision_source
    if variant == "without_aux":
        state = {key: value for key, value in state.items() if not key.startswith("AuxLogits.")}
    if variant == "without_batch_counters":
        state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    model, record = build_inception(saved(tmp_path, f"{variant}.pth", state))
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(13)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(images), source(images), rtol=0, atol=0)
    assert record["detector_layout"].startswith("torchvision inception_v3, 1000 classes")
    assert ("without auxiliary head" in record["detector_layout"]) == (variant == "without_aux")


def fid_inception_shapes(counters):
    """pytorch-fid's fid_inception_v3(): torchvision's inception_v3(num_classes=1008, aux_logits=False)
    with Mixed_5b-d / 6b-e / 7b / 7c swapped for FIDInceptionA/C/E_1/E_2, subclasses that add no
    modules, so the key set is torchvision's. torch-fidelity's converter
    (utils/util_convert_inception_weights.py) writes the same names without BatchNorm counters."""
    return torchvision_shapes(aux_logits=False, classes=1008, counters=counters)


@pytest.mark.parametrize("counters,provenance", [
    (True, "state_dict() of a pytorch-fid or torch-fidelity module"),
    (False, "torch-fidelity's util_convert_inception_weights.py"),
])
def test_fid_inception_is_refused_although_torchvision_would_load_it(tmp_path, counters, provenance):
    from torchvision.models import inception_v3

    state = shape_only(fid_inception_shapes(counters))
    # Names taken from torch-fidelity's converter map: the layouts really do share key names.
    assert {"Mixed_6b.branch7x7dbl_5.conv.weight", "Mixed_7c.branch3x3dbl_3b.bn.running_var", "fc.bias"} <= set(state)
    # The hazard: torchvision's own loader takes this file without a complaint.
    inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).load_state_dict(state, strict=True)

    with pytest.raises(ValueError) as raised:
        build_inception(saved(tmp_path, "pt_inception-2015-12-05-6726825d.pth", state))
    message = str(raised.value)
    for expected in ("FID Inception", "1008", "pytorch-fid", "torch-fidelity", "hybrid", provenance,
                     "metric_settings.inception_score.weights_path"):
        assert expected in message


def test_pytorch_fid_feature_extractor_wrapper_is_refused(tmp_path):
    blocks = [
        ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
        ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
        ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
        ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
    ]
    shapes = {}
    for key, shape in fid_inception_shapes(counters=True).items():
        module, rest = key.split(".", 1)
        for block, names in enumerate(blocks):
            if module in names:
                shapes[f"blocks.{block}.{names.index(module)}.{rest}"] = shape
    assert "blocks.3.2.branch_pool.conv.weight" in shapes and not any(key.startswith("fc.") for key in shapes)
    with pytest.raises(ValueError, match="pytorch-fid's InceptionV3 feature extractor.*no classifier"):
        build_inception(saved(tmp_path, "wrapper.pth", shape_only(shapes)))


def test_classifier_with_another_class_count_is_refused(tmp_path):
    state = shape_only(torchvision_shapes(aux_logits=True, classes=10))
    with pytest.raises(ValueError, match="classifier with 10 classes, not torchvision's 1000"):
        build_inception(saved(tmp_path, "ten_classes.pth", state))


def test_other_networks_are_refused_naming_missing_and_unexpected_keys(tmp_path):
    from torchvision.models import resnet18

    with pytest.raises(ValueError) as raised:
        build_inception(saved(tmp_path, "resnet18.pth", resnet18(weights=None).state_dict()))
    message = str(raised.value)
    assert "is not an Inception-v3" in message
    assert "missing ('Conv2d_1a_3x3.bn.bias'" in message and "unexpected key(s) ('bn1.bias'" in message


def test_prefixed_keys_are_refused_with_the_prefix_named(tmp_path):
    state = shape_only({f"backbone.{key}": shape for key, shape in torchvision_shapes(aux_logits=True).items()})
    with pytest.raises(ValueError, match="every key starts with 'backbone.'"):
        build_inception(saved(tmp_path, "prefixed.pth", state))


def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path):
    shapes = torchvision_shapes(aux_logits=True)
    shapes["Mixed_6c.branch7x7_2.conv.weight"] = (160, 160, 7, 1)  # 7x1 where torchvision has 1x7
    with pytest.raises(ValueError, match=r"Mixed_6c.branch7x7_2.conv.weight \(160, 160, 7, 1\) \(expected \(160, 160, 1, 7\)\)"):
        build_inception(saved(tmp_path, "transposed.pth", shape_only(shapes)))


def test_aux_head_with_another_class_count_is_refused(tmp_path):
    shapes = torchvision_shapes(aux_logits=True)
    shapes["AuxLogits.fc.weight"], shapes["AuxLogits.fc.bias"] = (10, 768), (10,)
    with pytest.raises(ValueError, match="AuxLogits.fc.bias"):
        build_inception(saved(tmp_path, "mixed_heads.pth", shape_only(shapes)))


# ----------------------------------------------------------------------------- no interval; the split-size warning


def tiny_model():
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 10))


def test_inception_score_has_no_interval_and_names_itself():
    # A bootstrap over videos duplicates frames, which lowers IS: its interval sat below its own point.
    # What is left: mean and std over splits, under the name that says which network it is.
    videos = torch.rand(6, 3, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    result = inception_score(videos, InceptionScoreSettings(splits=3), model=tiny_model())
    assert not any(key.endswith("_ci") for key in result)
    assert set(result) == {"inception_score_frame", "inception_score_frame_std", "protocol", "warnings"}
    protocol = result["protocol"]
    assert protocol["metric"] == protocol["detector"] == "IS (torchvision Inception-v3)"
    assert "not comparable with published" in protocol["comparable_to"]
    assert protocol["frames_per_split"] == 6 and 1 <= protocol["videos_per_split"] <= 6


def test_split_sizes_follow_the_shuffle():
    frames, videos, splits = 4, 10, 3
    order = split_permutation(videos * frames, 0)
    parts = [order[i * 40 // splits : (i + 1) * 40 // splits] for i in range(splits)]
    expected = (min(map(len, parts)), min(len(set((p // frames).tolist())) for p in parts))
    assert split_sizes(videos, frames, splits, 0) == expected == (13, expected[1])


def test_splits_too_small_for_the_score_are_warned_about():
    # 16 videos x 8 frames in 10 splits: ~12 frames per split, a cap the tiny evaluation's IS is near.
    assert split_warning(score=4.0, frames_per_split=12, videos_per_split=10) is not None
    assert "at most n" in split_warning(4.0, 12, 10)
    assert split_warning(score=4.0, frames_per_split=400, videos_per_split=200) is None
    assert split_warning(score=40.0, frames_per_split=400, videos_per_split=199) is not None  # < 5 x 40
    videos = torch.rand(4, 2, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    result = inception_score(videos, InceptionScoreSettings(splits=2), model=tiny_model())
    assert any("split size" in note for note in result["warnings"])


def test_the_warning_threshold_is_where_small_splits_bias_the_score():
    # Confident predictions over C equally likely classes: the large-split IS is C. A split of
    # n = 5 x C samples scores ~10% under it, one of n = 2 x C ~25% under it: the cap
    # SAMPLES_PER_SCORE x score is where the split size starts to decide the number.
    rng = np.random.default_rng(0)

    def mean_split_score(classes, samples):
        counts = np.stack([np.bincount(rng.integers(0, classes, samples), minlength=classes) for _ in range(300)])
        share = counts / samples
        entropy = -np.where(share > 0, share * np.log(np.where(share > 0, share, 1.0)), 0.0).sum(axis=1)
        return float(np.exp(entropy).mean())

    assert mean_split_score(20, SAMPLES_PER_SCORE * 20) / 20 > 0.85
    assert mean_split_score(20, 2 * 20) / 20 < 0.8
