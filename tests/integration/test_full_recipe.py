"""examples/full_recipe.toml end to end: forced length interruption in real processes.

A real generator process, configured exactly as `scalerl train` resolves the recipe, serves the warm-started
addition_steps model; this test plays the trainer, runs the trainer's own build_batch on what comes back and
checks what the loss would see. Then `scalerl train` itself runs the recipe for a few steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scalerl.cli.run_config import resolve
from scalerl.generator_service.heldout import InlineScorer
from scalerl.shared.config import dump_toml, to_dict
from scalerl.shared.models import tokenizer as char_tok
from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir
from scalerl.shared.tasks.catalog import load_task
from scalerl.shared.tasks.verifiers import after_delimiter
from scalerl.shared.wire.messages import GenerationRequest, Rollout, SamplingParams, Shutdown
from scalerl.shared.wire.sockets import ControlServer, PullEndpoint, PushEndpoint, ipc_address
from scalerl.trainer_service.batch import batch_stats, build_batch

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "full_recipe.toml"
PROMPTS, SAMPLES = 24, 8
# Also a cooler batch cut at 22 (set on the request): the base model's answers after an interruption at T=1 are
# nearly all wrong (about 1%), at T=0.3 after a cut at 22 about 16% are right, so both outcomes get scored.
COOL = SamplingParams(temperature=0.3, max_new_tokens=64, thinking_budget=22)


@pytest.fixture(scope="module")
def recipe():
    _, cfg = resolve(RECIPE, [], run_dir=tempfile.mkdtemp(prefix="srl-recipe-"))
    return cfg


@pytest.fixture(scope="module")
def warm_model(recipe):
    return ensure_tiny_model(task=recipe.trainer.task)  # cached; about 2 minutes to build the first time


@pytest.fixture(scope="module")
def rollouts(recipe, warm_model):
    """Groups of rollouts from a real generator process running the recipe's [generator] section."""
    work = tempfile.mkdtemp(dir="/tmp", prefix="srlr")  # ipc paths must stay short
    addrs = {f"{k}_addr": ipc_address(k, work) for k in ("request", "rollout", "control", "weights")}
    control = ControlServer(addrs["control_addr"], heartbeat_interval=0.2)
    requests = PushEndpoint(addrs["request_addr"], bind=True)
    pull = PullEndpoint(addrs["rollout_addr"], bind=True, accept=(Rollout,))
    from scalerl.shared.wire.weights.zmq import ZmqWeightSender

    weights = ZmqWeightSender(addrs["weights_addr"])
    # Only the wiring (sockets, no secret) differs from what `scalerl train` would hand its generators, and the
    # generator does not wait for weights: this test publishes none, the model directory is the policy.
    section = {**to_dict(recipe.generator), "peer_timeout_s": 30.0, "wait_for_weights": False}
    config = Path(work) / "generator.toml"
    config.write_text(dump_toml({"generator": section, "wiring": addrs}), encoding="utf-8")
    log = open(Path(work) / "generator.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scalerl.cli", "generator", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        control.wait_for_peers(1, 300)  # the first load of a busy machine can be slow
        task = load_task(recipe.trainer.task)
        items = task.val_items[:PROMPTS]
        recipe_sampling = SamplingParams(temperature=1.0, max_new_tokens=recipe.trainer.max_new_tokens)
        for i, (item, sampling) in enumerate([(it, recipe_sampling) for it in items] + [(it, COOL) for it in items]):
            requests.send(
                GenerationRequest(
                    group_id=f"g{i}",
                    prompt_ids=np.asarray([char_tok.BOS_ID] + char_tok.encode(item.prompt), dtype=np.int32),
                    n_samples=SAMPLES,
                    sampling=sampling,
                    prompt_index=i,
                    item_id=item.id,
                    verifier=f"{task.verifier}|{task.delimiter}",  # as the trainer names it
                    answer=item.answer,
                ),
                timeout_ms=10_000,
            )
        got: dict[str, list[Rollout]] = {}
        deadline = time.monotonic() + 300
        while sum(map(len, got.values())) < 2 * PROMPTS * SAMPLES:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait()
                log.seek(0)
                pytest.fail(f"{sum(map(len, got.values()))} rollouts; generator log: {log.read()[-2000:]}")
            r = pull.recv(timeout_ms=50)
            if r is not None:
                got.setdefault(r.group_id, []).append(r)
            control.recv(timeout_ms=0)
        control.broadcast(Shutdown(reason="test done"))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        for endpoint in (control, requests, pull, weights):
            endpoint.close()
    by_item = {item.id: item for item in items}
    groups = [sorted(got[f"g{i}"], key=lambda r: r.sample_index) for i in range(2 * PROMPTS)]
    return task, groups, by_item


def forced_span(r: Rollout) -> tuple[int, int]:
    idx = np.flatnonzero(np.asarray(r.forced, dtype=bool))
    assert len(idx) and (np.diff(idx) == 1).all(), "the forced tokens are one contiguous run"
    return int(idx[0]), int(idx[-1]) + 1


def test_interrupted_samples_occur_with_the_tasks_text_at_the_drawn_budget(recipe, rollouts):
    task, groups, _ = rollouts
    flat = [r for g in groups[:PROMPTS] for r in g]  # sampled as the recipe samples
    interrupted = [r for r in flat if r.finish_reason == "interrupted"]
    # The recipe's budget cuts about a third of the base model's completions (docs/tasks.md).
    assert 0.15 < len(interrupted) / len(flat) < 0.6, len(interrupted) / len(flat)
    want = tuple(char_tok.encode(task.interruption_text))
    low, high = recipe.generator.thinking_budget
    for r in interrupted:
        start, end = forced_span(r)
        assert tuple(r.completion_ids[start:end].tolist()) == want  # the task's text, not the paper's
        assert low <= start <= high  # forced exactly at the drawn budget
        assert "Answer:" not in char_tok.decode(r.completion_ids[:start].tolist())  # a closed thinking is never cut
        assert np.all(np.asarray(r.logprobs)[start:end] == 0.0)
    for r in flat:
        if r.finish_reason != "interrupted":
            assert not np.any(r.forced)
    assert batch_stats(groups[:PROMPTS], 0)["interruption_rate"] == pytest.approx(len(interrupted) / len(flat))


def test_forced_tokens_carry_no_gradient(rollouts):
    task, groups, _ = rollouts
    batch, _ = build_batch(groups, "batch", zero_variance_filter=False)  # the trainer's own batch builder
    flat = [r for g in groups for r in g]
    assert batch.input_ids.shape[0] == len(flat)
    text_ids = torch.tensor(char_tok.encode(task.interruption_text))
    n = len(text_ids)
    forced_seen = 0
    for row, r in enumerate(flat):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        ids, mask = batch.input_ids[row], batch.loss_mask[row]
        assert (mask[:p] == 0).all() and (mask[p + c :] == 0).all()
        # Where the interruption text sits in the trained sequence, found from the token ids alone.
        at = [i for i in range(p, p + c - n + 1) if torch.equal(ids[i : i + n], text_ids)]
        masked = torch.flatten(torch.nonzero(mask[p : p + c] == 0)) + p
        if r.finish_reason == "interrupted":
            # Exactly the forced text is masked out: the same ids, at the one place they occur.
            assert len(at) == 1 and masked.tolist() == list(range(at[0], at[0] + n))
            forced_seen += 1
        else:
            # The warm start taught the model to write the text itself now and then: its own tokens do count.
            assert masked.numel() == 0
    assert forced_seen > 0


def test_the_verifier_scores_the_answer_written_after_the_interruption(rollouts):
    # What the model happens to answer after the cut depends on the machine's float kernels; what the code
    # guarantees is that the reward reads exactly the text after the forced span. So the sampled rollouts are
    # checked for consistency, and the right/wrong cases are built on their real prefixes.
    task, groups, items = rollouts
    interrupted = 0
    for r in (r for g in groups for r in g):
        text = char_tok.decode(r.completion_ids.tolist())
        assert r.reward == task.verify(text, items[r.item_id])[0]
        if r.finish_reason != "interrupted":
            continue
        interrupted += 1
        _, end = forced_span(r)
        answer = char_tok.decode(r.completion_ids[end:].tolist())  # what the model wrote after the forced text
        assert after_delimiter(text, task.delimiter) == answer
        assert r.reward == float(answer.strip() == items[r.item_id].answer)
        item = items[r.item_id]
        prefix = char_tok.decode(r.completion_ids[:end].tolist())  # thinking + the forced text, as sampled
        wrong = str(int(item.answer) + 1)
        assert task.verify(prefix + item.answer, item)[0] == 1.0
        assert task.verify(prefix + " " + item.answer + " ", item)[0] == 1.0
        assert task.verify(prefix + wrong, item)[0] == 0.0
        assert task.verify(prefix, item)[0] == 0.0  # nothing written after the cut
        # The right answer inside the thinking does not count: only what follows the forced delimiter does.
        cut = prefix.rindex(task.delimiter)
        assert task.verify(prefix[:cut] + item.answer + prefix[cut:] + wrong, item)[0] == 0.0
    assert interrupted > 0


def test_evaluation_interrupts_at_the_fixed_budget_and_reports_both_sides(recipe, warm_model):
    model, tok = load_model_dir(warm_model)
    task = load_task(recipe.trainer.task)
    cfg = recipe.trainer
    state = {k: v.detach() for k, v in model.state_dict().items()}
    evaluation = dataclasses.replace(recipe.eval, prompts=60)
    on = InlineScorer.from_config(evaluation, cfg, warm_model, tok, task).run(state, 0)
    assert on["n_samples"] == evaluation.prompts * evaluation.k
    assert 0.1 < on["interrupted_frac"] < 0.6
    rates = [on["pass_rate_interrupted"], on["pass_rate_uninterrupted"]]
    assert on["pass_rate"] == pytest.approx(on["interrupted_frac"] * rates[0] + (1 - on["interrupted_frac"]) * rates[1])
    off = InlineScorer(warm_model, tok, task, 50, 2, 1.0, cfg.max_new_tokens, True).run(state, 0)
    assert off["interrupted_frac"] == 0.0 and off["pass_rate_interrupted"] is None
    assert off["pass_rate_uninterrupted"] == off["pass_rate"]


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, warm_model):
    """`scalerl train --config examples/full_recipe.toml` for 4 small steps (about 40 s): its metrics lines."""
    run = tmp_path_factory.mktemp("recipe") / "run"
    sets = ["eval.every=4", "eval.prompts=20", "trainer.prompts_per_step=8"]
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--config", str(RECIPE), "--run-dir", str(run)]
        + ["--max-steps", "4", *(x for s in sets for x in ("--set", s))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_scalerl_train_runs_the_full_recipe(train_run):
    train = [x for x in train_run if x["kind"] == "train"]
    assert len(train) == 4 and sum(x["interruption_rate"] for x in train) > 0
    assert all(x["sampled_len_mean"] < x["completion_len_mean"] for x in train if x["interruption_rate"] > 0)
    evals = [x for x in train_run if x["kind"] == "eval"]
    assert [x["step"] for x in evals] == [0, 4]
    for x in evals:  # evaluation interrupts too, at eval.thinking_budget
        assert x["interrupted_frac"] > 0 and x["pass_rate_uninterrupted"] is not None
        assert {"pass_rate_interrupted", "pass_rate", "n_samples"} <= set(x)
