"""The chunked FP32-head logprob path: same values and gradients as one big head, without full logits alive."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from scalerl.trainer_service.policy import head_logprobs, sequence_logprobs


def unchunked(hidden, weight, targets, fp32):
    logits = hidden.float() @ weight.float().T if fp32 else (hidden @ weight.T).float()
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, targets[:, None])[:, 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("fp32,dtype", [(True, torch.float32), (True, torch.bfloat16), (False, torch.bfloat16)])
def test_chunked_head_equals_unchunked_values_and_gradients(fp32, dtype):
    g = torch.Generator().manual_seed(0)
    N, H, V = 37, 16, 300
    h0 = torch.randn(N, H, generator=g).to(dtype)
    w0 = (torch.randn(V, H, generator=g) * 0.3).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    results = []
    for chunk in (N, 8):  # one chunk = the plain computation; 8 = five chunks with a ragged last one
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        lp, ent = head_logprobs(h, w, None, t, fp32, chunk)
        (lp * torch.linspace(-1, 1, N)).sum().backward()
        results.append((lp.detach(), ent, h.grad, w.grad))
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    lp, ent = unchunked(h, w, t, fp32)
    (lp * torch.linspace(-1, 1, N)).sum().backward()
    want = (lp.detach(), ent.detach(), h.grad, w.grad)
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for got in results:
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, **tol)
    assert not results[1][1].requires_grad and results[1][0].dtype == torch.float32


def test_chunked_backward_never_holds_full_logits():
    """Bytes autograd keeps for the backward: one chunk's logits at most, not N x V."""
    N, H, V, chunk = 512, 8, 2000, 64
    h = torch.randn(N, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    t = torch.randint(0, V, (N,))

    def saved_bytes(chunk_tokens):
        total = [0]

        def pack(x):
            total[0] += x.numel() * x.element_size()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            head_logprobs(h, w, None, t, True, chunk_tokens)
        return total[0]

    full = N * V * 4
    assert saved_bytes(N) >= full  # the unchunked head keeps its log-softmax
    assert saved_bytes(chunk) < full / 4  # inputs (hidden, weight, targets) only


def test_sequence_logprobs_chunked_equals_unchunked_on_a_model():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    ids = torch.randint(0, 64, (3, 20))
    att = torch.ones_like(ids)
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[:, 8:] = True
    full_lp, full_ent = sequence_logprobs(model, ids, att, chunk_tokens=10**6)
    for kwargs in ({"chunk_tokens": 7}, {"chunk_tokens": 7, "score_mask": score}):
        lp, ent = sequence_logprobs(model, ids, att, **kwargs)
        keep = score if "score_mask" in kwargs else torch.ones_like(score)
        keep[:, 0] = False
        torch.testing.assert_close(lp[keep], full_lp[keep])
        torch.testing.assert_close(ent[keep], full_ent[keep])
        assert (lp[~keep] == 0).all()
    # The reference is the model's own forward.
    ref = torch.log_softmax(model(ids).logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(full_lp[:, 1:], ref, rtol=1e-5, atol=1e-5)
