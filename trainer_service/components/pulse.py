"""Pulse: the control socket, kept alive while the loop is busy.

A training step, an evaluation or a checkpoint of a large model takes minutes. The control socket heartbeats
only while someone reads it, so without a reader of its own the trainer looks dead to its generators (they exit
after their peer_timeout_s) and, when it reads again, sees their queued heartbeats one per poll and may think
them dead in turn.

A background thread therefore reads the socket every `period_s`: that sends the trainer's heartbeats when due,
books the generators' heartbeats as they arrive, and queues every other message for the loop. A zmq socket must
not be used by two threads at once, so one lock guards every use of it, by the thread and by the loop alike
(the loop's uses are short: read the queue, ask who is dead, broadcast a Shutdown). A second socket owned by the
thread would need a second identity for each generator to talk to; the lock keeps the wire protocol unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import zmq

from scalerl.shared.wire.messages import Message
from scalerl.shared.wire.sockets import ControlServer

log = logging.getLogger("scalerl.trainer")

_MAX_DRAIN = 10_000  # per turn: a flood of messages must not keep the lock forever


class Pulse:
    def __init__(self, server: ControlServer, period_s: float = 0.25) -> None:
        self._server = server
        self._period_s = period_s
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, Message]] = deque()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scalerl-pulse", daemon=True)
        self.error: BaseException | None = None  # what ended the thread early, reported by `messages`

    def start(self) -> Pulse:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stopped.wait(self._period_s):
                with self._lock:
                    self._drain()
        except BaseException as e:  # a dead pulse must surface in the loop, not vanish with the thread
            self.error = e

    def _drain(self) -> None:
        """Read what is waiting (lock held). recv() sends a heartbeat when one is due and consumes heartbeats,
        returning None for them, so an empty socket is told apart by polling it."""
        for _ in range(_MAX_DRAIN):
            got = self._server.recv(timeout_ms=0)
            if got is not None:
                self._inbox.append(got)
            elif not self._server.socket.poll(0, zmq.POLLIN):
                return

    def messages(self) -> list[tuple[str, Message]]:
        """(peer, message) of every control message other than heartbeats since the last call."""
        if self.error is not None:
            raise RuntimeError(f"the control socket's heartbeat thread died: {self.error!r}") from self.error
        with self._lock:
            self._drain()
            out = list(self._inbox)
            self._inbox.clear()
        return out

    def dead(self, timeout_s: float) -> list[str]:
        """Ready generators not heard from for `timeout_s` (what is queued counts as heard)."""
        with self._lock:
            self._drain()
            return self._server.dead_peers(timeout_s)

    def n_ready(self, role: str = "generator") -> int:
        """Peers of `role` that said Ready (the evaluator process is a peer too, but no generator)."""
        with self._lock:
            self._drain()
            return sum(1 for ready in self._server.peers.values() if ready.role == role)

    def role(self, peer: str) -> str:
        """The role a peer gave in its Ready ("" if unknown)."""
        with self._lock:
            ready = self._server.peers.get(peer)
            return ready.role if ready is not None else ""

    def forget(self, peer: str) -> None:
        """Drop a silent peer: it is no longer sent to, counted or watched. A later Ready registers it anew."""
        with self._lock:
            self._server.forget(peer)

    def send(self, role: str, msg: Message) -> bool:
        """To the one peer of `role` (the evaluator); False when none is connected or it cannot be reached."""
        with self._lock:
            peer = next((p for p, ready in self._server.peers.items() if ready.role == role), None)
            return peer is not None and self._server.send(peer, msg)

    def broadcast(self, msg: Message) -> list[str]:
        with self._lock:
            return self._server.broadcast(msg)

    def close(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        with self._lock:
            self._server.close()
