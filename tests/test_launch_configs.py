"""conf/accelerate/*.yaml as accelerate itself reads them: its launcher parses each file into the
environment a launch would set, and its FSDP plugin builds from that environment. Training with
FSDP or DeepSpeed needs CUDA (accelerate enables neither on the CPU), so this is what CI can check."""

from __future__ import annotations

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

from .conftest import CONF_DIR

CONFIGS = sorted((CONF_DIR / "accelerate").glob("*.yaml"))


def launch_env(config) -> tuple[object, dict[str, str]]:
    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "t2v_exp.train"])
    args, _, _ = _validate_launch_command(args)
    return args, prepare_multi_gpu_env(args) if not args.use_deepspeed else {}


def test_every_launch_config_is_read_by_accelerate():
    assert {c.stem for c in CONFIGS} == {"ddp", "fsdp", "deepspeed_zero2"}
    for config in CONFIGS:
        args, _ = launch_env(config)
        assert args.num_processes == 8 and args.mixed_precision == "bf16", config.name


def test_fsdp_config_is_fsdp2_with_full_state_dicts(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    args, env = launch_env(CONF_DIR / "accelerate" / "fsdp.yaml")
    assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # trainable weights gathered for saving
    assert plugin.auto_wrap_policy is not None


def test_deepspeed_config_is_zero2_matching_the_train_defaults(compose_train):
    args, _ = launch_env(CONF_DIR / "accelerate" / "deepspeed_zero2.yaml")
    assert args.use_deepspeed and int(args.zero_stage) == 2
    cfg = compose_train([])
    # the file's comments say these must match gpu.gradient_accumulation_steps / train.max_grad_norm
    assert int(args.gradient_accumulation_steps) == cfg.gpu.gradient_accumulation_steps
    assert float(args.gradient_clipping) == pytest.approx(cfg.train.max_grad_norm)
