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
     (through an outbox, so a trainer that stops reading never blocks the loop); a heartbeat
     that falls due between two verifications (a code sample takes up to its sandbox timeout) goes out then.

Shutdown, SIGTERM and SIGINT stop it cleanly (exit 0); sockets close with linger 0.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from typing import Any

import zmq

from scalerl.generator_service.config import GeneratorConfig
from scalerl.generator_service.peer import MAX_READS_PER_TURN, PeerService, run_peer
from scalerl.generator_service.rollout_builder import (
    PendingGroup,
    TokenSettings,
    VerifierCache,
    build_rollout,
    engine_requests,
    pending_group,
)
from scalerl.shared.errors import one_line
from scalerl.shared.tasks.types import TaskError
from scalerl.shared.wire import auth
from scalerl.shared.wire.messages import GenerationRequest, ProtocolError
from scalerl.shared.wire.sockets import PullEndpoint, PushEndpoint
from scalerl.shared.wiring import RunWiring

log = logging.getLogger("scalerl.generator")

IDLE_POLL_MS = 50  # longest the loop sleeps when it has nothing to do


class GeneratorService(PeerService):
    """Owns the request, rollout and weight sockets and the loop; `run()` returns when asked to stop."""

    role = "generator"

    def __init__(
        self, cfg: GeneratorConfig, wiring: RunWiring, backend: Any, tokenizer: Any, tokens: TokenSettings
    ) -> None:
        ctx: zmq.Context = zmq.Context.instance()
        info = {"backend": cfg.backend, "max_batch": cfg.max_batch}
        super().__init__(cfg, wiring, info, version=backend.stats().policy_version, context=ctx)
        self.backend = backend
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.verifiers = VerifierCache()
        self.in_flight: dict[str, tuple[PendingGroup, int]] = {}  # engine request id -> (group, k)
        self.outbox: collections.deque = collections.deque()
        self.serial = 0
        self.n_requests = self.n_bad_requests = self.n_rollouts = self.n_bad_rollouts = 0
        self.n_bad_weights = 0
        self.have_weights = not cfg.wait_for_weights
        # Requests carry the run's MAC (channel "request"): one from any other process is dropped unread.
        self.requests = PullEndpoint(
            wiring.request_addr,
            bind=False,
            accept=(GenerationRequest,),
            context=ctx,
            key=self.key,
            channel=auth.REQUEST,
        )
        self.rollouts = PushEndpoint(wiring.rollout_addr, bind=False, context=ctx)
        self.weights = _weight_receiver(cfg, wiring, ctx, self.key)
        # Idle waits wake on any incoming message; the second poller leaves out requests we are
        # not taking yet (engine full or waiting for weights), or their presence would spin the loop.
        self.poller, self.poller_no_requests = zmq.Poller(), zmq.Poller()
        for sock in (self.requests.socket, self.control.socket, self.weights.socket):
            self.poller.register(sock, zmq.POLLIN)
        for sock in (self.control.socket, self.weights.socket):
            self.poller_no_requests.register(sock, zmq.POLLIN)
        self._stats_at = 0.0
        self._stats_tokens = 0

    # ---- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until Shutdown or a signal; raises TrainerGone if the trainer disappears."""
        while self.stop_reason is None:
            self.control_messages()  # nothing but Shutdown is for a generator; the base logs errors
            if self.stop_reason is None:
                self.check_trainer()
            if self.stop_reason is not None:
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
            self.report(
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
            self.report(
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
            self.report("bad_request", one_line(e), req.group_id)
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
            # A code sample can take the sandbox's whole timeout, and one engine step can finish many: without
            # this the trainer heard nothing until the loop's next control_messages() and dropped us as silent.
            self.control.heartbeat_if_due()
            try:
                self.outbox.append(build_rollout(group, k, c, reward, details))
            except ProtocolError as e:  # a bug on our side: say so rather than leave the group hanging silently
                self.n_bad_rollouts += 1
                self.report("bad_rollout", one_line(e), group.request.group_id)

    def _flush(self) -> None:
        while self.outbox:
            try:
                self.rollouts.send(self.outbox[0], timeout_ms=0)
            except TimeoutError:
                return  # trainer not reading (or gone): retry next turn
            self.outbox.popleft()
            self.n_rollouts += 1

    # ---- reporting ----------------------------------------------------------------------------

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


def _weight_receiver(cfg: GeneratorConfig, wiring: RunWiring, ctx: zmq.Context, key: bytes | None):
    from scalerl.shared.wire.weights.dist import open_weight_group
    from scalerl.shared.wire.weights.registry import weight_transport

    # version -1: take the trainer's weights even if it is still at version 0; the model
    # directory need not hold them (a resumed trainer is ahead of it).
    transport = weight_transport(cfg.weights_transport)
    receiver = transport.receiver_class()
    where = dict(peer_id=cfg.peer_id, version=-1, context=ctx, key=key)
    if not transport.broadcast:
        return receiver(wiring.weights_addr, **where)
    if transport.vllm_engine is not None:
        # vLLM's workers joined the group when the engine started (VllmBackend); the backend takes the
        # announcement as its update_weights argument and has them receive the broadcasts.
        return receiver(wiring.weights_addr, transport=transport.name, **where)
    backend = transport.backend(cfg.dist_backend)
    group = open_weight_group(
        wiring.weights_dist_init_method, cfg.weight_rank, wiring.weights_dist_world_size, backend=backend
    )
    device = "cuda" if transport.sends_from_cuda(cfg.dist_backend) else "cpu"  # NCCL broadcasts device tensors only
    return receiver(wiring.weights_addr, group, peer_id=cfg.peer_id, device=device, context=ctx, key=key)


# ---- entry points -----------------------------------------------------------------------------


def run_generator(cfg: GeneratorConfig, wiring: RunWiring) -> int:
    """Run one generator until stopped. Returns the exit code: 0 stopped on request, 1 failure,
    2 bad config; errors are printed as one line on stderr."""

    def start() -> GeneratorService:
        from scalerl.generator_service.model_setup import load_torch_backend, load_vllm_backend, model_dir

        path = model_dir(cfg)
        if cfg.backend == "vllm":  # its workers may join the weight group as the engine starts
            backend, tokenizer, tokens = load_vllm_backend(cfg, path, wiring)
        else:
            backend, tokenizer, tokens = load_torch_backend(cfg, path)
        if cfg.debug_startup_sleep_s:  # tests only: an engine as slow to come up as a large model's
            time.sleep(cfg.debug_startup_sleep_s)
        log.info(
            "model %s, backend %s, max_batch %d, weights over %s",
            path,
            cfg.backend,
            cfg.max_batch,
            cfg.weights_transport,
        )
        return GeneratorService(cfg, wiring, backend, tokenizer, tokens)

    return run_peer("generator", cfg, start)


def configure_logging(peer_id: str) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s generator[{peer_id}] %(levelname)s %(message)s"
    )
