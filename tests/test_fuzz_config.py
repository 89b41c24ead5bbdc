"""Random override values give a clean config error (naming the key) or a valid config, never a crash."""

from __future__ import annotations

import math

from hydra.errors import ConfigCompositionException, HydraException, OverrideParseException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from t2v_exp.config import unknown_keys, validate
from t2v_exp.errors import ConfigError

KEYS = ["optimizer.lr", "train.max_steps", "model.num_frames", "model.lora.rank", "gpu.batch_size",
        "model.caption_dropout", "train.warmup_steps", "model.finetune", "precision.mixed_precision",
        "train.lr_schedule", "gpu.device", "train.keep_last", "logger.backend",
        # settings that used to train silently wrong or crash after the model loaded (issue 14)
        "train.log_every", "train.stop_after_steps", "validation.num_videos", "train.max_grad_norm",
        "train.checkpoint_every", "seed", "optimizer.eps", "optimizer.weight_decay", "model.lora.dropout",
        "model.height", "+foo", "+optimizer.foo"]
# Accepted values must be usable: (key, lowest valid, highest valid, highest included?)
RANGES = [("train.log_every", 1, math.inf, False), ("train.stop_after_steps", 0, math.inf, False),
          ("validation.num_videos", 0, math.inf, False), ("train.max_grad_norm", 0, math.inf, False),
          ("train.checkpoint_every", 0, math.inf, False), ("seed", 0, 2**32 - 1, True),
          ("optimizer.eps", 1e-300, math.inf, False), ("optimizer.weight_decay", 0, math.inf, False),
          ("model.lora.dropout", 0, 1, False), ("model.num_frames", 1, 1024, True), ("model.height", 1, 4096, True)]
VALUES = st.one_of(
    st.integers(min_value=-10**6, max_value=10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["lora", "full", "bf16", "fp16", "cuda", "none", "null", "true", "[1,2]", "{a: 1}", "''"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="'\"\\$"),
            min_size=1, max_size=12),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_random_overrides_fail_cleanly(compose_train, key, value):
    try:
        cfg = compose_train([f"{key}={value}"])
    except (ConfigCompositionException, OverrideParseException, HydraException) as error:
        assert key.split(".")[-1] in str(error) + str(error.__cause__) or "override" in str(error).lower()
        return
    try:
        validate(cfg, cuda_available=False)
    except ConfigError as error:
        assert "=" in str(error)  # names the key with its value
        return
    # accepted: then the value really is usable
    for positive in ("optimizer.lr", "train.max_steps", "model.num_frames", "model.lora.rank", "gpu.batch_size"):
        number = cfg
        for part in positive.split("."):
            number = number[part]
        assert number == number and 0 < number < float("inf"), (positive, number)
    assert 0 <= cfg.model.caption_dropout < 1 and cfg.train.warmup_steps >= 0
    for name, low, high, closed in RANGES:
        number = OmegaConf.select(cfg, name)
        assert low <= number and (number <= high if closed else number < high), (name, number)
    assert not unknown_keys(cfg)
