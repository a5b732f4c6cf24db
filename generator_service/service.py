"""The generator service: one process that turns GenerationRequests into scored Rollouts.

Single-threaded loop around a GenerationBackend (the torch engine or vLLM). The trainer binds every
socket; this process connects. Each turn of the loop:

  1. control: receive (Shutdown stops us; calling recv also sends our heartbeat and stats);
     a trainer silent for peer_timeout_s makes us exit non-zero;
  2. weights: if a newer version arrived, swap it in between two engine steps (PipelineRL);
  3. requests: take what arrived without blocking while the engine has room; malformed
     or unservable ones are counted and reported as Error on the control channel;
  4. one engine step if there is work, else a short blocking poll on all sockets;
  5. finished completions: decode, score with the request's verifier, push as Rollouts
     (through an outbox, so a trainer that stops reading never blocks the loop).

Shutdown, SIGTERM and SIGINT stop it cleanly (exit 0); sockets close with linger 0.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import time
from typing import Any

import zmq

from scalerl.generator_service.config import GeneratorConfig
from scalerl.generator_service.rollout_builder import (
    PendingGroup,
    TokenSettings,
    VerifierCache,
    build_rollout,
    engine_requests,
    pending_group,
)
from scalerl.shared.config import ConfigError
from scalerl.shared.errors import one_line
from scalerl.shared.ownership import parent_gone, read_secret
from scalerl.shared.tasks.types import TaskError
from scalerl.shared.wire.messages import Error, GenerationRequest, ProtocolError, Shutdown
from scalerl.shared.wire.sockets import ControlClient, PullEndpoint, PushEndpoint

log = logging.getLogger("scalerl.generator")

IDLE_POLL_MS = 50  # longest the loop sleeps when it has nothing to do
MAX_READS_PER_TURN = 256  # bounds the time one turn spends on a flood of incoming messages
ERROR_CHARS = 400  # Error.message is one line for a log; cut long reasons


class TrainerGone(RuntimeError):
    """The trainer stopped talking; the message is the one line printed before exiting 1."""


class _Stop(BaseException):
    """Raised by the signal handler while starting up (the loop polls a flag instead)."""


class GeneratorService:
    """Owns the sockets and the loop; `run()` returns when asked to stop."""

    def __init__(self, cfg: GeneratorConfig, backend: Any, tokenizer: Any, tokens: TokenSettings) -> None:
        self.cfg = cfg
        self.backend = backend
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.stop_reason: str | None = None
        self.verifiers = VerifierCache()
        self.in_flight: dict[str, tuple[PendingGroup, int]] = {}  # engine request id -> (group, k)
        self.outbox: collections.deque = collections.deque()
        self.serial = 0
        self.n_requests = self.n_bad_requests = self.n_rollouts = self.n_bad_rollouts = 0
        self.n_bad_weights = 0
        self.have_weights = not cfg.wait_for_weights
        version = backend.stats().policy_version
        ctx = zmq.Context.instance()
        self.requests = PullEndpoint(cfg.request_addr, bind=False, accept=(GenerationRequest,), context=ctx)
        self.rollouts = PushEndpoint(cfg.rollout_addr, bind=False, context=ctx)
        self.weights = _weight_receiver(cfg, ctx)
        self.control = ControlClient(
            cfg.control_addr,
            peer_id=cfg.peer_id,
            role="generator",
            version=version,
            info={"backend": cfg.backend, "max_batch": cfg.max_batch},
            heartbeat_interval=cfg.heartbeat_s,
            context=ctx,
            token=read_secret(cfg.secret_file, wait_s=cfg.peer_timeout_s),
        )
        # Idle waits wake on any incoming message; the second poller leaves out requests we are
        # not taking yet (engine full or waiting for weights), or their presence would spin the loop.
        self.poller, self.poller_no_requests = zmq.Poller(), zmq.Poller()
        for sock in (self.requests.socket, self.control.socket, self.weights.socket):
            self.poller.register(sock, zmq.POLLIN)
        for sock in (self.control.socket, self.weights.socket):
            self.poller_no_requests.register(sock, zmq.POLLIN)
        self._t_start = time.monotonic()
        self._stats_at = 0.0
        self._stats_tokens = 0

    # ---- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until Shutdown or a signal; raises TrainerGone if the trainer disappears."""
        while self.stop_reason is None:
            self._poll_control()
            if self.stop_reason is not None:
                break
            self._check_trainer_alive()
            if parent_gone():
                self.stop_reason = "scalerl train (the parent process) is gone"
                break
            self._poll_weights()
            self._take_requests()
            if self.backend.has_unfinished():
                self.backend.step()
                self._ship(self.backend.collect_finished())
            else:
                poller = self.poller if self._room_for_requests() else self.poller_no_requests
                poller.poll(IDLE_POLL_MS if not self.outbox else 5)
            self._flush()
            self._refresh_stats()
        log.info(
            "stopping (%s): %d rollouts sent, %d samples in flight dropped",
            self.stop_reason,
            self.n_rollouts,
            len(self.in_flight),
        )

    def _poll_control(self) -> None:
        for _ in range(MAX_READS_PER_TURN):
            msg = self.control.recv(timeout_ms=0)
            if msg is None:
                return
            if isinstance(msg, Shutdown):
                self.stop_reason = f"Shutdown from the trainer: {msg.reason or 'no reason given'}"
                return
            if isinstance(msg, Error) and msg.code == "unauthorized":
                raise ConfigError(f"the trainer refused generator {self.cfg.peer_id}: {msg.message}")
            if isinstance(msg, Error):
                log.warning("trainer reports %s: %s", msg.code, msg.message)

    def _check_trainer_alive(self) -> None:
        last = self.control.monitor.last_seen(ControlClient.SERVER) or self._t_start
        silent = time.monotonic() - last
        if silent > self.cfg.peer_timeout_s:
            raise TrainerGone(
                f"trainer silent for {silent:.1f} s (peer_timeout_s = {self.cfg.peer_timeout_s:g}, "
                f"control {self.cfg.control_addr}); exiting"
            )

    def _poll_weights(self) -> None:
        t0 = time.perf_counter()
        got = self.weights.receive(timeout_s=0)
        if got is None:
            return
        received = time.perf_counter() - t0  # generation waits for the transfer too: single thread
        version, tensors = got
        running = self.backend.stats().running
        try:
            copied = self.backend.update_weights(tensors, version)
        except (KeyError, ValueError) as e:
            self.n_bad_weights += 1
            self._report(
                "bad_weights",
                f"weights v{version} refused, keeping v{self.backend.stats().policy_version}: {one_line(e)}",
            )
            return
        self.have_weights = True
        log.info(
            "weights v%d applied: generation paused %.1f ms (receive %.1f + load %.1f) with %d sequences running",
            version,
            (received + copied) * 1e3,
            received * 1e3,
            copied * 1e3,
            running,
        )

    # ---- requests -----------------------------------------------------------------------------

    def _take_requests(self) -> None:
        rejected_before = self.requests.n_rejected
        for _ in range(MAX_READS_PER_TURN):
            if not self._room_for_requests():
                break
            before = self.requests.n_rejected
            msg = self.requests.recv(timeout_ms=0)
            if msg is not None:
                self._accept(msg)
            elif self.requests.n_rejected == before:
                break
        n_bad = self.requests.n_rejected - rejected_before
        if n_bad:
            self._report(
                "bad_message", f"{n_bad} malformed message(s) on the request socket, last: {self.requests.last_error}"
            )

    def _room_for_requests(self) -> bool:
        # Running plus one batch waiting is enough; the rest stays queued in zmq, where it also
        # counts against our HWM so the trainer's round robin favours less loaded generators.
        return self.have_weights and len(self.in_flight) < 2 * self.cfg.max_batch

    def _accept(self, req: GenerationRequest) -> None:
        t_queued = time.time()
        self.n_requests += 1
        try:
            verifier = self.verifiers.get(req.verifier)
            reqs = engine_requests(self.serial, req, self.cfg, self.tokens)
            self.backend.add_requests(reqs)  # validates the whole group before queueing any of it
        except (TaskError, ValueError) as e:
            self.n_bad_requests += 1
            self._report("bad_request", one_line(e), req.group_id)
            return
        self.serial += 1
        prompt_text = self.tokenizer.decode(req.prompt_ids.tolist(), skip_special_tokens=True)
        group = pending_group(req, verifier, prompt_text, t_queued)
        for k, r in enumerate(reqs):
            self.in_flight[r.request_id] = (group, k)

    # ---- rollouts -----------------------------------------------------------------------------

    def _ship(self, completions: list) -> None:
        for c in completions:
            group, k = self.in_flight.pop(c.request_id)
            text = self.tokenizer.decode(c.token_ids.tolist(), skip_special_tokens=True)
            reward, details = group.verifier(text, group.item)  # never raises (make_verifier)
            try:
                self.outbox.append(build_rollout(group, k, c, reward, details))
            except ProtocolError as e:  # a bug on our side: say so rather than leave the group hanging silently
                self.n_bad_rollouts += 1
                self._report("bad_rollout", one_line(e), group.request.group_id)

    def _flush(self) -> None:
        while self.outbox:
            try:
                self.rollouts.send(self.outbox[0], timeout_ms=0)
            except TimeoutError:
                return  # trainer not reading (or gone): retry next turn
            self.outbox.popleft()
            self.n_rollouts += 1

    # ---- reporting ----------------------------------------------------------------------------

    def _report(self, code: str, message: str, group_id: str = "") -> None:
        message = message[:ERROR_CHARS]
        log.warning("%s%s: %s", code, f" (group {group_id!r})" if group_id else "", message)
        try:
            self.control.send(
                Error(peer_id=self.cfg.peer_id, code=code, message=message, group_id=group_id), timeout_ms=0
            )
        except (TimeoutError, zmq.ZMQError):
            pass  # the counters in the heartbeat still carry it

    def _refresh_stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_at < self.cfg.heartbeat_s / 2:
            return
        s = self.backend.stats()
        tokens = s.sampled_tokens + s.forced_tokens
        rate = (tokens - self._stats_tokens) / (now - self._stats_at) if self._stats_at else 0.0
        self._stats_at, self._stats_tokens = now, tokens
        self.control.stats = {
            "version": s.policy_version,
            "running": s.running,
            "waiting": s.waiting,
            "queue_depth": len(self.in_flight),
            "outbox": len(self.outbox),
            "tokens_per_s": round(rate, 1),
            "tokens": tokens,
            "forced_tokens": s.forced_tokens,
            "n_requests": self.n_requests,
            "n_rollouts": self.n_rollouts,
            "n_rejected": self.requests.n_rejected,
            "n_bad_requests": self.n_bad_requests,
            "n_bad_rollouts": self.n_bad_rollouts,
            "weight_updates": s.weight_updates,
            "n_bad_weights": self.n_bad_weights,
            "last_update_pause_ms": round(s.last_update_pause_s * 1e3, 3),
            "busy_s": round(s.busy_s, 3),
        }

    def close(self) -> None:
        for endpoint in (self.requests, self.rollouts, self.weights, self.control):
            endpoint.close()  # linger 0: whatever is unsent is dropped, we are leaving
        close_backend = getattr(self.backend, "close", None)
        if close_backend is not None:  # the vLLM backend owns engine processes
            close_backend()


