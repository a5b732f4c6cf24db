"""A step with no group to train on is not taken. A real trainer process (the tiny model, the real authenticated
sockets) is fed by this test, which plays its generator: alive and heartbeating, but for its first second it answers
nothing, or only rollouts that do not fit the policy.

Before the fix every group of step 1 timed out and was dropped, and the trainer stepped anyway: a train line with
`groups` 0 and no `reward_mean` (the log said `reward nan`), the same weights published as version 1. And the
invalid-rollout limit was 2 batches' worth of rollouts (8 at 2 x 2), so the invalid spell failed the run outright."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from scalerl.shared.wire import auth
from scalerl.shared.wire.messages import GenerationRequest, Rollout
from scalerl.shared.wire.sockets import ControlClient, PullEndpoint, PushEndpoint, set_process_key
from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver
from scalerl.trainer_service.components.dispatcher import INVALID_STREAK_MIN, invalid_streak_limit
from scalerl.trainer_service.config import TrainerConfig
from scalerl.trainer_service.service import STALL_GROUP_TIMEOUTS
from tests.integration.test_hostile_rollouts import start_trainer

STEPS = 4
SPELL_S = 0.8  # how long the generator misbehaves, from the first request it sees
# group_timeout_s: step 1's groups are issued twice within the spell and dropped at ~1 s, well before the stall limit
# (STALL_GROUP_TIMEOUTS x 0.5 s from the loop's start)
TIMEOUT_S = 0.5


def serve(
    tmp_path: Path, proc, addrs: dict, run: Path, spell: Callable[[], dict | None], spell_s: float = SPELL_S
) -> None:
    """Play a generator until the trainer exits: within SPELL_S of the first request, `spell()` gives each rollout's
    fields (None: leave the request unanswered); after it, well-formed rollouts of rewards 0 and 1."""
    secret = (run / ".secret").read_text().strip()
    key = auth.key_from_secret(secret)
    control = ControlClient(addrs["control_addr"], peer_id="gen-0", role="generator", token=secret)
    try:
        with (
            PullEndpoint(
                addrs["request_addr"], bind=False, accept=(GenerationRequest,), key=key, channel=auth.REQUEST
            ) as requests,
            PushEndpoint(addrs["rollout_addr"], bind=False, key=key) as rollouts,
            ZmqWeightReceiver(addrs["weights_addr"], peer_id="gen-0-w", key=key) as weights,
        ):
            version, first, deadline = 0, None, time.monotonic() + 60
            while proc.poll() is None:
                assert time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()[-2000:]
                control.recv(timeout_ms=0)  # heartbeats: the generator stays alive throughout
                got = weights.receive(timeout_s=0)
                version = got[0] if got is not None else version
                req = requests.recv(timeout_ms=20)
                if req is None:
                    continue
                first = time.monotonic() if first is None else first
                over = spell() if time.monotonic() - first < spell_s else {}
                if over is None:
                    continue
                for i in range(req.n_samples):
                    n = len(over.get("completion_ids", range(5)))
                    kw = {"completion_ids": np.full(n, 10, np.int32), **over}
                    rollouts.send(
                        Rollout(
                            group_id=req.group_id,
                            sample_index=i,
                            prompt_index=req.prompt_index,
                            item_id=req.item_id,
                            prompt_ids=req.prompt_ids,
                            logprobs=np.full(n, -1.0, np.float32),
                            versions=np.full(n, version, np.int32),
                            forced=np.zeros(n, np.uint8),
                            finish_reason="stop",
                            reward=float(i % 2),
                            t_queued=1.0,
                            t_started=1.0,
                            t_finished=1.0,
                            **kw,
                        )
                    )
    finally:
        control.close()
        set_process_key(None)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda: None, id="silent"),
        # 16 to 32 rollouts in a row past the 100-token vocabulary: over the old limit of 8, under INVALID_STREAK_MIN.
        pytest.param(lambda: {"completion_ids": np.full(5, 500, np.int32)}, id="invalid"),
    ],
)
def test_a_step_with_no_group_back_is_not_taken_and_the_run_goes_on(tmp_path: Path, spell):
    proc, addrs, run = start_trainer(tmp_path, max_steps=STEPS, group_timeout_s=TIMEOUT_S)
    serve(tmp_path, proc, addrs, run, spell)
    log = (tmp_path / "trainer.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1)), log[-3000:]
    for r in train:  # every step trained on groups that came back: none empty, none without a reward
        assert r["groups"] >= 1 and math.isfinite(r["reward_mean"]) and not r.get("skipped"), r
    assert train[-1]["dropped"] >= 2, train[-1]  # step 1's groups were given up on, not trained on
    assert "reward nan" not in log, log[-3000:]
    waits = [x for x in log.splitlines() if "no group came back" in x]
    assert waits and "step 1: no group came back within group_timeout_s=0.5 s" in waits[0], log[-3000:]
    assert "not a step: waiting" in waits[0], waits[0]


def test_generators_that_never_answer_fail_the_run_naming_it(tmp_path: Path):
    # Alive (heartbeating) but never answering, as a hung engine: without a limit the trainer waited for ever.
    proc, addrs, run = start_trainer(tmp_path, max_steps=STEPS, group_timeout_s=TIMEOUT_S)
    t0 = time.monotonic()
    serve(tmp_path, proc, addrs, run, lambda: None, spell_s=math.inf)
    log = (tmp_path / "trainer.log").read_text()
    assert proc.returncode == 1, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert "no usable group came back for" in last and f"{STALL_GROUP_TIMEOUTS} x group_timeout_s=0.5 s" in last, last
    assert time.monotonic() - t0 < 30, log[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in lines if r["kind"] == "train"]


def test_the_invalid_rollout_limit_has_a_floor_and_scales_with_the_batch():
    # 2 x 2 failed after 8 invalid rollouts in a row, fewer than one re-issue round of a pipelined batch replaces.
    tiny = TrainerConfig(prompts_per_step=2, samples_per_prompt=2)
    assert invalid_streak_limit(tiny.prompts_per_step, tiny.samples_per_prompt) == INVALID_STREAK_MIN == 64
    default = TrainerConfig()
    assert invalid_streak_limit(default.prompts_per_step, default.samples_per_prompt) == 2 * 32 * 8
