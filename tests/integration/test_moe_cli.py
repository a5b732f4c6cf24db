"""`scalerl train` with run.model pointing at the tiny MoE refuses, before any process starts (exit 2, one line
naming the architecture), every setting that would run it on the built-in torch engine: generator.backend 'torch'
(the CPU default) and inline evaluation. The vLLM run itself is in test_moe_vllm.py."""

import subprocess
import sys

import pytest

from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig
from scalerl.shared.models.tiny_moe import build_tiny_moe

# A user's model must set what does not transfer from the built-in one (test_early_validation.py).
USER_MODEL = ["trainer.optim.lr=1e-6", "trainer.max_new_tokens=16"]
NAMED = "torch engine: Qwen3MoeForCausalLM (model_type 'qwen3_moe') is a mixture-of-experts model"


def test_the_torch_engine_refuses_an_moe_model_in_one_line():
    with pytest.raises(ValueError, match=r"^torch engine: Qwen3MoeForCausalLM \(model_type 'qwen3_moe'\)") as e:
        TorchEngine(build_tiny_moe(seed=0), TorchEngineConfig(max_seq_len=64))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "sets, tail",
    [
        ([], "(generator.backend = 'vllm' does)"),
        (["generator.backend='vllm'", "eval.mode='inline'"], "eval.mode 'inline' evaluates on one"),
    ],
    ids=["torch-backend", "inline-eval"],
)
def test_scalerl_train_refuses_the_torch_engine_for_moe_before_starting(tmp_path, tiny_moe_dir, sets, tail):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run)]
    for s in [f"run.model='{tiny_moe_dir}'", *USER_MODEL, *sets]:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and NAMED in r.stderr and tail in r.stderr, r.stderr
    assert not (run / "logs").exists() and not (run / "config.toml").exists()
