"""The FP32 LM head at tensor-core speed (trainer_service/policy.py, head_path): bf16 x bf16 operands with FP32
output equal the FP32 head, because the operands of an FP32 head under a bf16 model hold bf16 values and a product
of two bf16 values is exact in FP32. CUDA's torch.mm(..., out_dtype=float32) has no CPU kernel, so the product is
emulated here (bf16-rounded operands, an FP32 GEMM) through the same autograd function the CUDA path uses; the
exact reference is float64."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from scalerl.trainer_service.policy import head_logprobs, head_path

# Max abs logprob error against float64, measured on this model (logits up to 1.7): FP32 head 1.6e-6, emulated
# bf16 x bf16 -> FP32 head 1.6e-6, plain bf16 head 1.7e-3. The bound sits between with 10x margin each side (cuBLAS
# sums in another order than this CPU GEMM: an FP32 rounding-level difference, well inside it).
LOGPROB_TOL = 2e-5
# The backward rounds the FP32 logits gradient to bf16 (relative 2^-9) before its two products.
GRAD_RTOL = 2e-2


def _emulated_mm(a, b):
    return a.bfloat16().float() @ b.bfloat16().float()


@pytest.fixture(scope="module")
def qwen3_hidden():
    """Hidden states (bf16) of a random-initialised Qwen3-shaped model, its bf16 head and next tokens."""
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=151936,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    with torch.no_grad():
        h = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1].reshape(-1, cfg.hidden_size)
    return h, model.lm_head.weight.detach(), ids[:, 1:].reshape(-1)


def _exact(h, w, t):
    logp = torch.log_softmax(h.double() @ w.double().T, -1)
    return logp.gather(-1, t[:, None])[:, 0]


def test_bf16_operands_with_fp32_output_equal_the_fp32_head(qwen3_hidden):
    h, w, t = qwen3_hidden
    exact = _exact(h, w, t)
    fp32, _ = head_logprobs(h, w, None, t, True, 16)
    tensor_core, _ = head_logprobs(h, w, None, t, True, 16, mm=_emulated_mm)
    plain_bf16, _ = head_logprobs(h, w, None, t, False, 16)
    assert (fp32.double() - exact).abs().max() < LOGPROB_TOL
    assert (tensor_core.double() - exact).abs().max() < LOGPROB_TOL
    assert (tensor_core - fp32).abs().max() < LOGPROB_TOL
    # The tolerance tells the heads apart: a bf16 head is far outside it.
    assert (plain_bf16.double() - exact).abs().max() > 10 * LOGPROB_TOL


def test_tensor_core_head_gradients_match_the_fp32_head(qwen3_hidden):
    h0, w0, t = qwen3_hidden
    g = torch.randn(t.shape[0], generator=torch.Generator().manual_seed(1))
    grads = []
    for mm in (None, _emulated_mm):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        lp, _ = head_logprobs(h, w, None, t, True, 16, mm=mm)  # 46 tokens: 3 chunks, recomputed in backward
        (lp * g).sum().backward()
        grads.append((h.grad.float(), w.grad.float()))
    for ref, got in zip(grads[0], grads[1]):
        assert got.abs().max() > 0
        torch.testing.assert_close(got, ref, rtol=GRAD_RTOL, atol=GRAD_RTOL * ref.abs().max().item())


def test_cpu_fp32_head_keeps_its_exact_numbers(qwen3_hidden):
    h, w, t = qwen3_hidden
    lp, _ = head_logprobs(h, w, None, t, True, 4096)
    want = torch.log_softmax(torch.nn.functional.linear(h.float(), w.float()), -1).gather(-1, t[:, None])[:, 0]
    assert torch.equal(lp, want)


def test_head_path_takes_tensor_cores_only_on_cuda_with_bf16_operands():
    bf, f32 = torch.bfloat16, torch.float32
    assert head_path(True, "cuda", bf, bf, True) == "bf16_out_fp32"
    assert head_path(True, "cuda", bf, bf, False) == "tf32"
    assert head_path(True, "cpu", bf, bf, True) == "fp32"
    assert head_path(True, "cuda", f32, f32, True) == "fp32"  # FP32 operands: TF32 or bf16 would round them
    assert head_path(True, "cuda", bf, f32, True) == "fp32"
    assert head_path(False, "cuda", bf, bf, True) == "native"
