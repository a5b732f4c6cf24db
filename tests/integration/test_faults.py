"""Faults as an operator meets them, on real processes, files and sockets: kills, a second owner, a spoofed peer,
lost and refused requests, bad input, ports in use. Each test reproduces a defect the landed code had."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib

import msgpack
import pytest
import zmq
from conftest import descendants, free_port

from scalerl.shared.models.tiny_model import ensure_tiny_model
from scalerl.shared.wire.codec import PROTOCOL_VERSION, decode, encode
from scalerl.shared.wire.messages import Error, Ready

# Short runs: few evaluation prompts, frequent checkpoints.
QUICK = ["--set", "eval.prompts=20", "--set", "eval.every=5", "--set", "trainer.checkpoint_every=5"]


@pytest.fixture(scope="module")
def tiny_model():
    return ensure_tiny_model()


def scalerl(*args):
    return [sys.executable, "-m", "scalerl.cli", *map(str, args)]


def start_train(run, *args):
    return subprocess.Popen(
        scalerl("train", "--run-dir", run, *QUICK, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def train_steps(run) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"train"' in line for line in path.read_text().splitlines())


def wait_for_steps(run, n, proc=None, timeout=180):
    deadline = time.time() + timeout
    while train_steps(run) < n:
        assert time.time() < deadline, f"no {n} train steps after {timeout} s"
        assert proc is None or proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)


def alive(pid) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


def cmdline(pid) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except FileNotFoundError:  # exited between the listing and the read
        return ""


def generators(pid):
    return [k for k in descendants(pid) if "\0generator\0" in cmdline(k)]


def control_addr(run) -> str:
    return tomllib.loads((run / "config.toml").read_text())["wiring"]["control_addr"]


def test_kill_9_of_the_parent_leaves_nothing_behind_and_resume_works(tmp_path, tiny_model):
    run = tmp_path / "run"
    proc = start_train(run, "--max-steps", 500)
    wait_for_steps(run, 3, proc)
    kids = descendants(proc.pid)
    assert len(kids) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The trainer writes its checkpoint on the way out: seconds, but ~10 on this 2-core machine when other work
    # loads it (5 s failed once there), so the bound leaves room; what is checked is that nothing outlives it.
    deadline = time.time() + 20
    while any(alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.1)
    assert [k for k in kids if alive(k)] == []
    # The trainer checkpointed on its way out, the lock died with the processes: --resume goes on from there.
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    r = subprocess.run(
        scalerl("train", "--run-dir", run, "--resume", *QUICK, "--max-steps", last + 2),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert steps == list(range(1, last + 3))
    # Resumed again at max_steps: told so in one line, nothing started, nothing written.
    metrics = (run / "metrics.jsonl").read_text()
    r = subprocess.run(
        scalerl("train", "--run-dir", run, "--resume", *QUICK, "--max-steps", last + 2),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and f"already at step {last + 2}" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (run / "metrics.jsonl").read_text() == metrics


def test_a_second_owner_is_refused_while_the_first_lives(tmp_path, tiny_model):
    run = tmp_path / "run"
    first = start_train(run, "--max-steps", 500)
    try:
        wait_for_steps(run, 2, first)
        for args in (["train", "--run-dir", run, "--resume"], ["trainer", "--config", run / "config.toml", "--resume"]):
            r = subprocess.run(scalerl(*args), capture_output=True, text=True, timeout=120)
            assert r.returncode == 2, r.stderr
            assert f"pid {first.pid}" in r.stderr and socket.gethostname() in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1
        # The refused attempts started nothing and cut nothing: the first run's metrics keep growing.
        n = train_steps(run)
        wait_for_steps(run, n + 2, first)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143


@pytest.mark.parametrize("n_kills", [pytest.param(3, id="3"), pytest.param(10, id="10", marks=pytest.mark.slow)])
def test_kill_9_of_a_generator_never_hangs_the_trainer(tmp_path, tiny_model, n_kills):
    rng = random.Random(n_kills)
    for i in range(n_kills):
        run = tmp_path / f"run{i}"
        proc = start_train(run, "--max-steps", 500, "--set", "run.restart_generators=false")
        wait_for_steps(run, rng.randrange(0, 6), proc)
        time.sleep(rng.random())  # anywhere in a step: generating, publishing, evaluating
        # With 0 steps waited the generator may not be spawned yet: kill it as soon as it exists.
        deadline = time.time() + 60
        while not (gens := generators(proc.pid)):
            assert time.time() < deadline and proc.poll() is None, "no generator process within 60 s"
            time.sleep(0.05)
        kids = descendants(proc.pid)
        os.kill(gens[0], signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
        assert proc.returncode == 1 and "gen-0 exited with code -9" in err, err[-2000:]
        assert took < 10, f"kill {i}: exit took {took:.1f} s"
        assert [k for k in kids if alive(k)] == []
        # Whatever was trained is checkpointed; a kill during start-up leaves nothing trained to keep.
        assert (run / "checkpoints" / "latest").exists() or train_steps(run) == 0


def test_a_spoofed_generator_is_refused_and_the_run_goes_on(tmp_path, tiny_model):
    run = tmp_path / "run"
    proc = start_train(run, "--max-steps", 12)
    wait_for_steps(run, 2, proc)
    ctx = zmq.Context.instance()
    takeover, intruder = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        # Same routing id as the live generator: zmq refuses the duplicate (no router handover).
        takeover.setsockopt(zmq.ROUTING_ID, b"gen-0")
        takeover.connect(control_addr(run))
        takeover.send(encode(Ready(peer_id="gen-0", role="generator")))
        # A new id without the run's secret: refused, and told why.
        intruder.setsockopt(zmq.ROUTING_ID, b"gen-7")
        intruder.connect(control_addr(run))
        intruder.send(encode(Ready(peer_id="gen-7", role="generator", token="guess")))
        assert intruder.poll(10_000), "the trainer never answered the intruder"
        reply = decode(intruder.recv())
        while not isinstance(reply, Error):  # heartbeats are never sent to unknown peers, but be tolerant
            reply = decode(intruder.recv())
        assert reply.code == "unauthorized"
    finally:
        takeover.close(linger=0)
        intruder.close(linger=0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert train_steps(run) == 12
    assert "without this run's secret" in (run / "logs" / "trainer.log").read_text()
    assert oct((run / ".secret").stat().st_mode & 0o777) == "0o600"


def test_requests_taken_by_a_stranger_are_issued_again(tmp_path, tiny_model):
    """Any client on the request socket can pull groups away; the trainer must not wait for them forever."""
    run = tmp_path / "run"
    proc = start_train(run, "--max-steps", 30, "--set", "trainer.group_timeout_s=2")
    # Connected as soon as the address is known, before the first request: a short run can be over in seconds,
    # before a thief that waited for step 1 would get anything. 30 steps outlast the 2 s timeout, so the
    # expiry is counted on a train line rather than after the last one.
    deadline = time.time() + 120
    while not (run / "config.toml").exists():
        assert time.time() < deadline and proc.poll() is None, "no config.toml"
        time.sleep(0.05)
    addr = tomllib.loads((run / "config.toml").read_text())["wiring"]["request_addr"]
    thief = zmq.Context.instance().socket(zmq.PULL)
    thief.connect(addr)
    stolen = 0
    deadline = time.time() + 20
    while stolen < 3 and time.time() < deadline:
        if thief.poll(200):
            thief.recv()
            stolen += 1
    thief.close(linger=0)
    assert stolen >= 1
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x][-1]
    assert last["step"] == 30 and last["timed_out"] >= 1
    assert "issuing it again" in (run / "logs" / "trainer.log").read_text()


def jsonl_task(path, val=None, verifier=None):
    """--set flags of a jsonl task (the built-in model: a jsonl task without run.model gets the addition one)."""
    sets = {"name": "jsonl", "path": path, "val_path": val, "verifier": verifier}
    return [x for k, v in sets.items() if v is not None for x in ("--set", f"trainer.task.{k}='{v}'")]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(x) + "\n" for x in items))


def addition_items(n, long_every=0, long_chars=400, prefix="q"):
    items = []
    for i in range(n):
        a, b = i % 50, (7 * i) % 50
        prompt = f"{a}+{b}="
        if long_every and i % long_every == 0:
            prompt = "9" * long_chars + "+0="
        items.append({"id": f"{prefix}{i}", "prompt": prompt, "answer": str(a + b)})
    return items


def test_a_refused_request_is_counted_and_its_prompt_dropped(tmp_path, tiny_model):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_jsonl(train, addition_items(200, long_every=10))  # 20 prompts the generator refuses
    write_jsonl(val, addition_items(30, prefix="v"))
    run = tmp_path / "run"
    proc = start_train(
        run,
        "--max-steps",
        8,
        *jsonl_task(train, val, "numeric"),
        "--set",
        "generator.max_seq_len=128",
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x][-1]
    assert last["step"] == 8 and last["refused"] >= 1
    assert "refused group" in (run / "logs" / "trainer.log").read_text()


def test_an_overlong_held_out_prompt_is_refused_at_start_with_its_line(tmp_path, tiny_model):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_jsonl(train, addition_items(50))
    items = addition_items(5, prefix="v")
    items.append({"prompt": "1" * 3000 + "+1=", "answer": "2"})  # line 6, no id: the line names it
    write_jsonl(val, items)
    r = subprocess.run(
        scalerl("train", "--run-dir", tmp_path / "run", *jsonl_task(train, val)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{val}:6" in r.stderr and "max_seq_len" in r.stderr


@pytest.mark.parametrize(
    "line, needle",
    [(b"{not json\n", "not valid JSON"), (b'{"prompt": "", "answer": "1"}\n', "'prompt'"), (b"\xff\xfe\n", "UTF-8")],
)
def test_a_bad_task_line_is_exit_2_before_any_process_starts(tmp_path, tiny_model, line, needle):
    data = tmp_path / "t.jsonl"
    data.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\n' * 3 + line)
    r = subprocess.run(
        scalerl("train", "--run-dir", tmp_path / "run", *jsonl_task(data)), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and f"{data}:4" in r.stderr and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "logs").exists()  # nothing was started


@pytest.mark.parametrize(
    "offset, key, sets",
    [(2, "control_addr", []), (6, "weights_dist_init_method", ["--set", "generator.weights_transport='dist'"])],
    ids=["control", "weight-group"],
)
def test_a_tcp_port_in_use_is_exit_2_naming_it(tmp_path, offset, key, sets):
    base = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + offset))
        busy.listen()
        r = subprocess.run(
            scalerl(
                "train",
                "--run-dir",
                tmp_path / "run",
                "--set",
                "run.transport='tcp'",
                "--set",
                f"run.base_port={base}",
                *sets,
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2 and f"port {base + offset}" in r.stderr and key in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run" / "logs").exists()


def test_sigterm_right_after_start_exits_fast(tmp_path, tiny_model):
    run = tmp_path / "run"
    proc = start_train(run, "--max-steps", 500)
    deadline = time.time() + 60
    while not (run / "logs" / "trainer.log").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    kids = descendants(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert time.monotonic() - t0 < 10
    assert [k for k in kids if alive(k)] == []


def test_a_dead_trainer_ends_the_run_within_seconds_and_generators_hear_the_reason(tmp_path, tiny_model):
    run = tmp_path / "run"
    proc = start_train(run, "--max-steps", 500)
    wait_for_steps(run, 2, proc)
    trainer = [k for k in descendants(proc.pid) if "\0trainer\0" in open(f"/proc/{k}/cmdline").read()][0]
    os.kill(trainer, signal.SIGKILL)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "trainer exited with code -9" in err
    assert time.monotonic() - t0 < 10
    # A graceful stop tells generators the real reason.
    run2 = tmp_path / "run2"
    proc = start_train(run2, "--max-steps", 500)
    wait_for_steps(run2, 2, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert "trainer stopped by SIGTERM" in (run2 / "logs" / "gen-0.log").read_text()


def test_a_verifier_that_always_fails_is_reported_once(tmp_path, tiny_model):
    mod = tmp_path / "broken_verifier.py"
    mod.write_text("def verify(completion, item):\n    raise RuntimeError('boom')\n")
    train = tmp_path / "train.jsonl"
    write_jsonl(train, addition_items(120))
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen(
        scalerl(
            "train",
            "--run-dir",
            run,
            *QUICK,
            "--max-steps",
            4,
            *jsonl_task(train, verifier="broken_verifier:verify"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert err.count("the verifier failed on 100% of") == 1, err
    gen_log = (run / "logs" / "gen-0.log").read_text()
    samples = 4 * 32 * 8
    assert 1 <= gen_log.count("verifier broken_verifier:verify failed") < samples / 10  # rate-limited
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert all(r["verifier_errors"] == r["samples"] for r in lines)


def test_socket_files_are_removed_and_an_empty_metrics_file_does_not_block(tmp_path, tiny_model):
    from scalerl.cli.run_config import ipc_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # what a start that failed before its first evaluation leaves
    r = subprocess.run(scalerl("train", "--run-dir", run, *QUICK, "--max-steps", 2), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not ipc_dir(str(run), create=False).exists()


def test_garbage_hello_on_the_control_socket_is_ignored(tmp_path, tiny_model):
    """A malformed Ready never registers a peer nor stops the trainer."""
    run = tmp_path / "run"
    proc = start_train(run, "--max-steps", 6)
    wait_for_steps(run, 1, proc)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, b"gen-9")
    s.connect(control_addr(run))
    s.send(msgpack.packb([PROTOCOL_VERSION, "ready", {"peer_id": 5}]))
    s.close(linger=200)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
