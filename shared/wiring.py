"""The [wiring] table: how the processes of one run find each other. Torch-free.

Not user settings: `scalerl train` (and `scalerl train` under srun) derives every value from [run] and [generator]
and writes them into RUN/config.toml, where the trainer, the generators and the evaluator each read it beside their
own section. A bare `scalerl trainer` / `scalerl generator` (hand-written slurm scripts) takes a hand-written
[wiring] table; docs/architecture.md, "Where each config value comes from".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scalerl.shared.wire.weights.registry import DEFAULT_WEIGHT_TRANSPORT, WeightTransportName, weight_transport

SECTION = "wiring"  # its table in the TOML file
ADDRESS_KEYS = ("request_addr", "rollout_addr", "control_addr", "weights_addr")
SCHEMES = ("ipc://", "tcp://", "inproc://")
# Generator processes of one run. Far beyond any cluster's generation fleet (one per GPU on 512 nodes), and low
# enough that a mistyped count is refused, not planned: 10^5 printed a plan of 2.3 million lines.
MAX_GENERATORS = 4096


@dataclass(frozen=True)
class RunWiring:
    # Sockets the trainer binds and generators connect to: ipc:// on one host, tcp:// across hosts.
    request_addr: str = ""
    rollout_addr: str = ""
    control_addr: str = ""
    weights_addr: str = ""
    # The evaluator's weight channel (only versions to evaluate travel there); "" = no evaluator process.
    eval_weights_addr: str = ""
    # Bind tcp sockets beyond loopback (multi-node runs); off unless [run] allow_remote or slurm says so.
    allow_remote: bool = False
    # The run secret every process presents (handshake, HMAC keys); "" = the trainer's <run_dir>/.secret.
    secret_file: str = ""
    # Generators the trainer waits for.
    n_generators: int = 1
    # How weights travel (docs/vllm.md, "Weight transports"): [generator] weights_transport, for the trainer too.
    weights_transport: WeightTransportName = DEFAULT_WEIGHT_TRANSPORT
    # The weight group of the broadcast transports: its rendezvous tcp://host:port (the trainer hosts it) and its
    # size, 1 + every receiving rank (a generator for dist, each vLLM worker for vllm-*).
    weights_dist_init_method: str = ""
    weights_dist_world_size: int = 0
    weights_dist_backend: Literal["gloo", "nccl"] = "gloo"
    # Weights are cast to the generators' dtype before they leave (an FP32 LM head stays FP32).
    weights_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Devices each generator process and the evaluator hold, counted in gpu_hours: 1 for the torch engine,
    # tensor_parallel_size x engines for vLLM. Each trainer rank counts one.
    generator_devices: int = 1
    eval_devices: int = 1

    def check(self) -> None:
        if not 1 <= self.n_generators <= MAX_GENERATORS:
            raise ValueError(f"n_generators must be between 1 and {MAX_GENERATORS}, not {self.n_generators}")
        if self.eval_devices < 0 or self.generator_devices < 0:
            raise ValueError(
                f"eval_devices and generator_devices must be >= 0, not {self.eval_devices}, {self.generator_devices}"
            )
        for key in (*ADDRESS_KEYS, "eval_weights_addr"):
            value = getattr(self, key)
            if value and not value.startswith(SCHEMES):
                raise ValueError(f"{key} {value!r} must start with ipc://, tcp:// or inproc://")
        if weight_transport(self.weights_transport).broadcast:
            if not self.weights_dist_init_method.startswith("tcp://"):
                raise ValueError(f"weights_transport {self.weights_transport!r} needs weights_dist_init_method tcp://")
            if self.weights_dist_world_size < 2:
                raise ValueError("weights_dist_world_size must be >= 2 (the trainer and at least one receiver)")

    def check_addresses(self) -> None:
        """A process that connects (a generator, the evaluator) needs every address; the trainer binds them."""
        for key in ADDRESS_KEYS:
            if not getattr(self, key):
                raise ValueError(f"wiring.{key} must be set (scalerl train sets it; by hand: a [wiring] table)")
