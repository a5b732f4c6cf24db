"""What the config check refuses before any process starts (exit 2, one line naming the key): values the services
would fail on after start, and settings that cannot take effect in the run (refused only when the user changed them
from their default, so that a file spelling out every default, as scalerl.toml does, still loads)."""

import subprocess
import sys
from pathlib import Path

import pytest

from scalerl.cli import defaults as model_layers
from scalerl.cli.run_config import RESOLVED, resolve
from scalerl.shared.config import RUN_TABLES, ConfigError, load_section, load_sections

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, *sets: str, path=None):
    return resolve(path, list(sets), run_dir=str(tmp_path / "run"))[1]


# `scalerl config show` and `scalerl train --dry-run` refuse the same configs; RUN: the test's run dir.
SHOW_AND_DRY_RUN = [["config", "show"], ["train", "--dry-run", "--max-steps", "2", "--run-dir", "RUN"]]


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


def one_line_exit_2(r: subprocess.CompletedProcess, *needles: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(model_layers, "gpu_visible", lambda: False)


# ---------------------------------------------------------------- 1. devices


def test_trainer_device_cuda_without_a_gpu_is_refused(tmp_path, no_gpu):
    with pytest.raises(ConfigError, match=r"^trainer.device = 'cuda' but torch sees no CUDA device"):
        config(tmp_path, "trainer.device=cuda")
    config(tmp_path, "trainer.device=cpu")


def test_trainer_device_cuda_with_a_gpu_resolves(tmp_path, monkeypatch):
    monkeypatch.setattr(model_layers, "gpu_visible", lambda: True)
    assert config(tmp_path, "trainer.device=cuda").trainer.device == "cuda"


def test_an_nccl_weight_group_without_a_gpu_is_refused(tmp_path, no_gpu):
    with pytest.raises(ConfigError, match=r"^generator.dist_backend = 'nccl' broadcasts weights over NCCL"):
        config(tmp_path, "generator.backend=vllm", "generator.weights_transport=dist", "generator.dist_backend=nccl")
    config(tmp_path, "generator.weights_transport=dist")  # gloo


def test_an_nccl_weight_group_with_torch_engines_is_refused_on_a_gpu_node(tmp_path, monkeypatch):
    # The plan hides the node's GPUs from torch engines (they generate on CPU): the group would fail after start.
    monkeypatch.setattr(model_layers, "gpu_visible", lambda: True)
    with pytest.raises(ConfigError, match=r"^generator.dist_backend = 'nccl' needs a GPU in every generator"):
        config(tmp_path, "generator.weights_transport=dist", "generator.dist_backend=nccl")
    config(tmp_path, "generator.backend=vllm", "generator.weights_transport=dist", "generator.dist_backend=nccl")
    # NCCL sends from the trainer's GPU: a trainer on CPU has none to send from.
    with pytest.raises(ConfigError, match=r"from the trainer's GPU, and trainer.device = 'cpu'"):
        config(
            tmp_path,
            "generator.backend=vllm",
            "generator.weights_transport=dist",
            "generator.dist_backend=nccl",
            "trainer.device=cpu",
        )


@pytest.mark.skipif(model_layers.gpu_visible(), reason="tests the refusal where no GPU is visible")
@pytest.mark.parametrize("command", SHOW_AND_DRY_RUN)
def test_device_cuda_is_refused_by_dry_run_and_config_show(tmp_path, command):
    r = cli(*[str(tmp_path / "run") if a == "RUN" else a for a in command], "--set", "trainer.device=cuda")
    one_line_exit_2(r, "trainer.device")
    assert not (tmp_path / "run").exists()


def test_the_cli_imports_no_torch_to_resolve_a_config():
    code = "import sys, scalerl.cli.main, scalerl.cli.run_config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- 2. and 3. host and ports


@pytest.mark.parametrize("command", SHOW_AND_DRY_RUN)
def test_a_non_loopback_tcp_host_needs_allow_remote(tmp_path, command):
    sets = ["--set", "run.transport=tcp", "--set", "run.host=0.0.0.0"]
    r = cli(*[str(tmp_path / "run") if a == "RUN" else a for a in command], *sets)
    one_line_exit_2(r, "host '0.0.0.0'", "run.allow_remote")
    config(tmp_path, "run.transport=tcp", "run.host=0.0.0.0", "run.allow_remote=true")
    config(tmp_path, "run.transport=tcp", "run.host=localhost")


@pytest.mark.parametrize("port", [70000, -5, 0, 65530])
def test_base_port_must_leave_room_for_every_port_of_the_run(tmp_path, port):
    with pytest.raises(ConfigError, match=rf"^run: base_port must be in 1\.\.65529, not {port}: the run uses run\."):
        config(tmp_path, "run.transport=tcp", f"run.base_port={port}")


def test_the_highest_base_port_binds_its_last_port_at_65535(tmp_path):
    cfg = config(tmp_path, "run.transport=tcp", "run.base_port=65529", "generator.weights_transport=dist")
    assert cfg.wiring.weights_dist_init_method.endswith(":65535")


def test_base_port_out_of_range_is_one_line_from_dry_run(tmp_path):
    r = cli("train", "--dry-run", "--run-dir", str(tmp_path / "run"), "--set", "run.base_port=70000")
    one_line_exit_2(r, "base_port", "70000")


# ---------------------------------------------------------------- 4. values


@pytest.mark.parametrize(
    "expr, needle",
    [
        ("trainer.optim.betas=[0.9, 1.5]", "trainer.optim: betas must each be in [0, 1)"),
        ("trainer.optim.eps=-1e-8", "trainer.optim: eps and weight_decay must be finite and >= 0"),
        ("eval.temperature=-1", "eval: temperature must be finite and >= 0"),
        ("trainer.temperature=-1", "trainer: temperature must be finite and >= 0"),
        ("trainer.loss.cispo_eps_max=-1", "trainer.loss: cispo_eps_max must be > 0"),
        ("trainer.loss.dapo_eps=[0.3, -0.1]", "trainer.loss: dapo_eps must be [low, high]"),
        ("trainer.loss.grpo_eps=[1.0, 0.2]", "trainer.loss: grpo_eps must be [low, high]"),
        ("generator.max_seq_len=4", "generator: max_seq_len must be >= 16"),
        ("generator.max_seq_len=16", "generator.max_seq_len = 16 leaves no room for a prompt"),
        ("curvefit.r0='bogus'", "curvefit: r0 must be 'first', 'fit' or a number in [0, bound = 1)"),
        ("curvefit.r0=1.0", "curvefit: r0 must be"),
        ("curvefit.r0=-0.1", "curvefit: r0 must be"),
        ("curvefit.r0=nan", "'curvefit.r0'"),
        ("curvefit.level=0.3", "curvefit: level must be in [0.5, 0.999]"),
        ("curvefit.level=1.0", "curvefit: level must be in [0.5, 0.999]"),
        ("curvefit.n_boot=3", "curvefit: n_boot must be in [50, 100000]"),
        ("curvefit.bound=0", "curvefit: bound must be a finite number > 0"),
        ("curvefit.bound=inf", "curvefit: bound must be a finite number > 0"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path, expr, needle):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, expr)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("r0", ["0.2", "'0.2'", "'fit'", "0"])
def test_curvefit_r0_takes_what_scalerl_fit_takes(tmp_path, r0):
    config(tmp_path, f"curvefit.r0={r0}")


def test_a_bad_value_is_one_line_from_config_show(tmp_path):
    one_line_exit_2(cli("config", "show", "--set", "trainer.optim.betas=[0.9,1.5]"), "betas", "[0.9, 1.5]")
    one_line_exit_2(cli("config", "show", "--set", "curvefit.n_boot=3"), "curvefit", "n_boot")


def test_a_bare_trainer_refuses_a_negative_eval_temperature(tmp_path):
    r = cli("trainer", "--set", f"trainer.run_dir={tmp_path / 'run'}", "--set", "eval.temperature=-1")
    one_line_exit_2(r, "eval: temperature must be finite and >= 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(model_layers.gpu_visible(), reason="a CUDA device is visible here")
def test_a_bare_trainer_refuses_cuda_where_there_is_none(tmp_path):
    from scalerl.shared.wiring import ADDRESS_KEYS

    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[wiring]\n" + "".join(f'{k} = "ipc://{tmp_path}/{k}"\n' for k in ADDRESS_KEYS))
    r = cli("trainer", "--config", cfg, "--set", f"trainer.run_dir={tmp_path / 'run'}", "--set", "trainer.device=cuda")
    one_line_exit_2(r, "trainer.device = 'cuda' but torch sees no CUDA device here")
    assert not (tmp_path / "run").exists()


def test_a_bare_evaluator_refuses_a_negative_eval_temperature(tmp_path):
    """The evaluator reads [eval] without the trainer's checks: EvalConfig checks its own temperature."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'[wiring]\nrequest_addr = "ipc://{tmp_path}/req"\n')
    one_line_exit_2(cli("evaluator", "--config", cfg, "--set", "eval.temperature=-1"), "eval: temperature must be")


# ---------------------------------------------------------------- 5. settings that cannot take effect


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["generator.vllm.engines=2"], "generator.vllm.engines = 2 is set but generator.backend = 'torch'"),
        (["generator.vllm.cpu_kv_cache_gib=4"], "generator.vllm.cpu_kv_cache_gib = 4 is set but"),
        (["generator.vllm.tensor_parallel_size=2"], "generator.vllm.tensor_parallel_size = 2 is set but"),
        (["trainer.loss.load_balance_coef=0.01"], "trainer.loss.load_balance_coef = 0.01 cannot act"),
        (["trainer.grad_reduce_dtype=bfloat16"], "trainer.grad_reduce_dtype 'bfloat16' needs more than one rank"),
        (["trainer.loss.tis_cap=3"], "trainer.loss.tis_cap = 3 is set but trainer.loss.is_correction = 'none'"),
        (
            ["trainer.loss.mis_threshold=3", "trainer.loss.is_correction=tis"],
            "trainer.loss.mis_threshold = 3 is set but trainer.loss.is_correction = 'tis'",
        ),
        (["run.base_port=30000"], "run.base_port = 30000 is set but run.transport = 'ipc'"),
        (["run.host='10.0.0.1'"], "run.host = '10.0.0.1' is set but run.transport = 'ipc'"),
    ],
)
def test_a_setting_that_cannot_take_effect_is_refused(tmp_path, sets, needle, monkeypatch):
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(ConfigError) as e:
        config(tmp_path, *sets)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "sets",
    [
        ["generator.vllm.engines=1", "generator.vllm.cpu_kv_cache_gib=1"],  # its defaults: nothing is ignored
        ["trainer.loss.load_balance_coef=0.0"],
        ["trainer.grad_reduce_dtype='float32'"],
        ["trainer.loss.tis_cap=3", "trainer.loss.is_correction=tis"],
        ["trainer.loss.tis_cap=2.0"],
        ["run.base_port=29600", "run.host='127.0.0.1'"],
        ["run.base_port=30000", "run.transport=tcp"],
    ],
)
def test_the_same_keys_at_their_defaults_or_where_they_act_resolve(tmp_path, sets):
    config(tmp_path, *sets)


def test_grad_reduce_dtype_resolves_with_more_than_one_trainer_rank(tmp_path):
    assert config(tmp_path, "trainer.grad_reduce_dtype=bfloat16", "run.trainer_procs=2").trainer.grad_reduce_dtype


def test_load_balance_coef_resolves_for_a_model_that_names_experts(tmp_path):
    model = tmp_path / "moe"
    model.mkdir()
    (model / "config.json").write_text('{"num_experts": 4}')
    sets = [f"run.model='{model}'", "trainer.optim.lr=1e-6", "trainer.max_new_tokens=16"]
    assert config(tmp_path, *sets, "trainer.loss.load_balance_coef=0.01").trainer.loss.load_balance_coef == 0.01
    (model / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ConfigError, match=r"^trainer.loss.load_balance_coef = 0.01 cannot act: '.*moe' is dense"):
        config(tmp_path, *sets, "trainer.loss.load_balance_coef=0.01")


def test_under_srun_host_and_base_port_act_whatever_the_transport(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    config(tmp_path, "run.base_port=31000")  # slurm_task resolves once before it forces tcp


def test_the_reference_file_and_its_vllm_table_spelled_out_resolve(tmp_path):
    config(tmp_path, path=ROOT / "scalerl.toml")
    text = (ROOT / "scalerl.toml").read_text()
    vllm = (
        "[generator.vllm]\ntensor_parallel_size = 1\nengines = 1\ngpu_memory_utilization = 0.85\ncpu_kv_cache_gib = 1\n"
    )
    path = tmp_path / "spelled.toml"
    path.write_text(text.replace("[trainer]\n", vllm + "\n[trainer]\n", 1))
    assert config(tmp_path, path=path).generator.vllm.engines == 1


def test_scalerl_train_dry_run_takes_the_reference_file(tmp_path):
    r = cli("train", "--dry-run", "--config", str(ROOT / "scalerl.toml"), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-2000:]


def test_an_ineffective_setting_is_one_line_from_dry_run(tmp_path):
    r = cli("train", "--dry-run", "--run-dir", str(tmp_path / "run"), "--set", "generator.vllm.engines=2")
    one_line_exit_2(r, "generator.vllm.engines", "generator.backend = 'torch'")


# ---------------------------------------------------------------- 6. unknown sections under the service commands


def test_the_service_commands_know_the_same_tables_as_a_run_config():
    assert tuple(RESOLVED) == RUN_TABLES


def test_a_service_config_with_an_unknown_section_is_refused(tmp_path):
    from scalerl.generator_service.config import GeneratorConfig
    from scalerl.shared.wiring import RunWiring

    path = tmp_path / "c.toml"
    path.write_text("[generator]\nmax_batch = 8\n\n[bogus]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"^unknown config section \[bogus\] \(known: run, generator, "):
        load_sections(path, {"generator": GeneratorConfig, "wiring": RunWiring})
    with pytest.raises(ConfigError, match=r"^unknown config section \[bogus\]"):
        load_section(path, "generator", GeneratorConfig)
    path.write_text("[generator]\nmax_batch = 8\n\n[trainer]\nmax_steps = 3\n\n[curvefit]\nn_boot = 100\n")
    assert load_sections(path, {"generator": GeneratorConfig, "wiring": RunWiring})[0].max_batch == 8


@pytest.mark.parametrize("command", ["trainer", "generator"])
def test_scalerl_trainer_and_generator_refuse_an_unknown_section(tmp_path, command):
    path = tmp_path / "c.toml"
    path.write_text(f"[trainer]\nrun_dir = '{tmp_path / 'run'}'\n\n[bogus]\nx = 1\n")
    one_line_exit_2(cli(command, "--config", str(path)), "unknown config section [bogus]")


# ---------------------------------------------------------------- 7. the built-in model's sequence length


def test_the_built_in_model_generates_within_its_positions(tmp_path):
    from scalerl.shared.models.tokenizer import MODEL_MAX_LENGTH

    cfg = config(tmp_path)
    assert cfg.generator.max_seq_len == MODEL_MAX_LENGTH
    assert cfg.sources[("generator", "max_seq_len")] == "default (built-in model)"
    assert config(tmp_path, "generator.max_seq_len=1024").generator.max_seq_len == 1024


def test_a_user_model_keeps_the_section_default(tmp_path):
    from scalerl.generator_service.config import GeneratorConfig

    model = tmp_path / "m"
    model.mkdir()
    sets = [f"run.model='{model}'", "trainer.optim.lr=1e-6", "trainer.max_new_tokens=16"]
    assert config(tmp_path, *sets).generator.max_seq_len == GeneratorConfig().max_seq_len


def test_both_task_tables_are_refused_as_written_even_at_their_defaults(tmp_path):
    """A [trainer.task] that spells out the defaults compared equal to none and was accepted beside [[trainer.tasks]]
    (docs/tasks.md: setting both is exit 2); a run's own config.toml, which holds both, still reads back."""
    f = tmp_path / "both.toml"
    f.write_text('[trainer.task]\nname = "addition"\n\n[[trainer.tasks]]\nname = "addition"\n')
    with pytest.raises(ConfigError, match=r"trainer: set \[trainer.task\] or \[\[trainer.tasks\]\], not both"):
        config(tmp_path, path=f)
    with pytest.raises(ConfigError, match="not both"):
        config(tmp_path, "trainer.task.name='addition'", path=ROOT / "examples" / "multitask.toml")
    resolved, cfg = resolve(ROOT / "examples" / "multitask.toml", [], run_dir=str(tmp_path / "run"))
    assert cfg.trainer.multi_task and {"task", "tasks"} <= set(resolved["trainer"])


# ---------------------------------------------------------------- values a service would fail on after start


@pytest.mark.parametrize(
    "sets, needle",
    [
        # numpy takes seeds in 0 .. 2^32 - 1: the trainer died at start-up (np.random.seed), after every check passed.
        (["trainer.seed=-1"], "trainer: seed must be between 0 and 4294967295"),
        (["trainer.seed=4294967296"], "trainer: seed must be between 0 and 4294967295"),
        (["generator.seed=-3"], "generator: seed must be between 0 and 4294967295"),
        # generator i samples with generator.seed + i: the last one must be in range too
        (["generator.seed=4294967295", "run.n_generators=2"], "with 2 generators it must be at most 4294967294"),
        # 10^23 planned for ever; 10^5 printed 2.3 million lines
        (["run.n_generators=100000"], "run: n_generators must be between 1 and 4096, not 100000"),
        # the built-in tasks read 0 as their default 500
        (["trainer.task.n_val=0"], "trainer.task: n_val must be >= 1"),
        # refused only by `train` itself before: config show and --dry-run took them
        (["trainer.task.name='nope'"], "trainer.task: unknown task 'nope'"),
        (["trainer.task.delimiter=';'"], "task delimiter = ';' acts only with the jsonl task"),
    ],
)
def test_values_the_services_would_fail_on_are_refused(tmp_path, sets, needle):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, *sets)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_limits_themselves_are_taken(tmp_path):
    cfg = config(tmp_path, "trainer.seed=4294967295", "generator.seed=4294967294", "run.n_generators=2")
    assert cfg.trainer.seed == 4294967295 and cfg.generator.seed == 4294967294


def test_generator_seed_takes_effect_under_scalerl_train(tmp_path):
    # Every run's generator i sampled with seed i, whatever generator.seed said: now generator.seed + i.
    import json

    r = cli(
        "train",
        "--dry-run",
        "--json",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "generator.seed=7",
        "--set",
        "run.n_generators=2",
    )
    assert r.returncode == 0, r.stderr
    seeds = [a for p in json.loads(r.stdout)["processes"] for a in p["argv"] if a.startswith("generator.seed=")]
    assert seeds == ["generator.seed=7", "generator.seed=8"]
    from scalerl.cli.run_config import generator_config

    cfg = config(tmp_path, "generator.seed=7", "run.n_generators=2")
    assert [generator_config(cfg, i).seed for i in range(2)] == [7, 8]  # the srun path's
