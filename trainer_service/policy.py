"""Log-probabilities and entropy of the tokens of a batch under the policy being trained."""

from __future__ import annotations

import torch


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, fp32_lm_head: bool = True):
    """(logprobs, entropy), both (B, L): entry t scores token t given tokens < t (entry 0 is 0).

    With fp32_lm_head the final projection runs in FP32 even for a bf16 model, matching the generator's
    switch: small logit differences between trainer and generator otherwise bias the importance ratio.
    """
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    weight = model.lm_head.weight
    if fp32_lm_head:
        logits = hidden.float() @ weight.float().T
    else:
        logits = (hidden @ weight.T).float()
    logp_all = torch.log_softmax(logits[:, :-1], dim=-1)
    chosen = logp_all.gather(-1, input_ids[:, 1:, None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    pad = chosen.new_zeros(chosen.shape[0], 1)
    return torch.cat([pad, chosen], 1), torch.cat([pad, entropy.detach()], 1)
