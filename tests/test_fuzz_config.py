"""Random override values give a clean config error (naming the key) or a valid config, never a crash."""

from __future__ import annotations

from hydra.errors import ConfigCompositionException, HydraException, OverrideParseException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from t2v_exp.config import validate
from t2v_exp.errors import ConfigError

KEYS = ["optimizer.lr", "train.max_steps", "model.num_frames", "model.lora.rank", "gpu.batch_size",
        "model.caption_dropout", "train.warmup_steps", "model.finetune", "precision.mixed_precision",
        "train.lr_schedule", "gpu.device", "train.keep_last", "logger.backend"]
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
