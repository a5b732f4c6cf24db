"""A batched forward of a transformers decoder-only model over a SlotKVCache.

It reuses the HF model's weights (no copy) but not its forward: HF's per-call overhead
(mask building, cache objects, module hooks) dominates at small model sizes, and it has no
notion of rows at different positions sharing a batch. Supported: the Llama family with full
attention (model_type qwen2, qwen3, llama): RMSNorm, rotary embeddings, GQA attention with
optional q/k/v bias (Qwen2) and per-head q/k norms (Qwen3), SwiGLU MLP.

q/k/v and gate/up projections are fused into one matmul each, and every projection weight is
stored transposed ([in, out], faster on CPU). To keep a single copy of the weights, the HF
parameters are re-pointed to views of these buffers, so an in-place update of an HF
parameter (param.data.copy_) is seen here immediately, and the HF module still computes
the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from scalerl.generator_service.engine.kv_cache import SlotKVCache
from scalerl.generator_service.engine.support import architecture_problem

# These rope variants change with sequence length; a fixed table cannot reproduce them.
_UNSUPPORTED_ROPE = ("dynamic", "longrope")


@dataclass(frozen=True)
class DecoderConfig:
    """The HF config fields this forward reads, typed: torch's Module.__getattr__ types model.config as
    Tensor | Module, and transformers' config class declares none of these fields."""

    vocab_size: int
    num_hidden_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    rms_norm_eps: float

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> DecoderConfig:
        cfg = _hf_config(model)
        return cls(
            vocab_size=cfg.vocab_size,
            num_hidden_layers=cfg.num_hidden_layers,
            n_heads=cfg.num_attention_heads,
            n_kv=cfg.num_key_value_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            rms_norm_eps=cfg.rms_norm_eps,
        )


@dataclass
class _Layer:
    """One decoder layer's weights; the *_w matrices are stored transposed ([in, out])."""

    ln_in: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    # Per-head (q, k) norm weights (Qwen3); None for models without them.
    qk_norm: tuple[torch.Tensor, torch.Tensor] | None
    o_w: torch.Tensor
    ln_post: torch.Tensor
    gate_up_w: torch.Tensor
    down_w: torch.Tensor


def _hf_config(model: torch.nn.Module) -> Any:
    # A transformers PreTrainedConfig, whose fields differ per model_type and are not declared on the class;
    # callers read it only through check_supported and DecoderConfig.
    return model.config


def _linear(module: torch.nn.Module, name: str) -> torch.nn.Linear:
    # transformers builds the projections as nn.Linear; get_submodule can only promise a Module.
    return cast(torch.nn.Linear, module.get_submodule(name))


def check_supported(model: torch.nn.Module) -> None:
    """Raise ValueError (one line) when the model's architecture is not one this forward reproduces."""
    cfg = _hf_config(model)
    # A model built from a config (not loaded) has no `architectures`: its class is the architecture.
    problem = architecture_problem({**cfg.to_dict(), "architectures": [type(model).__name__]})
    if problem is not None:
        raise ValueError(problem)
    layer_types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError("torch engine: sliding-window attention layers are not supported")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") in _UNSUPPORTED_ROPE:
        raise ValueError(f"torch engine: rope_type {rope['rope_type']!r} is not supported")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"torch engine: hidden_act {cfg.hidden_act!r} is not supported (silu only)")
    if getattr(cfg, "mlp_bias", False):
        raise ValueError("torch engine: mlp_bias is not supported")


