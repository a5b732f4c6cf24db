"""A real trainer process fed by this test, which plays its generator over the real, authenticated sockets: rollouts
that decode fine but do not fit the policy or their request are dropped with one line, and training goes on.

Before the check in trainer_service/collector.py a single rollout with a token id past the tiny model's 100-row
embedding killed the trainer a step later (IndexError in the embedding lookup), and one of 200k tokens (well within
the 64 MiB message limit) killed it with a 40 GB allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from scalerl.shared.models.tiny_model import ensure_tiny_model
from scalerl.shared.wire import auth
from scalerl.shared.wire.messages import GenerationRequest, Rollout
from scalerl.shared.wire.sockets import ControlClient, PullEndpoint, PushEndpoint, set_process_key
from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver

STEPS = 8


def start_trainer(tmp_path: Path, **over) -> tuple[subprocess.Popen, dict, Path]:
    model = ensure_tiny_model()
    sock = tmp_path / "s"
    sock.mkdir()
    addrs = {a: f"ipc://{sock}/{a[:3]}" for a in ("request_addr", "rollout_addr", "control_addr", "weights_addr")}
    run = tmp_path / "run"
    trainer = {
        "run_dir": str(run),
        "model": str(model),
        "max_steps": STEPS,
        "checkpoint_every": 100,
        "max_off_policy": 2,
        "peer_timeout_s": 30.0,
        "group_timeout_s": 3.0,
        "prompts_per_step": 2,
        "samples_per_prompt": 2,
        **over,
    }
    text = (
        f'[generator]\nmodel = "{model}"\n[wiring]\n'
        + "".join(f'{k} = "{v}"\n' for k, v in addrs.items())
        + f'secret_file = "{run}/.secret"\n[trainer]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in trainer.items())
        + "[eval]\nevery = 1000\nprompts = 4\n"
    )
    (tmp_path / "cfg.toml").write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scalerl.cli", "trainer", "--config", str(tmp_path / "cfg.toml")],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "trainer.log", "w"),
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    deadline = time.monotonic() + 120
    while not (run / ".secret").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()[-2000:]
        time.sleep(0.1)
    return proc, addrs, run


def serve(
    tmp_path: Path, proc: subprocess.Popen, addrs: dict, run: Path, hostile: list[dict], extra=None, always=None
) -> None:
    """Play a well-formed generator until the trainer exits; once at version 2, send the `hostile` rollout fields
    (one sample each) and call `extra(secret)`. `always`: fields of every rollout (a generator serving another
    model)."""
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
            version, deadline = 0, time.monotonic() + 120
            while proc.poll() is None:
                assert time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()[-2000:]
                control.recv(timeout_ms=0)
                got = weights.receive(timeout_s=0)
                version = got[0] if got is not None else version
                if extra is not None and version >= 2:
                    extra(secret)
                    extra = None
                req = requests.recv(timeout_ms=50)
                if req is None:
                    continue
                for i in range(req.n_samples):
                    over = hostile.pop() if hostile and i == 0 and version >= 2 else always or {}
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


def test_out_of_vocabulary_and_overlong_rollouts_are_dropped_and_training_goes_on(tmp_path: Path):
    proc, addrs, run = start_trainer(tmp_path)
    hostile = [
        {"completion_ids": np.full(5, 10**6, np.int32)},  # past the 100-token vocabulary
        {"completion_ids": np.full(200_000, 10, np.int32)},  # max_new_tokens is far smaller
    ]
    serve(tmp_path, proc, addrs, run, hostile)
    log = (tmp_path / "trainer.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert not hostile and train[-1]["invalid_rollouts"] == 2, log[-3000:]
    # One line for the first (the 200k tokens), naming the group; the second falls in the 30 s throttle.
    dropped = [x for x in log.splitlines() if "invalid rollout dropped" in x]
    assert len(dropped) == 1 and " group g" in dropped[0] and "more than max_new_tokens" in dropped[0], log[-3000:]


def test_a_run_whose_every_rollout_is_invalid_fails_with_one_line(tmp_path: Path):
    # A generator serving another model (token ids past this policy's vocabulary): each rollout was dropped and the
    # run waited out group timeouts forever, saying only a throttled warning. INVALID_STREAK_MIN (64) rollouts in a row
    # invalid now fail it (checkpoint, exit 1), naming the cause: at 2 prompts x 8 samples the floor, not 2 batches
    # (32), applies. Two batches in flight send 32 invalid rollouts a round: the streak ends the run at the first
    # re-issue, before the stall limit (5 group timeouts without a usable group), which would name no cause.
    proc, addrs, run = start_trainer(tmp_path, group_timeout_s=0.3, samples_per_prompt=8)
    t0 = time.monotonic()
    serve(tmp_path, proc, addrs, run, [], always={"completion_ids": np.full(5, 500, np.int32)})
    log = (tmp_path / "trainer.log").read_text()
    assert proc.returncode == 1, log[-3000:]
    assert time.monotonic() - t0 < 60
    last = log.strip().splitlines()[-1]
    assert last.startswith("scalerl trainer: error: 64 rollouts in a row were invalid"), log[-3000:]
    assert "token id 500 outside the vocabulary of 100" in last, last
    assert (run / "checkpoints" / "latest").exists(), sorted(p.name for p in run.iterdir())  # as PeerError does
    # While it waited, no step was taken on nothing (each had been a train line without a reward).
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "reward nan" not in log and not [r for r in lines if r["kind"] == "train"], log[-3000:]


def test_a_silent_peer_calling_itself_the_evaluator_does_not_stop_a_run_without_one(tmp_path: Path):
    # A peer with the run's secret that registered with role "evaluator" and went silent failed the run ("evaluator
    # imp stopped answering"), though this run has no evaluator process; a silent "generator" was only dropped.
    # Steps of 0.5 s: the run outlasts the impostor's 2 s of silence by several seconds.
    proc, addrs, run = start_trainer(tmp_path, peer_timeout_s=2.0, max_steps=12, debug_step_sleep_s=0.5)

    def impostor(secret: str) -> None:
        fake = ControlClient(addrs["control_addr"], peer_id="imp", role="evaluator", token=secret)
        fake.recv(timeout_ms=300)
        fake.close()

    serve(tmp_path, proc, addrs, run, [], extra=impostor)
    log = (tmp_path / "trainer.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "peer imp said it was an evaluator, but this run has none" in log, log[-3000:]
