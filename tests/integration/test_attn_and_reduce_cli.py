"""trainer.attn_implementation and trainer.grad_reduce_dtype refused in one line (exit 2) by the CLI where they cannot
run or take effect, before any model loads. What each reaches when it can: tests/unit/test_attn_and_reduce.py."""

import importlib.util
import subprocess
import sys

import pytest


def scalerl(*args):
    return [sys.executable, "-m", "scalerl.cli", *map(str, args)]


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed here")
def test_flash_attention_2_without_flash_attn_exits_2_at_config_time():
    r = subprocess.run(
        scalerl("config", "show", "--set", "trainer.attn_implementation=flash_attention_2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "attn_implementation 'flash_attention_2'" in lines[0] and "flash_attn" in lines[0]


def test_bf16_reduce_on_one_rank_exits_2_before_the_model_loads(tmp_path):
    # A standalone trainer is handed its addresses in [wiring] (scalerl train writes them); with them, the dtype check
    # is what stops it.
    from scalerl.shared.wiring import ADDRESS_KEYS

    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[wiring]\n" + "".join(f'{k} = "ipc://{tmp_path}/{k}"\n' for k in ADDRESS_KEYS))
    r = subprocess.run(
        scalerl(
            "trainer",
            "--config",
            cfg,
            "--set",
            f"trainer.run_dir={tmp_path / 'run'}",
            "--set",
            "trainer.grad_reduce_dtype=bfloat16",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "scalerl: error: trainer.grad_reduce_dtype 'bfloat16' needs more than one rank: one rank reduces nothing"
    ]
