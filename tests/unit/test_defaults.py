"""One defaults path: a config file resolves to the same values under `scalerl train` and under the service
commands that read one section (`scalerl trainer`, `scalerl generator`, `scalerl evaluator`)."""

from __future__ import annotations

import pytest

from scalerl.cli.defaults import section_defaults
from scalerl.cli.run_config import resolve
from scalerl.generator_service.config import SECTION, GeneratorConfig
from scalerl.shared.config import load_section
from scalerl.trainer_service.config import TrainerConfig

USER_MODEL = "[run]\nmodel = '/models/m'\n[trainer]\nmax_new_tokens = 64\n[trainer.optim]\nlr = 3e-7\n"


@pytest.mark.parametrize("text", ["[trainer]\nmax_steps = 5\n", USER_MODEL], ids=["built-in model", "user model"])
def test_the_trainer_resolves_the_same_optimizer_alone_and_under_train(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    _, under_train = resolve(path, [], run_dir=str(tmp_path / "run"))
    # What `scalerl train` hands its trainer is a [trainer] table with run.model copied in; a user running
    # `scalerl trainer --config` on their own file writes the same key there.
    alone_file = tmp_path / "alone.toml"
    trainer_table = text.replace("[run]\nmodel = '/models/m'\n[trainer]\n", "[trainer]\nmodel = '/models/m'\n")
    alone_file.write_text(trainer_table)
    alone = load_section(alone_file, "trainer", TrainerConfig, [], defaults=section_defaults)
    assert alone.optim.lr == under_train.trainer.optim.lr
    assert alone.optim.eps == under_train.trainer.optim.eps
    assert alone.max_off_policy == under_train.trainer.max_off_policy
    assert alone.param_dtype == under_train.trainer.param_dtype


def test_the_built_in_model_gets_its_tuned_lr_from_every_command(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[trainer]\nmax_steps = 5\n")
    _, under_train = resolve(path, [], run_dir=str(tmp_path / "run"))
    alone = load_section(path, "trainer", TrainerConfig, [], defaults=section_defaults)
    assert alone.optim.lr == under_train.trainer.optim.lr == 2e-5
    # Without the model-defaults layer the dataclass default would differ: the test guards a real gap.
    assert load_section(path, "trainer", TrainerConfig, []).optim.lr != 2e-5


def test_the_generator_resolves_the_same_batch_alone_and_under_train(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[generator]\nthreads = 1\n")
    _, under_train = resolve(path, [], run_dir=str(tmp_path / "run"))
    # The same file: the addresses are [wiring], not the generator's section, so it loads alone as it is.
    alone = load_section(path, SECTION, GeneratorConfig, [], defaults=section_defaults)
    assert alone.max_batch == under_train.generator.max_batch


def test_the_file_and_set_still_win_over_model_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[trainer.optim]\nlr = 1e-4\n")
    alone = load_section(path, "trainer", TrainerConfig, ["trainer.optim.eps=1e-6"], defaults=section_defaults)
    assert (alone.optim.lr, alone.optim.eps) == (1e-4, 1e-6)


# ---------------------------------------------------------------- the GPU layer


def test_gpu_defaults_only_for_a_user_model_on_a_gpu():
    from scalerl.cli.defaults import gpu_defaults

    assert gpu_defaults(user_model=False, gpu=True, vllm=True) == {}  # the built-in model keeps its values
    assert gpu_defaults(user_model=True, gpu=False, vllm=True) == {}  # CPU runs too
    layer = gpu_defaults(user_model=True, gpu=True, vllm=True)
    assert layer["generator"] == {"dtype": "bfloat16", "backend": "vllm", "weights_transport": "vllm-nccl"}
    assert layer["trainer"] == {"activation_checkpointing": True, "step": {"max_tokens_per_microbatch": 16384}}
    assert "backend" not in gpu_defaults(user_model=True, gpu=True, vllm=False)["generator"]


@pytest.fixture
def gpu_node(monkeypatch):
    """A node where CUDA is visible: the hardware probe answers yes (no GPU on the machines that run these tests)."""
    from scalerl.cli import defaults

    monkeypatch.setattr(defaults, "gpu_visible", lambda: True)
    return defaults


def test_a_user_model_on_a_gpu_node_gets_the_gpu_defaults_named_as_such(tmp_path, gpu_node, monkeypatch):
    monkeypatch.setattr(gpu_node, "vllm_installed", lambda: True)
    path = tmp_path / "c.toml"
    path.write_text(USER_MODEL)
    _, cfg = resolve(path, [], run_dir=str(tmp_path / "run"))
    g, t = cfg.generator, cfg.trainer
    assert (g.backend, g.dtype, g.weights_transport) == ("vllm", "bfloat16", "vllm-nccl")
    assert cfg.wiring.weights_dtype == "bfloat16" and t.loss.fp32_lm_head  # bf16 on both sides, the FP32 head kept
    assert t.activation_checkpointing and t.step.max_tokens_per_microbatch == 16384
    assert cfg.sources[("generator", "backend")] == cfg.sources[("trainer", "activation_checkpointing")]
    assert cfg.sources[("generator", "backend")] == "default (GPU)"
    assert cfg.sources[("trainer", "optim", "eps")] == "default (paper)"


def test_the_users_own_backend_wins_over_the_gpu_layer(tmp_path, gpu_node, monkeypatch, capsys):
    monkeypatch.setattr(gpu_node, "vllm_installed", lambda: True)
    path = tmp_path / "c.toml"
    path.write_text(USER_MODEL)
    _, cfg = resolve(path, ["generator.backend=torch"], run_dir=str(tmp_path / "run"))
    assert (cfg.generator.backend, cfg.generator.weights_transport) == ("torch", "zmq")
    assert cfg.generator.dtype == "bfloat16" and capsys.readouterr().err == ""


def test_a_gpu_without_vllm_says_so_in_one_line_and_keeps_the_torch_engine(tmp_path, gpu_node, monkeypatch, capsys):
    monkeypatch.setattr(gpu_node, "vllm_installed", lambda: False)
    path = tmp_path / "c.toml"
    path.write_text(USER_MODEL)
    _, cfg = resolve(path, [], run_dir=str(tmp_path / "run"))
    assert cfg.generator.backend == "torch" and cfg.generator.weights_transport == "zmq"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vLLM is not installed" in err[0] and "scalerl[vllm]" in err[0]


def test_the_built_in_model_on_a_gpu_node_keeps_its_values(tmp_path, gpu_node):
    _, cfg = resolve(None, [], run_dir=str(tmp_path / "run"))
    assert cfg.generator.backend == "torch" and cfg.generator.dtype == "float32"
    assert not cfg.trainer.activation_checkpointing
