"""trainer.attn_implementation reaches the loaded model, trainer.grad_reduce_dtype reaches FSDP2's policy, and
each is refused in one line (exit 2) where it cannot run or take effect."""

import pytest
import torch
import torch.distributed as dist

from scalerl.shared.config import ConfigError
from scalerl.shared.models.tiny_model import build_tiny_model, load_model_dir, save_model_dir
from scalerl.trainer_service.config import TrainerConfig
from scalerl.trainer_service.microbatch import should_pack
from scalerl.trainer_service.parallel import Dist, check_choices, shard_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_model_dir(build_tiny_model(), d)
    return d


def test_the_default_is_what_the_model_loaded_with_before(model_dir):
    model, _ = load_model_dir(model_dir)
    assert model.config._attn_implementation == TrainerConfig().attn_implementation == "sdpa"


@pytest.mark.parametrize("impl", ["eager", "sdpa", "flex_attention"])
def test_attn_implementation_reaches_the_model(model_dir, impl):
    model, _ = load_model_dir(model_dir, attn_implementation=impl)
    assert model.config._attn_implementation == impl
    # Packing follows the kernel: only the varlen one packs.
    assert should_pack(model) == (impl == "flex_attention")


def _cpu(world=1):
    return Dist(rank=0, world=world, local_rank=0, device=torch.device("cpu"), param_dtype=None)


def test_choices_that_cannot_run_here_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^trainer.attn_implementation 'flash_attention_2' needs CUDA[^\n]*$"):
        check_choices(TrainerConfig(attn_implementation="flash_attention_2"), _cpu())
    with pytest.raises(ConfigError, match=r"^trainer.grad_reduce_dtype 'bfloat16' needs more than one rank[^\n]*$"):
        check_choices(TrainerConfig(grad_reduce_dtype="bfloat16"), _cpu())
    check_choices(TrainerConfig(grad_reduce_dtype="bfloat16"), _cpu(world=2))
    check_choices(TrainerConfig(attn_implementation="flex_attention"), _cpu())


@pytest.mark.parametrize("reduce", ["float32", "bfloat16"])
def test_grad_reduce_dtype_reaches_the_fsdp_policy(reduce):
    # FSDP2 over a one-rank gloo mesh: the policy is what is under test, and check_choices (not shard_model) is
    # what refuses bfloat16 at one rank.
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        par = _cpu()
        par.mesh = init_device_mesh("cpu", (1,))
        model = shard_model(build_tiny_model(), par, TrainerConfig(grad_reduce_dtype=reduce))
        want = getattr(torch, reduce)
        for module in (model, model.model.layers[0]):
            assert module._get_fsdp_state()._mp_policy.reduce_dtype == want
    finally:
        dist.destroy_process_group()
