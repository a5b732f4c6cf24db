"""Sockets: the trainer's four endpoints of the wire protocol (docs/protocol.md), bound and closed together."""

from __future__ import annotations

from pathlib import Path

from scalerl.shared.ownership import ensure_secret, read_secret
from scalerl.shared.wire import auth
from scalerl.shared.wire.messages import Rollout
from scalerl.shared.wire.sockets import ControlServer, PullEndpoint, PushEndpoint
from scalerl.shared.wiring import RunWiring

from ..config import TrainerConfig
from ..publisher import Publisher, build_publisher
from .pulse import Pulse


class Sockets:
    def __init__(
        self,
        requests: PushEndpoint,
        rollouts: PullEndpoint[Rollout],
        control: Pulse,
        weights: Publisher,
        key: bytes | None = None,
    ) -> None:
        self.requests, self.rollouts, self.control, self.weights = requests, rollouts, control, weights
        self.key = key  # the run's HMAC key (auth.key_from_secret), for channels wired outside this class

    @classmethod
    def bind(cls, cfg: TrainerConfig, wiring: RunWiring) -> Sockets:
        wiring.check_addresses()
        remote = wiring.allow_remote  # binding beyond loopback only when the config says so
        own = ensure_secret(Path(cfg.run_dir))  # the trainer makes its run's secret; the wiring may name another
        token = read_secret(wiring.secret_file or str(own))
        # Rollouts and control messages carry an HMAC with the run secret (shared/wire/auth.py): a process that
        # reaches the sockets without the secret (model code, another user) can neither register nor report.
        key = auth.key_from_secret(token)
        opened: list = []
        try:
            # Requests are signed too: a generator connects, and zmq reconnects it to whatever listens on the address
            # (another process, while the trainer restarts), which could otherwise have it import and call any
            # "module:function" as a request's verifier. A stranger who pulls some only delays them (the group
            # deadline issues them again).
            opened.append(
                PushEndpoint(wiring.request_addr, bind=True, allow_remote=remote, channel=auth.REQUEST, key=key)
            )
            opened.append(PullEndpoint(wiring.rollout_addr, bind=True, accept=(Rollout,), allow_remote=remote, key=key))
            server = ControlServer(wiring.control_addr, allow_remote=remote, token=token)
            opened.append(server)
            opened.append(build_publisher(cfg, wiring, key=key))  # the transport wiring.weights_transport names
        except BaseException:
            for ep in opened:  # a port in use must not leave the others bound
                ep.close()
            raise
        requests, rollouts, _, weights = opened
        return cls(requests, rollouts, Pulse(server).start(), weights, key)

    def close(self) -> None:
        for ep in (self.requests, self.rollouts, self.control, self.weights):
            ep.close()