def _fuse(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One transposed weight [in, sum(out)] (and bias) for the linears, and re-point each HF
    parameter to its (transposed) slice so there stays a single copy of the weights.

    Transposed because x @ W^T with W^T stored contiguous is ~15-20% faster on CPU than
    F.linear for these small matrices."""
    weight_t = torch.cat([lin.weight.data for lin in linears], dim=0).t().contiguous()
    has_bias = [lin.bias is not None for lin in linears]
    bias = None
    if any(has_bias):
        bias = torch.cat(
            [lin.bias.data if lin.bias is not None else weight_t.new_zeros(lin.out_features) for lin in linears]
        )
    start = 0
    for lin in linears:
        end = start + lin.out_features
        lin.weight.data = weight_t[:, start:end].t()
        # bias is set whenever any of the linears has one.
        if lin.bias is not None and bias is not None:
            lin.bias.data = bias[start:end]
        start = end
    return weight_t, bias


def _linear_t(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight_t (+ bias), for a weight stored transposed by _fuse."""
    if x.dim() == 2:
        return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)
    out = torch.matmul(x, weight_t)
    return out if bias is None else out + bias


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    # HF's order for low precision: normalise in fp32, round, then scale in the model dtype.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


class Decoder:
    """Prefill and decode for rows of a SlotKVCache. Logits come back in float32."""

    def __init__(self, model: torch.nn.Module, max_seq_len: int, fp32_lm_head: bool) -> None:
        check_supported(model)
        self.config = cfg = DecoderConfig.from_model(model)
        base = model.get_submodule("model")
        self.embed = model.get_parameter("model.embed_tokens.weight")
        self.dtype = self.embed.dtype
        self.n_heads = cfg.n_heads
        self.n_kv = cfg.n_kv
        self.head_dim = cfg.head_dim
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.max_seq_len = max_seq_len
        self._arange = torch.arange(max_seq_len)
        self.fp32_lm_head = fp32_lm_head

        self.final_norm = base.get_parameter("norm.weight")
        self.lm_head_param = model.get_parameter("lm_head.weight")
        self.layers: list[_Layer] = []
        for layer in cast(torch.nn.ModuleList, base.get_submodule("layers")):
            attn, mlp = layer.get_submodule("self_attn"), layer.get_submodule("mlp")
            qkv_w, qkv_b = _fuse([_linear(attn, "q_proj"), _linear(attn, "k_proj"), _linear(attn, "v_proj")])
            gate_up_w, _ = _fuse([_linear(mlp, "gate_proj"), _linear(mlp, "up_proj")])
            o_w, _ = _fuse([_linear(attn, "o_proj")])
            down_w, _ = _fuse([_linear(mlp, "down_proj")])
            q_norm = getattr(attn, "q_norm", None)
            self.layers.append(
                _Layer(
                    ln_in=layer.get_parameter("input_layernorm.weight"),
                    qkv_w=qkv_w,
                    qkv_b=qkv_b,
                    qk_norm=None if q_norm is None else (q_norm.weight, attn.get_parameter("k_norm.weight")),
                    o_w=o_w,
                    ln_post=layer.get_parameter("post_attention_layernorm.weight"),
                    gate_up_w=gate_up_w,
                    down_w=down_w,
                )
            )
        self.intermediate = self.layers[0].down_w.shape[0]
        self._rope_tables(base)
        self.refresh_lm_head()

    def _rope_tables(self, base: torch.nn.Module) -> None:
        # HF's own rotary module builds the table, so every static rope scaling is honoured.
        positions = torch.arange(self.max_seq_len)[None, :]
        probe = torch.zeros(1, dtype=self.dtype)
        with torch.no_grad():
            cos, sin = base.get_submodule("rotary_emb")(probe, positions)
        half = self.head_dim // 2
        self.cos = cos[0].contiguous()
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]
        self.sin_signed = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1).contiguous()

    def refresh_lm_head(self) -> None:
        """Rebuild the FP32 copy of the LM head (call after its weights changed)."""
        w = self.lm_head_param.data
        self.lm_w = w.float() if self.fp32_lm_head and w.dtype != torch.float32 else w

    def lm_head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final-norm'd hidden [B, H] -> float32 logits [B, V]; FP32 matmul when fp32_lm_head."""
        if self.lm_w.dtype == torch.float32:
            return F.linear(h.float(), self.lm_w)
        return F.linear(h, self.lm_w).float()

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x * cos, x.roll(self.head_dim // 2, dims=-1), sin)

    def _qkv(
        self, lay: _Layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections + norms + rope for hidden [..., H] -> q [..., Hq, d], k, v [..., Hkv, d]."""
        qkv = _linear_t(h, lay.qkv_w, lay.qkv_b)
        lead = qkv.shape[:-1]
        d = self.head_dim
        qk = qkv[..., : (self.n_heads + self.n_kv) * d].view(*lead, self.n_heads + self.n_kv, d)
        v = qkv[..., (self.n_heads + self.n_kv) * d :].view(*lead, self.n_kv, d)
        if lay.qk_norm is not None:
            q_norm, k_norm = lay.qk_norm
            q, k = qk.split((self.n_heads, self.n_kv), dim=-2)
            qk = torch.cat((_rms_norm(q, q_norm, self.eps), _rms_norm(k, k_norm, self.eps)), dim=-2)
        qk = self._rope(qk, cos, sin)
        q, k = qk.split((self.n_heads, self.n_kv), dim=-2)
        return q, k, v

    def _mlp_residual(self, lay: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = _rms_norm(x, lay.ln_post, self.eps)
        gate, up = _linear_t(h, lay.gate_up_w).split(self.intermediate, dim=-1)
        return x + _linear_t(F.silu(gate) * up, lay.down_w)

    @torch.no_grad()
    def prefill(self, cache: SlotKVCache, row0: int, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Run right-padded prompts tokens [m, P] (true lengths [m]) into rows row0..row0+m-1.

        Padding sits after each prompt, so causal attention never lets a real token see it;
        its cache entries lie beyond the row's length and are overwritten by decoding.
        Returns float32 logits [m, V] at each prompt's last token.
        """
        m, p = tokens.shape
        x = F.embedding(tokens, self.embed)
        cos = self.cos[:p, None, :]
        sin = self.sin_signed[:p, None, :]
        for li, lay in enumerate(self.layers):
            h = _rms_norm(x, lay.ln_in, self.eps)
            q, k, v = self._qkv(lay, h, cos, sin)  # [m, P, heads, d]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            cache.write_prefill(li, row0, k, v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
            x = x + _linear_t(o.transpose(1, 2).reshape(m, p, -1), lay.o_w)
            x = self._mlp_residual(lay, x)
        last = x[torch.arange(m), lengths - 1]
        return self.lm_head_logits(_rms_norm(last, self.final_norm, self.eps))

    @torch.no_grad()
    def decode(self, cache: SlotKVCache, tokens: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        """One token per row 0..n-1: tokens [n] at positions [n]; length = max(positions) + 1.

        Returns float32 logits [n, V] for the next token of each row.
        """
        n = tokens.shape[0]
        group = self.n_heads // self.n_kv
        x = F.embedding(tokens, self.embed)
        cos = self.cos[positions][:, None, :]
        sin = self.sin_signed[positions][:, None, :]
        index = cache.decode_index(positions)
        # Additive mask shared by all layers: row r sees positions <= positions[r].
        beyond = self._arange[:length] > positions.repeat_interleave(self.n_kv)[:, None]
        bias = torch.zeros(beyond.shape, dtype=self.dtype).masked_fill_(beyond, float("-inf"))[:, None, :]
        for li, lay in enumerate(self.layers):
            h = _rms_norm(x, lay.ln_in, self.eps)
            q, k, v = self._qkv(lay, h, cos, sin)  # q [n, Hq, d], k/v [n, Hkv, d]
            cache.write_decode(li, index, k, v)
            q = q.reshape(n * self.n_kv, group, self.head_dim)
            scores = torch.baddbmm(bias, q, cache.keys_t(li, n, length), alpha=self.scale)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)
            o = torch.bmm(probs, cache.values(li, n, length))  # [n*Hkv, group, d]
            x = x + _linear_t(o.reshape(n, -1), lay.o_w)
            x = self._mlp_residual(lay, x)
        return self.lm_head_logits(_rms_norm(x, self.final_norm, self.eps))
