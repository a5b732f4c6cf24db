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
    # The addresses are wiring that `scalerl train` writes into the generator's file.
    wired = tmp_path / "gen.toml"
    addrs = "".join(f'{k}_addr = "ipc:///tmp/x-{k}"\n' for k in ("request", "rollout", "control", "weights"))
    wired.write_text("[generator]\nthreads = 1\n" + addrs)
    alone = load_section(wired, SECTION, GeneratorConfig, [], defaults=section_defaults)
    assert alone.max_batch == under_train.generator.max_batch


def test_the_file_and_set_still_win_over_model_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[trainer.optim]\nlr = 1e-4\n")
    alone = load_section(path, "trainer", TrainerConfig, ["trainer.optim.eps=1e-6"], defaults=section_defaults)
    assert (alone.optim.lr, alone.optim.eps) == (1e-4, 1e-6)
