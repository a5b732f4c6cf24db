"""Weight updates that cannot hang: a broadcast whose receiver dies, or stops receiving, ends by its deadline with
one line naming the version, the transport and the deadline; the group is aborted and no later version goes out.
Real processes, a real gloo group, real zmq sockets."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
import time

import pytest
import torch

from scalerl.shared.wire.sockets import ipc_address
from scalerl.shared.wire.weights.dist import (
    DistWeightReceiver,
    DistWeightSender,
    WeightDeliveryError,
    open_weight_group,
)
from tests.conftest import leave_ranks

torch.set_num_threads(1)
DEADLINE_S = 4.0
MARGIN_S = 3.0  # process and socket teardown on a shared 2-core machine, not the transfer
GROUP_TIMEOUT_S = 60.0  # gloo's own timeout: far past the deadline, so only the deadline can end the update early


def receiver(addr: str, init: str, behaviour: str) -> None:
    """Joins the group and says Ready; on the announcement it dies ("die") or never joins the broadcast ("stall")."""
    torch.set_num_threads(1)
    group = open_weight_group(init, 1, 2, timeout_s=GROUP_TIMEOUT_S)
    r = DistWeightReceiver(addr, group, peer_id="gen-0")
    while r._next_header(timeout_s=1.0) is None:
        pass
    if behaviour == "die":
        os._exit(3)  # a generator killed mid-update: no cleanup, its sockets just close
    time.sleep(GROUP_TIMEOUT_S * 2)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: held open together, so the kernel cannot hand out the same one twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srld") as d:
        yield d


def weights() -> dict[str, torch.Tensor]:
    # Several buckets, so the failure lands in the middle of an update, not before it.
    return {f"layer{i}.weight": torch.full((64, 1024), float(i)) for i in range(8)}


@pytest.mark.parametrize("behaviour", ["die", "stall"])
def test_a_weight_update_whose_receiver_dies_or_stalls_ends_by_its_deadline(behaviour, tmp):
    init, addr = f"tcp://127.0.0.1:{free_port()}", ipc_address("weights", tmp)
    proc = mp.get_context("spawn").Process(target=receiver, args=(addr, init, behaviour), daemon=True)
    proc.start()
    sender = DistWeightSender(addr, None, n_receivers=1, group_address=init, bucket_bytes=64 << 10)
    try:
        sender.group = open_weight_group(init, 0, 2, timeout_s=GROUP_TIMEOUT_S)
        sender.wait_for_receivers(timeout_s=60)
        t0 = time.monotonic()
        with pytest.raises(WeightDeliveryError) as caught:
            sender.publish(weights(), 1, timeout_s=DEADLINE_S)
        elapsed = time.monotonic() - t0
        message = str(caught.value)
        assert "\n" not in message and "weights v1 over dist" in message and f"{DEADLINE_S:g} s deadline" in message
        if behaviour == "stall":
            assert "not every receiver had it" in message
            assert DEADLINE_S - 0.1 <= elapsed < DEADLINE_S + MARGIN_S, elapsed
        else:  # gloo sees the closed connection: no need to wait for the deadline
            assert "Connection" in message and "pair.cc" not in message and "remote worker" not in message
            assert elapsed < DEADLINE_S + MARGIN_S, elapsed
        # The group is aborted: a later version is refused at once instead of hanging on a broken group.
        t0 = time.monotonic()
        with pytest.raises(WeightDeliveryError, match="failed earlier"):
            sender.publish(weights(), 2, timeout_s=DEADLINE_S)
        assert time.monotonic() - t0 < 1.0
    finally:
        sender.close()
        proc.kill()
        proc.join()


def healthy_receiver(addr: str, init: str) -> None:
    torch.set_num_threads(1)
    group = open_weight_group(init, 1, 2, timeout_s=GROUP_TIMEOUT_S)
    with DistWeightReceiver(addr, group, peer_id="gen-0") as r:
        got = r.receive(timeout_s=60)
        assert got is not None and got[0] == 1
        assert all(torch.equal(t, torch.full((64, 1024), float(i))) for i, t in enumerate(got[1].values()))


def test_an_update_every_receiver_takes_in_time_is_unaffected_by_its_deadline(tmp):
    init, addr = f"tcp://127.0.0.1:{free_port()}", ipc_address("weights", tmp)
    proc = mp.get_context("spawn").Process(target=healthy_receiver, args=(addr, init), daemon=True)
    proc.start()
    sender = DistWeightSender(addr, None, n_receivers=1, group_address=init, bucket_bytes=64 << 10)
    try:
        sender.group = open_weight_group(init, 0, 2, timeout_s=GROUP_TIMEOUT_S)
        sender.publish(weights(), 1, timeout_s=60)
        proc.join(60)
        assert proc.exitcode == 0 and sender.version == 1 and not sender.failure
    finally:
        sender.close()
        proc.kill()
        proc.join()


def fsdp2_rank(rank: int, world_init: str, init: str, addr: str, out: str) -> None:
    """A trainer rank of two (FSDP2): publish v1 over dist to a receiver that dies; write what publish() did."""
    import types

    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from scalerl.shared.wiring import RunWiring
    from scalerl.trainer_service.config import TrainerConfig
    from scalerl.trainer_service.publisher import build_publisher

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=world_init, rank=rank, world_size=2)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg)
    mesh = init_device_mesh("cpu", (2,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    tcfg = TrainerConfig(peer_timeout_s=DEADLINE_S)
    wiring = RunWiring(
        weights_transport="dist",
        weights_dist_init_method=init,
        weights_dist_world_size=2,
        weights_addr=addr,
        n_generators=1,
        weights_dtype="bfloat16",
    )
    publisher = build_publisher(tcfg, wiring, types.SimpleNamespace(rank=rank, device=torch.device("cpu")))
    if publisher.sender is not None:
        publisher.sender.bucket_bytes = 16 << 10  # many buckets: the failure lands mid-update, gathers still to come
    try:
        publisher.publish(model, 1)
        result = "returned"
    except WeightDeliveryError as e:
        result = f"WeightDeliveryError: {e}"
    tdist.barrier()  # both ranks got here: none is left in a gather
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(result)
    publisher.close()
    leave_ranks()  # tests/conftest.py: why a rank skips gloo's teardown


def test_a_dead_receiver_ends_every_trainer_rank_not_only_rank_0(tmp):
    """Rank 0's failed broadcast must not leave the other FSDP2 ranks waiting in the gathers of the same publish."""
    world_init, init = (f"tcp://127.0.0.1:{port}" for port in free_ports(2))
    addr = ipc_address("weights", tmp)
    ctx = mp.get_context("spawn")
    gen = ctx.Process(target=receiver, args=(addr, init, "die"), daemon=True)
    gen.start()
    ranks = [ctx.Process(target=fsdp2_rank, args=(r, world_init, init, addr, tmp), daemon=True) for r in (0, 1)]
    for p in ranks:
        p.start()
    try:
        for p in ranks:
            p.join(60 + DEADLINE_S)
        assert [p.exitcode for p in ranks] == [0, 0], "a trainer rank hung or failed"
        with open(os.path.join(tmp, "rank0.txt")) as f:
            assert f.read().startswith("WeightDeliveryError: weights v1 over dist")
        with open(os.path.join(tmp, "rank1.txt")) as f:
            assert f.read() == "returned"
    finally:
        for p in (*ranks, gen):
            p.kill()
            p.join()
