"""Log-probabilities and entropy of the tokens of a batch under the policy being trained.

The LM head runs over chunks of `chunk_tokens` tokens. With gradients on, each chunk is recomputed in the
backward pass (non-reentrant checkpoint), so at most one chunk's logits (chunk x vocabulary, FP32) are alive at
once, forward or backward: at 8k tokens and a 152k vocabulary the full FP32 logits alone would be 5 GB, their
log-softmax and its gradient as much again each.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

# Name of the method shard_model adds to a sharded root and registers with register_fsdp_forward_method: the
# head's weight must be read while FSDP has the root unsharded, i.e. inside a call that runs its hooks.
LOGPROB_METHOD = "scalerl_token_logprobs"


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    fp32_lm_head: bool = True,
    *,
    position_ids: torch.Tensor | None = None,
    score_mask: torch.Tensor | None = None,
    chunk_tokens: int = 1024,
    score_index: torch.Tensor | None = None,
):
    """(logprobs, entropy), both (B, L) FP32: entry t scores token t given tokens < t (entry 0 is 0).

    With fp32_lm_head the final projection runs in FP32 even for a bf16 model, matching the generator's
    switch: small logit differences between trainer and generator otherwise bias the importance ratio.
    score_mask (B, L): score only these tokens (the others stay 0), e.g. the completion: the head then skips the
    prompt. position_ids restarting at 0 with attention_mask None pack several sequences into one row.
    score_index: the same selection as flat positions into (B, L - 1), built on the host (microbatch.py): it
    replaces score_mask's boolean indexing, whose output size only a device-to-host sync can tell.
    """
    method = getattr(model, LOGPROB_METHOD, None)
    fn = method if method is not None else lambda *a: token_logprobs(model, *a)
    return fn(input_ids, attention_mask, position_ids, score_mask, fp32_lm_head, chunk_tokens, score_index)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    score_mask: torch.Tensor | None,
    fp32_lm_head: bool,
    chunk_tokens: int,
    score_index: torch.Tensor | None = None,
):
    """The body and the chunked head; under FSDP2 this is a registered forward method of the root."""
    # use_cache=False: training needs no cache, and transformers only reads packed position ids without one.
    hidden = model.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    B, L = input_ids.shape
    h = hidden[:, :-1]
    targets = input_ids[:, 1:]
    if score_index is not None:
        where = score_index
        flat_h = h.reshape(-1, h.shape[-1]).index_select(0, where)
        flat_t = targets.reshape(-1).index_select(0, where)
    elif score_mask is None:
        flat_h, flat_t, where = h.reshape(-1, h.shape[-1]), targets.reshape(-1), None
    else:
        sel = score_mask[:, 1:].bool()
        flat_h, flat_t = h[sel], targets[sel]
        where = sel.reshape(-1).nonzero()[:, 0]
    head = model.lm_head
    lp, ent = head_logprobs(flat_h, head.weight, getattr(head, "bias", None), flat_t, fp32_lm_head, chunk_tokens)
    if where is not None:
        lp = lp.new_zeros(B * (L - 1)).index_put((where,), lp)
        ent = ent.new_zeros(B * (L - 1)).index_put((where,), ent)
    pad = lp.new_zeros(B, 1)
    return torch.cat([pad, lp.reshape(B, L - 1)], 1), torch.cat([pad, ent.reshape(B, L - 1)], 1)


# How the FP32 head multiplies (head_path). "fp32": FP32 copies of both operands, an FP32 GEMM (CUDA cores on a
# GPU; the CPU path, whose numbers must not move). "bf16_out_fp32": bf16 operands, FP32 output and accumulation:
# the operands of an FP32 head under a bf16 model already hold bf16 values, and a product of two bf16 values is
# exact in FP32, so this is the same sum of the same products at tensor-core rate. "tf32": the same with the FP32
# GEMM allowed TF32, where torch.mm has no out_dtype: TF32's 10-bit mantissa holds a bf16 value exactly.
# "native": no FP32 head, the model's own dtype.
def head_path(
    fp32: bool, device_type: str, hidden_dtype: torch.dtype, weight_dtype: torch.dtype, mm_out_dtype: bool
) -> str:
    """Which GEMM the head runs; a pure function of what is known, so the CUDA choice is testable without CUDA."""
    if not fp32:
        return "native"
    if device_type != "cuda" or hidden_dtype != torch.bfloat16 or weight_dtype != torch.bfloat16:
        return "fp32"
    return "bf16_out_fp32" if mm_out_dtype else "tf32"


@functools.cache
def mm_out_dtype_available(device: str) -> bool:
    """Whether torch.mm(bf16, bf16, out_dtype=float32) runs on this device (probed once per device): the overload
    is recent, and has no CPU kernel."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _mm_bf16_out_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a.bfloat16(), b.bfloat16(), out_dtype=torch.float32)


def _mm_tf32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The switch is global, so it is set only around this product: the rest of the model keeps the user's setting.
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return a.float() @ b.float()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class _HeadMM(torch.autograd.Function):
    """hidden @ weight.T with FP32 output through `mm`, and the backward's two products through the same `mm`:
    aten's out_dtype overload has no derivative, and an FP32 backward would keep two thirds of the head's FLOPs on
    CUDA cores. The backward's operand is the FP32 logits gradient rounded by `mm` (to bf16, or TF32's 10 bits);
    the gradient lands in the parameters' bf16 anyway."""

    @staticmethod
    def forward(ctx, hidden, weight, mm):
        ctx.save_for_backward(hidden, weight)
        ctx.mm = mm
        return mm(hidden, weight.t())

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        gh = ctx.mm(grad, weight).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = ctx.mm(grad.t(), hidden).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None


_MM: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bf16_out_fp32": _mm_bf16_out_fp32,
    "tf32": _mm_tf32,
}


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    fp32: bool,
    chunk_tokens: int,
    *,
    mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), entropy) per row of hidden (N, H), both (N,) FP32; entropy carries no gradient.

    mm: the bf16 x bf16 -> FP32 product to use instead of head_path's choice (tests emulate the CUDA one on CPU)."""
    if fp32 and mm is None:
        dev = weight.device.type
        path = head_path(
            True, dev, hidden.dtype, weight.dtype, dev == "cuda" and mm_out_dtype_available(str(weight.device))
        )
        mm = _MM.get(path)
    if fp32 and mm is None:
        weight = weight.float()  # one FP32 copy of the head, shared by every chunk
    if fp32 and bias is not None:
        bias = bias.float()
    n = hidden.shape[0]
    if n <= chunk_tokens:
        return _chunk(hidden, weight, bias, targets, fp32, mm)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    lps, ents = [], []
    for start in range(0, n, chunk_tokens):
        args = (hidden[start : start + chunk_tokens], weight, bias, targets[start : start + chunk_tokens], fp32, mm)
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps), torch.cat(ents)


def _chunk(hidden, weight, bias, targets, fp32: bool, mm=None):
    if mm is not None:
        logits = _HeadMM.apply(hidden, weight, mm)
        if bias is not None:
            logits = logits + bias
    elif fp32:
        logits = torch.nn.functional.linear(hidden.float(), weight, bias)
    else:
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, targets[:, None])[:, 0]
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy
