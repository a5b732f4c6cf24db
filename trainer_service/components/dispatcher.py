"""Dispatcher: generation requests from issue to answer (or to giving up on them).

It keeps generators busy with GenerationRequests (one prompt x samples_per_prompt), collects their Rollouts into
complete groups, and handles every way a request can go wrong: a generator that cannot take it yet (backlog), one
that never answers (deadline: issued again once, then dropped), one that refuses it (dropped with its prompt),
one that restarted (all unfinished work issued again), one that stopped heartbeating (dropped, its work issued
to the others; the run fails only when no generator is left for peer_timeout_s more), and the parent
`scalerl train` going away (the run stops with a checkpoint).

Group ids are random (64 bits): a rollout is only accepted for a group this trainer issued and has not finished,
so a process that cannot read the requests cannot name one.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque

import numpy as np

from scalerl.shared.errors import ThrottledWarning
from scalerl.shared.ownership import parent_gone
from scalerl.shared.tasks.catalog import Task, TaskMix
from scalerl.shared.wire.messages import Error, EvalResult, GenerationRequest, Ready, SamplingParams

from ..collector import GroupCollector, IssuedGroup
from ..config import TrainerConfig
from ..prompt_pipeline import make_scheduler
from .signals import EXIT_SIGTERM, Signals
from .sockets import Sockets

log = logging.getLogger("scalerl.trainer")
WAIT_NOTE_S = 30.0  # while waiting at start-up, say who is waited for this often
# The run fails once this many rollouts in a row were invalid, none valid between them: every generator serves another
# model or tokenizer, an expert layout that does not fit the policy, or a policy version ahead of the trainer's; no
# step can ever be taken. Two batches' worth (prompts_per_step x samples_per_prompt each), since one bad generator's
# rollouts can arrive a batch's worth at a time before the others' next valid one; but never fewer than
# INVALID_STREAK_MIN, or a tiny batch (2 x 2: 8 rollouts) would fail on a handful of bad rollouts that the re-issue
# after their deadline replaces. 64 (8 groups of the default 8 samples) still ends a run that can never step within a
# few deadlines.
INVALID_STREAK_BATCHES = 2
INVALID_STREAK_MIN = 64


def invalid_streak_limit(prompts_per_step: int, samples_per_prompt: int) -> int:
    """How many invalid rollouts in a row, none valid between them, fail the run (PeerError)."""
    return max(INVALID_STREAK_MIN, INVALID_STREAK_BATCHES * prompts_per_step * samples_per_prompt)


class PeerError(RuntimeError):
    """A generator stopped answering, or never came, or every rollout is invalid: the trainer checkpoints and exits
    1, naming it."""


class Dispatcher:
    def __init__(
        self,
        cfg: TrainerConfig,
        task: Task | TaskMix,
        tokenizer,
        sockets: Sockets,
        signals: Signals,
        n_generators: int,
        evaluator: bool = False,
        vocab_size: int | None = None,
        moe: tuple[int, int, int] | tuple[()] | None = None,
    ) -> None:
        self.cfg, self.tokenizer, self.sockets, self.signals = cfg, tokenizer, sockets, signals
        self.n_generators = n_generators  # the run's wiring: how many to wait for
        self.evaluator = evaluator  # eval.mode "process": wait for the evaluator process too
        self.items = {item.id: item for item in task.train_items}
        self.task = task
        # A TaskMix draws across its tasks by sampling weight.
        self.prompts = make_scheduler(task, cfg.prompts, cfg.seed)
        # Rollouts past the policy's vocabulary or longer than asked for are dropped on arrival (collector.py).
        self.collector = GroupCollector(vocab_size=vocab_size, max_new_tokens=cfg.max_new_tokens, moe=moe)
        self.invalid_log = ThrottledWarning(log)
        self.invalid_limit = invalid_streak_limit(cfg.prompts_per_step, cfg.samples_per_prompt)
        self.sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        self.group_timeout_s = cfg.group_timeout_s or 120.0 + 0.05 * cfg.max_new_tokens
        self.version = 0  # the policy version new requests are issued at (the trainer's step)
        self.n_issued = 0
        self.reissued = 0
        self.timed_out = 0  # groups not back within group_timeout: issued again once, then dropped
        self.dropped = 0
        self.refused = 0  # requests a generator refused (e.g. prompt + max_new_tokens over its max_seq_len)
        self.backlog: deque[GenerationRequest] = deque()  # built but not yet taken by any generator's socket
        self.ready_seen: set[str] = set()
        self.refusal_log = ThrottledWarning(log)
        self.eval_results: list[EvalResult] = []  # from the evaluator process, taken by the trainer after each poll
        self.dead_generators: list[str] = []  # dropped for silence, in order
        self._alone_since: float | None = None  # when the last generator was dropped (None: some are left)

    def counters(self) -> dict[str, int]:
        """For each train line of metrics.jsonl."""
        return {
            "reissued": self.reissued,
            "timed_out": self.timed_out,
            "dropped": self.dropped,
            "refused": self.refused,
            "npr_retired": self.prompts.n_retired,
            "epoch": self.prompts.epoch,
            "rejected_messages": self.sockets.rollouts.n_rejected,
            "unauthenticated": self.sockets.rollouts.n_unauthenticated,
            "unknown_groups": self.collector.n_unknown,
            "invalid_rollouts": self.collector.n_invalid,
            "dead_generators": len(self.dead_generators),
        }

    # -- issuing --------------------------------------------------------------------------------------------------
    def issue(self, n_groups: int) -> None:
        self._issue_prompts(self.prompts.next_prompts(n_groups))

    def _issue_prompts(self, prompt_ids: list[str], attempt: int = 1) -> None:
        for prompt_id in prompt_ids:
            item = self.items[prompt_id]
            group_id = f"g{secrets.token_hex(8)}"
            self.n_issued += 1
            ids = np.asarray(self.tokenizer(item.prompt).input_ids, dtype=np.int32)
            self.backlog.append(
                GenerationRequest(
                    group_id=group_id,
                    prompt_ids=ids,
                    n_samples=self.cfg.samples_per_prompt,
                    sampling=self.sampling,
                    prompt_index=self.n_issued,
                    item_id=item.id,
                    verifier=self.task.spec_for(item.id),  # each item's own task's verifier (multi-task runs)
                    answer=item.answer,
                )
            )
            self.collector.issued(
                group_id, prompt_id, self.version, self.cfg.samples_per_prompt, attempt, prompt_ids=ids
            )
        self._send_backlog()

    def _send_backlog(self) -> None:
        """Hand queued requests to the generators' socket without ever blocking: a dead or full generator must not
        stall the loop, or neither signals nor peer_timeout_s could take effect. What does not go now goes on a
        later poll; the group's deadline runs from when it was issued either way."""
        while self.backlog:
            try:
                self.sockets.requests.send(self.backlog[0], timeout_ms=0)
            except TimeoutError:
                return
            self.backlog.popleft()

    def take(self, n: int) -> list[tuple[str, IssuedGroup]]:
        return self.collector.take(n)

    @property
    def outstanding(self) -> int:
        return self.collector.outstanding

    # -- waiting --------------------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> None:
        self._send_backlog()
        rollouts = self.sockets.rollouts
        r = rollouts.recv(timeout_ms=timeout_ms)
        while r is not None:
            problem = self.collector.add(r, self.version)
            if problem is not None:
                self.invalid_log("invalid rollout dropped, %s", problem)
                if self.collector.invalid_streak >= self.invalid_limit:
                    raise PeerError(
                        f"{self.collector.invalid_streak} rollouts in a row were invalid, none valid between them "
                        f"(the generators do not serve this policy?); the last: {problem}"
                    )
            r = rollouts.recv(timeout_ms=0)
        for peer, msg in self.sockets.control.messages():  # heartbeats are book-kept by the pulse
            if isinstance(msg, EvalResult):  # for the trainer's evaluation, which writes the line
                self.eval_results.append(msg)
            elif isinstance(msg, Ready) and msg.role == "evaluator":
                if peer in self.ready_seen:
                    log.warning("the evaluator %s restarted; the versions it was asked for are lost", peer)
                self.ready_seen.add(peer)
            elif isinstance(msg, Ready):
                self._on_ready(peer)
            elif isinstance(msg, Error) and msg.code == "bad_request" and msg.group_id:
                self._on_refused(peer, msg)
        self._expire_groups()
        if parent_gone():
            log.warning("scalerl train (the parent process) is gone; checkpointing and stopping")
            self.signals.stop = EXIT_SIGTERM
        self._check_peers()

    def _check_peers(self) -> None:
        """Silent generators are dropped and their work issued again; the run fails only when none is left for
        peer_timeout_s (a restarted one may still come back), or when the evaluator process goes silent."""
        timeout = self.cfg.peer_timeout_s
        dead = self.sockets.control.dead(timeout)
        evaluators = [p for p in dead if self.sockets.control.role(p) == "evaluator"]
        if evaluators and self.evaluator:
            raise PeerError(
                f"evaluator {', '.join(sorted(evaluators))} stopped answering (no heartbeat for {timeout:g} s)"
            )
        for peer in evaluators:  # this run has no evaluator process: a peer calling itself one is no part of it
            self.sockets.control.forget(peer)
            self.ready_seen.discard(peer)
            log.warning("peer %s said it was an evaluator, but this run has none; silent now: dropped", peer)
        for peer in [p for p in dead if p not in evaluators]:
            self.sockets.control.forget(peer)
            self.ready_seen.discard(peer)  # a Ready from it later is a new generator, not a restart
            self.dead_generators.append(peer)
            lost = self.collector.reissue_all()
            log.warning(
                "generator %s stopped answering (no heartbeat for %g s): dropped; re-issuing %d unfinished group(s)",
                peer,
                timeout,
                len(lost),
            )
            self.reissued += len(lost)
            self._issue_prompts(lost)
        if self.sockets.control.n_ready() > 0 or not self.dead_generators:
            self._alone_since = None
            return
        now = time.monotonic()
        if self._alone_since is None:
            self._alone_since = now
        elif now - self._alone_since > timeout:
            raise PeerError(
                f"generator {', '.join(sorted(set(self.dead_generators)))} stopped answering (no heartbeat for "
                f"{timeout:g} s) and no generator took its place within {timeout:g} s"
            )

    def wait_for_groups(self, n: int) -> bool:
        """Block until n complete groups are ready (or every issued group is back or given up); False if a stop
        signal came first."""
        while len(self.collector.ready) < n and (self.collector.pending or self.backlog):
            if self.signals.stop is not None:
                return False
            self.poll(50)
        return self.signals.stop is None

    def wait_for_generators(self) -> bool:
        """Block until every generator said Ready, watching signals; False if a stop signal came first. The wait is
        startup_timeout_s, not peer_timeout_s: each peer loads its model and engine before it says Ready."""
        t0 = noted = time.monotonic()
        evaluator = self.evaluator
        while self.sockets.control.n_ready() < self.n_generators or (
            evaluator and self.sockets.control.n_ready("evaluator") < 1
        ):
            if self.signals.stop is not None or parent_gone():
                return False
            now = time.monotonic()
            waiting = f"{self.sockets.control.n_ready()} of {self.n_generators} generator(s)" + (
                f" and {self.sockets.control.n_ready('evaluator')} of 1 evaluator" if evaluator else ""
            )
            if now - t0 > self.cfg.startup_timeout_s:
                raise PeerError(
                    f"{waiting} ready after {self.cfg.startup_timeout_s:g} s (startup_timeout_s); see their logs"
                )
            if now - noted >= WAIT_NOTE_S:
                noted = now
                log.info(
                    "waiting at start-up: %s ready after %.0f s (each loads its model and engine first; "
                    "startup_timeout_s = %g)",
                    waiting,
                    now - t0,
                    self.cfg.startup_timeout_s,
                )
            time.sleep(0.1)
        return True

    # -- what generators tell us ----------------------------------------------------------------------------------
    def _on_ready(self, peer: str) -> None:
        """A second Ready from a known generator: it restarted (e.g. `scalerl train` revived it after a crash)
        and lost what it was generating. Those groups are asked for again; late answers to the old ones are
        dropped as unknown."""
        if peer not in self.ready_seen:
            self.ready_seen.add(peer)
            return
        lost = self.collector.reissue_all()
        log.warning("generator %s restarted; re-issuing %d unfinished group(s)", peer, len(lost))
        self.reissued += len(lost)
        self._issue_prompts(lost)

    def _on_refused(self, peer: str, msg: Error) -> None:
        """A generator will never answer this group: drop it and its prompt (asking again would fail the same way)."""
        group = self.collector.drop(msg.group_id)
        if group is None:
            return
        self.refused += 1
        self.prompts.drop(group.prompt_id)
        why = msg.message
        self.refusal_log("%s refused group %s (prompt %s), dropped: %s", peer, msg.group_id, group.prompt_id, why)

    def _expire_groups(self) -> None:
        for g in self.collector.expired(self.group_timeout_s):
            self.timed_out += 1
            if g.attempt == 1:
                log.warning("prompt %s: no answer after %.0f s; issuing it again", g.prompt_id, self.group_timeout_s)
                self._issue_prompts([g.prompt_id], attempt=2)
            else:
                self.dropped += 1
                log.warning("prompt %s: no answer after a second try; dropped", g.prompt_id)
