"""The torch sampling engine against transformers itself, on small seeded random models."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from scalerl.generator_service.backend import Completion, EngineRequest, EngineSampling, GenerationBackend
from scalerl.generator_service.engine.decoder import Decoder
from scalerl.generator_service.engine.kv_cache import SlotKVCache
from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig

torch.set_num_threads(1)

VOCAB = 64
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=344,
    max_position_embeddings=512,
)


def qwen2(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**{**SMALL, **overrides})).eval()


def engine_for(model, **config) -> TorchEngine:
    config.setdefault("max_seq_len", 256)
    return TorchEngine(copy.deepcopy(model), TorchEngineConfig(**config))


def prompt(seed: int, length: int) -> tuple[int, ...]:
    return tuple(torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist())


def drain(engine: TorchEngine) -> dict[str, Completion]:
    done = {}
    while engine.has_unfinished():
        engine.step()
        done.update((c.request_id, c) for c in engine.collect_finished())
    done.update((c.request_id, c) for c in engine.collect_finished())
    return done


@torch.no_grad()
def hf_greedy(model, prefix, n: int) -> list[int]:
    ids = torch.tensor([list(prefix)])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, len(prefix) :].tolist()


@torch.no_grad()
def hf_logprobs(model, prefix, completion) -> torch.Tensor:
    ids = torch.tensor([list(prefix) + list(completion)])
    logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return logp[len(prefix) - 1 : -1].gather(1, torch.tensor(list(completion))[:, None]).squeeze(1)


GREEDY = dict(temperature=0.0)


def test_engine_satisfies_the_backend_protocol():
    assert isinstance(engine_for(qwen2()), GenerationBackend)


# ---- the forward itself --------------------------------------------------------------------


def _qwen3():
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(**SMALL, head_dim=32)).eval()


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()


@pytest.mark.parametrize("make", [qwen2, _qwen3, _llama], ids=["qwen2", "qwen3", "llama"])
def test_prefill_and_decode_logits_match_the_hf_forward(make):
    model = make()
    seqs = [prompt(s, 20) for s in range(3)]
    with torch.no_grad():
        ref = [model(torch.tensor([list(s)])).logits[0] for s in seqs]
    mine = copy.deepcopy(model)
    dec = Decoder(mine, max_seq_len=64, fp32_lm_head=True)
    cache = SlotKVCache(len(dec.layers), 4, dec.n_kv, dec.head_dim, 64, torch.float32)
    plens = torch.tensor([5, 3, 8])
    padded = torch.zeros(3, 8, dtype=torch.int64)
    for i, s in enumerate(seqs):
        padded[i, : plens[i]] = torch.tensor(s[: plens[i]])
    logits = dec.prefill(cache, 0, padded, plens)
    for i in range(3):
        torch.testing.assert_close(logits[i], ref[i][plens[i] - 1], atol=2e-5, rtol=1e-4)
    # Teacher-forced decode: rows sit at different positions in one batch.
    for step in range(10):
        positions = plens + step
        tokens = torch.tensor([seqs[i][positions[i]] for i in range(3)])
        logits = dec.decode(cache, tokens, positions, int(positions.max()) + 1)
        for i in range(3):
            torch.testing.assert_close(logits[i], ref[i][positions[i]], atol=2e-5, rtol=1e-4)
    # Re-pointing the HF parameters into fused buffers leaves the HF model itself intact.
    with torch.no_grad():
        torch.testing.assert_close(mine(torch.tensor([list(seqs[0])])).logits[0], ref[0])


# ---- generation ----------------------------------------------------------------------------


def test_greedy_equals_hf_generate_token_for_token_with_queueing_and_joining():
    model = qwen2()
    # 7 requests over 3 slots: later ones wait, join running rows, rows finish at different times.
    reqs = [
        EngineRequest(f"r{i}", prompt(i, 3 + 2 * i), EngineSampling(max_new_tokens=10 + 5 * i, **GREEDY))
        for i in range(7)
    ]
    engine = engine_for(model, max_batch=3, max_prefill_tokens=12)
    engine.add_requests(reqs)
    out = drain(engine)
    assert sorted(out) == sorted(r.request_id for r in reqs)
    for r in reqs:
        c = out[r.request_id]
        assert c.token_ids.tolist() == hf_greedy(model, r.prompt_token_ids, r.params.max_new_tokens)
        assert c.finish_reason == "length"
        assert not c.forced.any() and (c.versions == 0).all()


def test_logprobs_are_the_temperature_one_policy_from_a_full_forward():
    model = qwen2()
    reqs = [
        EngineRequest(
            f"r{i}", prompt(10 + i, 4 + i), EngineSampling(temperature=0.7, top_p=0.9, max_new_tokens=24, seed=i)
        )
        for i in range(4)
    ]
    engine = engine_for(model)
    engine.add_requests(reqs)
    out = drain(engine)
    for r in reqs:
        c = out[r.request_id]
        assert c.logprobs.dtype.name == "float32"
        ref = hf_logprobs(model, r.prompt_token_ids, c.token_ids.tolist())
        torch.testing.assert_close(torch.from_numpy(c.logprobs), ref, atol=1e-4, rtol=1e-4)


def test_requests_added_mid_flight_join_and_match_solo_runs():
    model = qwen2()
    params = [EngineSampling(temperature=1.0, max_new_tokens=20 + 3 * i, seed=100 + i) for i in range(6)]
    reqs = [EngineRequest(f"r{i}", prompt(20 + i, 4 + i), params[i]) for i in range(6)]
    engine = engine_for(model, max_batch=8)
    engine.add_requests(reqs[:2])
    for _ in range(5):
        engine.step()
    engine.add_requests(reqs[2:4])
    engine.step()
    assert engine.stats().running == 4  # the late ones decode next to the early ones
    for _ in range(3):
        engine.step()
    engine.add_requests(reqs[4:])
    out = drain(engine)
    assert sorted(out) == [r.request_id for r in reqs]
    assert out["r4"].timings.started > out["r0"].timings.started
    for r in reqs:
        solo = engine_for(model)
        solo.add_requests([r])
        alone = drain(solo)[r.request_id]
        assert out[r.request_id].token_ids.tolist() == alone.token_ids.tolist()
        assert len(alone.token_ids) == r.params.max_new_tokens


def test_from_pretrained_loads_a_local_checkpoint(tmp_path):
    model = qwen2()
    model.save_pretrained(tmp_path)
    engine = TorchEngine.from_pretrained(str(tmp_path), TorchEngineConfig(max_seq_len=64))
    p = prompt(3, 5)
    engine.add_requests([EngineRequest("p", p, EngineSampling(max_new_tokens=8, **GREEDY))])
    assert drain(engine)["p"].token_ids.tolist() == hf_greedy(model, p, 8)


def test_unseeded_requests_take_seeds_from_the_engine_seed():
    model = qwen2()
    reqs = [EngineRequest(f"r{i}", prompt(i, 5), EngineSampling(max_new_tokens=16)) for i in range(3)]
    runs = []
    for seed in (7, 7, 8):
        engine = engine_for(model, seed=seed)
        engine.add_requests(reqs)
        runs.append([c.token_ids.tolist() for _, c in sorted(drain(engine).items())])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_tiny_top_p_is_greedy():
    model = qwen2()
    reqs = [EngineRequest(f"r{i}", prompt(30 + i, 6), EngineSampling(max_new_tokens=20, seed=i)) for i in range(3)]
    engine = engine_for(model)
    engine.add_requests(
        [
            EngineRequest(
                r.request_id,
                r.prompt_token_ids,
                EngineSampling(temperature=1.0, top_p=1e-6, max_new_tokens=20, seed=r.params.seed),
            )
            for r in reqs
        ]
    )
    nucleus = drain(engine)
    for r in reqs:
        assert nucleus[r.request_id].token_ids.tolist() == hf_greedy(model, r.prompt_token_ids, 20)


def test_stop_token_ends_the_completion_and_is_kept():
    model = qwen2()
    p = prompt(40, 5)
    free = hf_greedy(model, p, 12)
    stop = free[6]
    first = free.index(stop)
    engine = engine_for(model)
    engine.add_requests([EngineRequest("s", p, EngineSampling(max_new_tokens=12, stop_token_ids=(stop,), **GREEDY))])
    c = drain(engine)["s"]
    assert c.token_ids.tolist() == free[: first + 1]
    assert c.finish_reason == "stop"


# ---- in-flight weight updates --------------------------------------------------------------


@torch.no_grad()
def mixed_cache_continuation(old, new, prefix, tokens, switch: int):
    """Greedy tokens[switch:] and their logprobs when tokens[:switch] came from `old`: the KV of
    prefix + tokens[:switch-1] is computed by `old` and kept, then `new` continues."""
    if switch == 0:
        cont = hf_greedy(new, prefix, len(tokens))
        return cont, hf_logprobs(new, prefix, cont)
    past = old(torch.tensor([list(prefix) + tokens[: switch - 1]]), use_cache=True).past_key_values
    cur, cont, logps = tokens[switch - 1], [], []
    for _ in range(len(tokens) - switch):
        out = new(torch.tensor([[cur]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logp = torch.log_softmax(out.logits[0, -1].float(), -1)
        cur = int(logp.argmax())
        cont.append(cur)
        logps.append(logp[cur])
    return cont, torch.stack(logps)


def test_update_mid_generation_keeps_sequences_and_cache_and_records_versions():
    old, new = qwen2(0), qwen2(1)
    reqs = [
        EngineRequest(f"r{i}", prompt(50 + i, 3 + i), EngineSampling(max_new_tokens=14, **GREEDY)) for i in range(4)
    ]
    engine = engine_for(old, max_batch=8)
    engine.add_requests(reqs[:3])
    for _ in range(4):
        engine.step()
    engine.add_requests(reqs[3:])  # waiting at the update: starts under the new weights
    pause = engine.update_weights(new.state_dict(), version=1)
    assert pause > 0
    out = drain(engine)
    assert sorted(out) == [r.request_id for r in reqs]
    stats = engine.stats()
    assert stats.policy_version == 1 and stats.weight_updates == 1
    for r in reqs:
        c = out[r.request_id]
        tokens, versions = c.token_ids.tolist(), c.versions.tolist()
        assert len(tokens) == 14
        switch = versions.count(0)
        assert versions == [0] * switch + [1] * (14 - switch)
        assert switch == (5 if r.request_id != "r3" else 0)  # prefill+decode, then 4 decodes
        # Not restarted: the tokens before the update are the old policy's.
        assert tokens[:switch] == hf_greedy(old, r.prompt_token_ids, 14)[:switch]
        # After it: the new weights on top of the old KV cache.
        cont, logps = mixed_cache_continuation(old, new, r.prompt_token_ids, tokens, switch)
        assert tokens[switch:] == cont
        torch.testing.assert_close(torch.from_numpy(c.logprobs[switch:]), logps, atol=1e-4, rtol=1e-4)


def test_update_validates_everything_before_copying_anything():
    model = qwen2()
    engine = engine_for(model)
    name = "model.layers.0.self_attn.q_proj.weight"
    before = engine.model.get_parameter(name).detach().clone()
    with pytest.raises(KeyError, match="no.such.weight"):
        engine.update_weights({name: torch.zeros_like(before), "no.such.weight": torch.zeros(1)}, 1)
    with pytest.raises(ValueError, match="model.norm.weight"):
        engine.update_weights([(name, torch.zeros_like(before)), ("model.norm.weight", torch.zeros(3))], 1)
    assert torch.equal(engine.model.get_parameter(name), before)
    assert engine.stats().policy_version == 0
    # A partial update is fine and reaches the fused q/k/v buffer the forward reads.
    engine.update_weights({name: torch.zeros_like(before)}, 2)
    assert torch.count_nonzero(engine.decoder.layers[0].qkv_w[:, : before.shape[0]]) == 0
    assert engine.stats().policy_version == 2


# ---- forced length interruption ------------------------------------------------------------

INTERRUPT = (60, 61, 62)


def test_interruption_at_the_budget_then_answer_continues_from_the_forced_text():
    model = qwen2()
    p = prompt(60, 5)
    params = EngineSampling(
        max_new_tokens=40, thinking_budget=(6, 6), interruption_token_ids=INTERRUPT, answer_budget=4, **GREEDY
    )
    engine = engine_for(model)
    engine.add_requests([EngineRequest("i", p, params)])
    c = drain(engine)["i"]
    tokens = c.token_ids.tolist()
    assert len(tokens) == 6 + 3 + 4
    assert tokens[:6] == hf_greedy(model, p, 6)
    assert tuple(tokens[6:9]) == INTERRUPT
    assert c.forced.tolist() == [False] * 6 + [True] * 3 + [False] * 4
    assert (c.logprobs[6:9] == 0).all() and (c.logprobs[:6] < 0).all() and (c.logprobs[9:] < 0).all()
    assert c.finish_reason == "interrupted" and c.thinking_budget == 6
    # The forced tokens went through the KV cache: the answer is the greedy continuation of them.
    assert tokens[9:] == hf_greedy(model, p + tuple(tokens[:9]), 4)
    assert engine.stats().forced_tokens == 3


def test_edge_budgets_zero_budget_and_single_token():
    model = qwen2()
    p = prompt(65, 4)
    engine = engine_for(model)
    engine.add_requests(
        [
            EngineRequest(
                "zero",
                p,
                EngineSampling(max_new_tokens=6, thinking_budget=(0, 0), interruption_token_ids=INTERRUPT, **GREEDY),
            ),
            EngineRequest("one", p, EngineSampling(max_new_tokens=1, **GREEDY)),
        ]
    )
    out = drain(engine)
    zero = out["zero"].token_ids.tolist()
    assert tuple(zero[:3]) == INTERRUPT and zero[3:] == hf_greedy(model, p + INTERRUPT, 3)
    assert out["zero"].finish_reason == "interrupted"
    assert out["one"].token_ids.tolist() == hf_greedy(model, p, 1) and out["one"].finish_reason == "length"


def test_budget_range_is_drawn_per_request():
    model = qwen2()
    params = [
        EngineSampling(
            temperature=1.0,
            max_new_tokens=30,
            thinking_budget=(5, 12),
            interruption_token_ids=INTERRUPT,
            answer_budget=2,
            seed=s,
        )
        for s in range(8)
    ]
    engine = engine_for(model)
    engine.add_requests([EngineRequest(f"r{s}", prompt(70 + s, 4), params[s]) for s in range(8)])
    out = drain(engine)
    budgets = set()
    for c in out.values():
        b = c.thinking_budget
        assert 5 <= b <= 12
        budgets.add(b)
        assert tuple(c.token_ids[b : b + 3].tolist()) == INTERRUPT and c.forced.tolist().index(True) == b
        assert len(c.token_ids) == b + 3 + 2 and c.finish_reason == "interrupted"
    assert len(budgets) > 1


# ---- precision -----------------------------------------------------------------------------


def test_fp32_lm_head_with_a_bf16_model():
    model = qwen2(tie_word_embeddings=True)
    on = engine_for(model, dtype="bfloat16", fp32_lm_head=True)
    off = engine_for(model, dtype="bfloat16", fp32_lm_head=False)
    assert on.decoder.dtype == torch.bfloat16 and on.cache.k.dtype == torch.bfloat16
    w = on.model.lm_head.weight
    assert w.dtype == torch.bfloat16 and on.decoder.lm_w.dtype == torch.float32
    h = torch.randn(5, 128).to(torch.bfloat16)
    torch.testing.assert_close(on.decoder.lm_head_logits(h), F.linear(h.float(), w.float()), atol=0, rtol=0)
    low = off.decoder.lm_head_logits(h)
    torch.testing.assert_close(low, F.linear(h, w).float(), atol=0, rtol=0)
    assert torch.equal(low, low.to(torch.bfloat16).float())  # bf16-rounded logits ...
    assert not torch.equal(on.decoder.lm_head_logits(h), low)  # ... which the switch avoids

    # End to end, against HF's bf16 hidden states with an FP32 head.
    p = prompt(80, 6)
    on.add_requests([EngineRequest("b", p, EngineSampling(max_new_tokens=12, **GREEDY))])
    c = drain(on)["b"]
    ref_model = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        ids = torch.tensor([list(p) + c.token_ids.tolist()])
        hidden = ref_model.model(ids).last_hidden_state[0]
        logp = torch.log_softmax(F.linear(hidden.float(), ref_model.lm_head.weight.float()), -1)
    ref = logp[len(p) - 1 : -1].gather(1, torch.tensor(c.token_ids.tolist())[:, None]).squeeze(1)
    torch.testing.assert_close(torch.from_numpy(c.logprobs), ref, atol=0.05, rtol=0.05)

    # Updating the tied embedding refreshes the FP32 head copy.
    new = torch.randn_like(w, dtype=torch.float32)
    on.update_weights({"model.embed_tokens.weight": new}, 1)
    torch.testing.assert_close(on.decoder.lm_w, new.to(torch.bfloat16).float(), atol=0, rtol=0)


# ---- bad input -----------------------------------------------------------------------------


def test_bad_requests_are_refused_whole_batch_with_a_named_error():
    engine = engine_for(qwen2())
    good = EngineRequest("good", (1, 2, 3), EngineSampling(max_new_tokens=8))
    with pytest.raises(ValueError, match="'bad'.*prompt_token_ids"):
        engine.add_requests([good, EngineRequest("bad", (1, VOCAB))])
    assert engine.stats().waiting == 0 and not engine.has_unfinished()
    engine.add_requests([good])
    with pytest.raises(ValueError, match="'good'.*already in flight"):
        engine.add_requests([good])
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        engine.add_requests([EngineRequest("long", (1,) * 200, EngineSampling(max_new_tokens=100))])
    assert engine.stats().waiting == 1


def test_unsupported_architecture_is_refused_with_one_line():
    model = qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=0)
    with pytest.raises(ValueError, match="sliding-window"):
        engine_for(model)
