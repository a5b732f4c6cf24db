"""The embedded torch sampling engine: continuous batching over a transformers model on CPU.

Each step() first admits waiting requests into free cache slots (one padded prefill, which
also chooses their first token), then decodes one token for every running row. Requests
join and leave between steps; weights can change between steps (update_weights) without
touching the KV cache, so sequences continue across policy versions as in PipelineRL.
Single-threaded: the caller (the generator service loop) drives it.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch

from scalerl.generator_service.backend import BackendStats, Completion, EngineRequest
from scalerl.generator_service.engine.decoder import Decoder
from scalerl.generator_service.engine.kv_cache import SlotKVCache
from scalerl.generator_service.engine.sampling import picked_logprobs, sample_tokens, seed_key, uniforms
from scalerl.generator_service.engine.sequence import Sequence
from scalerl.generator_service.request_validation import request_problem
from scalerl.generator_service.weight_validation import checked_tensors
from scalerl.shared.wire.dtypes import MODEL_DTYPES, TORCH_DTYPES


@dataclass
class TorchEngineConfig:
    """The torch engine's section of the generator config.

    Fields:
        max_batch: KV-cache slots, i.e. the most sequences decoding at once.
        max_seq_len: prompt + completion tokens one slot holds; longer requests are refused.
        dtype: "float32", "bfloat16" or "float16"; the model and the KV cache are cast to it.
        fp32_lm_head: run the LM head matmul in FP32 (with an FP32 copy of its weight) even
            for a low-precision model; the trainer uses the same switch so both see the same
            logits. Logprobs are always taken from FP32 logits.
        threads: torch.set_num_threads for this process (None: leave torch's default).
        seed: seeds requests that come without one (in arrival order).
        max_prefill_tokens: padded prompt tokens per prefill; bounds how long one step can
            stall the running rows when many requests arrive (at least one is admitted).
    """

    max_batch: int = 64
    max_seq_len: int = 2048
    dtype: str = "float32"
    fp32_lm_head: bool = True
    threads: int | None = None
    seed: int = 0
    max_prefill_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.dtype not in MODEL_DTYPES:
            raise ValueError(f"TorchEngineConfig.dtype must be one of {list(MODEL_DTYPES)}, got {self.dtype!r}")
        for name in ("max_batch", "max_seq_len", "max_prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"TorchEngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"TorchEngineConfig.threads must be >= 1 or None, got {self.threads}")


class TorchEngine:
    """A GenerationBackend over a transformers causal LM (qwen2 / qwen3 / llama).

    The engine takes ownership of `model`: it is cast to config.dtype, put in eval mode, and
    its projection parameters are re-pointed into fused, transposed buffers (decoder.py).
    Change its weights only through update_weights (never .to() or load_state_dict with
    assign=True, which would detach the parameters from those buffers).
    """

    def __init__(self, model: torch.nn.Module, config: TorchEngineConfig, policy_version: int = 0) -> None:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.config = config
        self.model = model.to(TORCH_DTYPES[config.dtype]).eval()
        self.decoder = Decoder(self.model, config.max_seq_len, config.fp32_lm_head)
        self.vocab_size = self.decoder.config.vocab_size
        self.cache = SlotKVCache(
            self.decoder.config.num_hidden_layers,
            config.max_batch,
            self.decoder.n_kv,
            self.decoder.head_dim,
            config.max_seq_len,
            self.decoder.dtype,
        )
        self._params = dict(model.named_parameters(remove_duplicate=False))
        self._shapes = {name: tuple(p.shape) for name, p in self._params.items()}
        self._seed_rng = random.Random(config.seed)
        self.policy_version = policy_version

        slots = config.max_batch
        # Per-row sampling state, rows 0..n-1 = self._rows.
        self._pending = torch.zeros(slots, dtype=torch.int64)  # last chosen token, not yet in the cache
        self._positions = torch.zeros(slots, dtype=torch.int64)  # cache position of that token
        self._temperature = torch.ones(slots, dtype=torch.float32)
        self._top_p = torch.ones(slots, dtype=torch.float32)
        self._keys = torch.zeros(slots, dtype=torch.int64)
        self._counters = torch.zeros(slots, dtype=torch.int64)  # index of the next token to choose
        self._rows: list[Sequence] = []
        self._waiting: deque[Sequence] = deque()
        self._finished: list[Completion] = []
        self._ids_in_flight: set[str] = set()

        self._steps = self._sampled = self._forced = self._prefill_tokens = 0
        self._completions = self._updates = 0
        self._last_pause = self._total_pause = self._busy = 0.0

    @classmethod
    def from_pretrained(cls, path: str, config: TorchEngineConfig, policy_version: int = 0) -> TorchEngine:
        """Load a local HF checkpoint directory (never downloads)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=TORCH_DTYPES[config.dtype], local_files_only=True)
        return cls(model, config, policy_version)

    # ---- requests -------------------------------------------------------------------------

    def add_requests(self, requests: Seq[EngineRequest]) -> None:
        seen: set[str] = set()
        for req in requests:
            problem = request_problem(req, self.vocab_size, self.config.max_seq_len)
            if problem is None and (req.request_id in self._ids_in_flight or req.request_id in seen):
                problem = f"request {req.request_id!r}: request_id already in flight"
            if problem is not None:
                raise ValueError(problem)
            seen.add(req.request_id)
        now = time.time()
        for req in requests:
            seed = req.params.seed if req.params.seed is not None else self._seed_rng.getrandbits(63)
            self._waiting.append(Sequence(req, seed, now))
            self._ids_in_flight.add(req.request_id)

    def has_unfinished(self) -> bool:
        return bool(self._rows or self._waiting)

    def collect_finished(self) -> list[Completion]:
        done, self._finished = self._finished, []
        return done

    # ---- stepping -------------------------------------------------------------------------

    def step(self) -> int:
        if not self._rows and not self._waiting:
            return 0
        t0 = time.perf_counter()
        produced = 0
        if self._waiting and len(self._rows) < self.config.max_batch:
            produced += self._admit()
        if self._rows:
            produced += self._decode()
        self._steps += 1
        self._busy += time.perf_counter() - t0
        return produced

    def _admit(self) -> int:
        """Prefill as many waiting requests as fit (slots, prefill token budget)."""
        row0 = len(self._rows)
        batch: list[Sequence] = []
        longest = 0
        while self._waiting and row0 + len(batch) < self.config.max_batch:
            plen = len(self._waiting[0].request.prompt_token_ids)
            padded = max(longest, plen) * (len(batch) + 1)
            if batch and padded > self.config.max_prefill_tokens:
                break
            batch.append(self._waiting.popleft())
            longest = max(longest, plen)
        tokens = torch.zeros(len(batch), longest, dtype=torch.int64)
        lengths = torch.empty(len(batch), dtype=torch.int64)
        now = time.time()
        for i, seq in enumerate(batch):
            prompt = seq.request.prompt_token_ids
            tokens[i, : len(prompt)] = torch.tensor(prompt)
            lengths[i] = len(prompt)
            row = row0 + i
            self._temperature[row] = seq.request.params.temperature
            self._top_p[row] = seq.request.params.top_p
            self._keys[row] = seed_key(seq.seed)
            self._counters[row] = 0
            seq.started = now
        logits = self.decoder.prefill(self.cache, row0, tokens, lengths)
        self._positions[row0 : row0 + len(batch)] = lengths
        self._prefill_tokens += int(lengths.sum())
        self._rows.extend(batch)
        return self._choose(row0, logits)

    def _decode(self) -> int:
        n = len(self._rows)
        length = max(seq.next_position for seq in self._rows) + 1
        logits = self.decoder.decode(self.cache, self._pending[:n], self._positions[:n], length)
        self._positions[:n] += 1
        return self._choose(0, logits)

    def _choose(self, row0: int, logits: torch.Tensor) -> int:
        """Sample the next token of rows row0.. from their logits, let each Sequence accept
        or force it, then retire finished rows."""
        rows = slice(row0, row0 + logits.shape[0])
        seqs = self._rows[rows]
        use_top_p = any(seq.request.params.top_p < 1.0 for seq in seqs)
        u = uniforms(self._keys[rows], self._counters[rows])
        tokens = sample_tokens(logits, self._temperature[rows], self._top_p[rows], u, use_top_p)
        logprobs = picked_logprobs(logits, tokens)
        self._counters[rows] += 1
        version = self.policy_version
        sampled_list, logprob_list = tokens.tolist(), logprobs.tolist()
        finished: list[int] = []
        forced = 0
        for i, seq in enumerate(seqs):
            token = seq.push(sampled_list[i], logprob_list[i], version)
            if seq.forced[-1]:
                tokens[i] = token
                forced += 1
            if seq.finish_reason is not None:
                finished.append(row0 + i)
        self._pending[rows] = tokens
        self._forced += forced
        self._sampled += len(seqs) - forced
        for row in reversed(finished):
            self._retire(row)
        return len(seqs)

    def _retire(self, row: int) -> None:
        """Hand the finished row's completion over and move the last row into its slot."""
        seq = self._rows[row]
        self._finished.append(seq.to_completion(time.time()))
        self._ids_in_flight.discard(seq.request.request_id)
        self._completions += 1
        last = len(self._rows) - 1
        if row != last:
            moved = self._rows[last]
            self.cache.move_row(last, row, moved.next_position)
            for t in (self._pending, self._positions, self._temperature, self._top_p, self._keys, self._counters):
                t[row] = t[last]
            self._rows[row] = moved
        self._rows.pop()

    # ---- weights & stats ------------------------------------------------------------------

    @torch.no_grad()
    def update_weights(self, named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], version: int) -> float:
        t0 = time.perf_counter()
        staged = [(self._params[name], tensor) for name, tensor in checked_tensors(named_tensors, self._shapes)]
        lm_head = self.decoder.lm_head_param
        for param, tensor in staged:
            param.data.copy_(tensor)
        if any(param is lm_head for param, _ in staged):
            self.decoder.refresh_lm_head()
        self.policy_version = version
        pause = time.perf_counter() - t0
        self._updates += 1
        self._last_pause = pause
        self._total_pause += pause
        return pause

    def stats(self) -> BackendStats:
        return BackendStats(
            policy_version=self.policy_version,
            running=len(self._rows),
            waiting=len(self._waiting),
            finished_uncollected=len(self._finished),
            steps=self._steps,
            sampled_tokens=self._sampled,
            forced_tokens=self._forced,
            prefill_tokens=self._prefill_tokens,
            completions=self._completions,
            weight_updates=self._updates,
            last_update_pause_s=self._last_pause,
            total_update_pause_s=self._total_pause,
            busy_s=self._busy,
        )
