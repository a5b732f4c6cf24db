"""Log-probabilities and entropy of the tokens of a batch under the policy being trained.

The LM head runs over chunks of `chunk_tokens` tokens. With gradients on, each chunk is recomputed in the
backward pass (non-reentrant checkpoint), so at most one chunk's logits (chunk x vocabulary, FP32) are alive at
once, forward or backward: at 8k tokens and a 152k vocabulary the full FP32 logits alone would be 5 GB, their
log-softmax and its gradient as much again each.
"""

from __future__ import annotations

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
):
    """(logprobs, entropy), both (B, L) FP32: entry t scores token t given tokens < t (entry 0 is 0).

    With fp32_lm_head the final projection runs in FP32 even for a bf16 model, matching the generator's
    switch: small logit differences between trainer and generator otherwise bias the importance ratio.
    score_mask (B, L): score only these tokens (the others stay 0), e.g. the completion: the head then skips the
    prompt. position_ids restarting at 0 with attention_mask None pack several sequences into one row.
    """
    method = getattr(model, LOGPROB_METHOD, None)
    fn = method if method is not None else lambda *a: token_logprobs(model, *a)
    return fn(input_ids, attention_mask, position_ids, score_mask, fp32_lm_head, chunk_tokens)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    score_mask: torch.Tensor | None,
    fp32_lm_head: bool,
    chunk_tokens: int,
):
    """The body and the chunked head; under FSDP2 this is a registered forward method of the root."""
    # use_cache=False: training needs no cache, and transformers only reads packed position ids without one.
    hidden = model.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    B, L = input_ids.shape
    h = hidden[:, :-1]
    targets = input_ids[:, 1:]
    if score_mask is None:
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


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    fp32: bool,
    chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), entropy) per row of hidden (N, H), both (N,) FP32; entropy carries no gradient."""
    if fp32:
        weight = weight.float()  # one FP32 copy of the head, shared by every chunk
        bias = None if bias is None else bias.float()
    n = hidden.shape[0]
    if n <= chunk_tokens:
        return _chunk(hidden, weight, bias, targets, fp32)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    lps, ents = [], []
    for start in range(0, n, chunk_tokens):
        args = (hidden[start : start + chunk_tokens], weight, bias, targets[start : start + chunk_tokens], fp32)
        lp, ent = checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps), torch.cat(ents)


def _chunk(hidden, weight, bias, targets, fp32: bool):
    if fp32:
        logits = torch.nn.functional.linear(hidden.float(), weight, bias)
    else:
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, targets[:, None])[:, 0]
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy
