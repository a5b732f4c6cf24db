"""gpu_hours counts the devices each process really holds: a trainer rank one, a vLLM generator tensor_parallel_size
x engines, the evaluator as one generator; derived from [generator] by config resolution, never set by hand. The
device plan of `scalerl train` (cli/device_plan.py) hands out exactly these counts, so its total is what is charged."""

from __future__ import annotations

import json
import time

import pytest

from scalerl.cli.device_plan import local_asks, plan_node, total_devices
from scalerl.cli.run_config import resolve
from scalerl.shared.config import ConfigError
from scalerl.trainer_service.components.ledger import Ledger


def config(tmp_path, *sets: str, eval_mode: str = "process"):
    return resolve(None, list(sets), run_dir=str(tmp_path / "run"), eval_mode=eval_mode)[1]


@pytest.mark.parametrize(
    "sets, eval_mode, world, expected",
    [
        ((), "process", 1, 1 + 1 + 1),  # trainer, one torch generator, the evaluator
        (("run.n_generators=3",), "inline", 2, 2 + 3),
        (
            (
                "run.n_generators=2",
                "generator.backend='vllm'",
                "generator.vllm.tensor_parallel_size=4",
                "eval.mode='process'",
            ),
            "process",
            8,
            8 + 2 * 4 + 4,
        ),
        (
            ("generator.backend='vllm'", "generator.vllm.tensor_parallel_size=2", "generator.vllm.engines=2"),
            "inline",
            4,
            4 + 4,
        ),
    ],
)
def test_devices_follow_each_process(tmp_path, sets, eval_mode, world, expected):
    cfg = config(tmp_path, *sets, eval_mode=eval_mode)
    ledger = Ledger.open(cfg.trainer, cfg.wiring, cfg.eval, world_size=world, step=0, state={}, resumed=False)
    try:
        assert ledger.n_devices == expected
        ledger.t0 = time.monotonic() - 3600.0  # an hour in: gpu_hours is the device count
        assert ledger.gpu_hours() == pytest.approx(expected, rel=1e-3)
        ledger.record("train", 1)
    finally:
        ledger.close()
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["devices"] == expected
    evaluator = cfg.wiring.eval_devices if cfg.eval.mode == "process" else 0
    asks = local_asks(world, cfg.run.n_generators, cfg.wiring.generator_devices, evaluator)
    assert total_devices(plan_node(None, asks)) == expected
    assert total_devices(plan_node([str(i) for i in range(expected)], asks)) == expected  # a node of exactly that


@pytest.mark.parametrize("key", ["generator_devices", "eval_devices"])
def test_device_counts_are_not_set_by_hand(tmp_path, key):
    with pytest.raises(ConfigError, match=rf"'trainer.{key}' is run wiring, derived by scalerl train from \[run\]"):
        config(tmp_path, f"trainer.{key}=3")