def _weight_receiver(cfg: GeneratorConfig, ctx: zmq.Context):
    from scalerl.shared.wire import weight_sync

    # version -1: take the trainer's weights even if it is still at version 0; the model
    # directory need not hold them (a resumed trainer is ahead of it).
    if cfg.weights_transport == "zmq":
        return weight_sync.ZmqWeightReceiver(cfg.weights_addr, peer_id=cfg.peer_id, version=-1, context=ctx)
    if cfg.weights_transport.startswith("vllm-"):
        # vLLM's workers joined the group when the engine started (VllmBackend); the backend takes the
        # announcement as its update_weights argument and has them receive the broadcasts.
        return weight_sync.AnnouncementReceiver(
            cfg.weights_addr, transport=cfg.weights_transport, peer_id=cfg.peer_id, version=-1, context=ctx
        )
    group = weight_sync.open_weight_group(
        cfg.dist_init_method, cfg.weight_rank, cfg.dist_world_size, backend=cfg.dist_backend
    )
    device = "cuda" if cfg.dist_backend == "nccl" else "cpu"  # NCCL broadcasts device tensors only
    return weight_sync.DistWeightReceiver(cfg.weights_addr, group, peer_id=cfg.peer_id, device=device, context=ctx)


# ---- entry points -----------------------------------------------------------------------------


