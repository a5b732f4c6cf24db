"""Trainer throughput and weight-publish time on the built-in tiny model, in one run.

Baselines: a plain HF forward+backward with its own cross-entropy loss on the same tokens (the floor a policy
step cannot beat), and for weight publishing the time of one copy of the state dict in memory.
Run: python bench/bench_trainer.py
"""

import time

import numpy as np
import torch

from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir
from scalerl.shared.wire.messages import Rollout
from scalerl.shared.wire.sockets import ipc_address
from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver, ZmqWeightSender
from scalerl.trainer_service.batch import build_batch
from scalerl.trainer_service.config import OptimSection
from scalerl.trainer_service.loss import LossConfig
from scalerl.trainer_service.step import StepConfig, make_optimizer, train_step


def synthetic_groups(n_groups=32, n=8, prompt=7, completion=12, vocab=100, seed=0):
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(n_groups):
        p = rng.integers(4, vocab, prompt).astype(np.int32)
        groups.append(
            [
                Rollout(
                    group_id=str(g),
                    sample_index=k,
                    prompt_ids=p,
                    completion_ids=rng.integers(4, vocab, completion).astype(np.int32),
                    logprobs=(-rng.random(completion)).astype(np.float32),
                    versions=np.zeros(completion, np.int32),
                    forced=np.zeros(completion, np.uint8),
                    finish_reason="stop",
                    reward=float(k % 2),
                    t_queued=0.0,
                    t_started=0.0,
                    t_finished=0.0,
                )
                for k in range(n)
            ]
        )
    return groups


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def main():
    torch.set_num_threads(1)
    model, _ = load_model_dir(ensure_tiny_model())
    batch, _ = build_batch(synthetic_groups(), "batch", False)
    tokens = int(batch.loss_mask.sum())
    opt, sched = make_optimizer(model, OptimSection())

    def plain():
        labels = batch.input_ids.masked_fill(batch.loss_mask == 0, -100)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    rows = [("plain HF forward+backward (CE loss)", plain)]
    for head in (True, False):
        rows.append(
            (
                f"policy step, CISPO, fp32_lm_head={head}",
                lambda head=head: train_step(model, opt, sched, batch, LossConfig(fp32_lm_head=head), StepConfig()),
            )
        )
    print(f"batch: 256 sequences, {tokens} trained tokens, tiny model, 1 thread")
    base = None
    for name, fn in rows:
        fn()  # warm-up
        best, med = best_of(fn, 7)
        base = base or best
        print(f"{name:42s} {tokens / best:9.0f} tok/s  (median {tokens / med:7.0f})  time ratio {best / base:5.2f}")

    state = {k: v.detach() for k, v in model.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())
    copy_best, _ = best_of(lambda: {k: v.clone() for k, v in state.items()}, 7)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        addr = ipc_address("w", d)
        sender = ZmqWeightSender(addr)
        receiver = ZmqWeightReceiver(addr, peer_id="bench")
        times = []
        for v in range(1, 8):
            t = time.perf_counter()
            sender.publish(state, v)
            got = None
            while got is None:
                got = receiver.receive(timeout_s=1.0)
            times.append(time.perf_counter() - t)
        receiver.close()
        sender.close()
    pub = min(times)
    print(
        f"weights: {nbytes / 1e6:.1f} MB; in-memory copy {copy_best * 1e3:.2f} ms; zmq publish->received "
        f"{pub * 1e3:.2f} ms (median {np.median(times) * 1e3:.2f}); ratio {pub / copy_best:.1f}x the copy"
    )


if __name__ == "__main__":
    main()