def run_generator(cfg: GeneratorConfig) -> int:
    """Run one generator until stopped. Returns the exit code: 0 stopped on request, 1 failure,
    2 bad config; errors are printed as one line on stderr."""
    state: dict[str, Any] = {"service": None, "stop": None}

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if state["service"] is None:
            # Also kept: raised inside an import's callback, the exception is printed and swallowed.
            state["stop"] = name
            raise _Stop(name)
        state["service"].stop_reason = name

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    service = None
    try:
        import torch  # here, not at the top: a bad config exits before the slow import

        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # two busy processes may share a few cores
        from scalerl.generator_service.model_setup import load_torch_backend, load_vllm_backend, model_dir

        path = model_dir(cfg)
        load = load_vllm_backend if cfg.backend == "vllm" else load_torch_backend
        backend, tokenizer, tokens = load(cfg, path)
        service = state["service"] = GeneratorService(cfg, backend, tokenizer, tokens)
        if state["stop"] is not None:  # a stop during the load that did not surface as _Stop
            service.stop_reason = state["stop"]
        log.info(
            "generator %s up (pid %d): model %s, backend %s, max_batch %d, weights over %s",
            cfg.peer_id,
            os.getpid(),
            path,
            cfg.backend,
            cfg.max_batch,
            cfg.weights_transport,
        )
        service.run()
        return 0
    except _Stop as e:
        log.info("stopped by %s while starting", e)
        return 0
    except ConfigError as e:
        print(f"scalerl generator: error: {one_line(e)}", file=sys.stderr)
        return 2
    except TrainerGone as e:
        print(f"scalerl generator: error: {one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        log.exception("generator failed")
        if service is not None:
            service._report("engine_failure", f"{type(e).__name__}: {one_line(e)}")
            time.sleep(0.1)  # let the Error leave before the linger-0 close drops it
        print(f"scalerl generator: error: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if service is not None:
            service.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def configure_logging(peer_id: str) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s generator[{peer_id}] %(levelname)s %(message)s"
    )
