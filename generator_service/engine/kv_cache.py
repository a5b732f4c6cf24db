"""A preallocated KV cache with one row ("slot") per running sequence.

Rows 0..n-1 always hold the n running sequences (the engine compacts on finish), so a decode
step reads strided views of the cache, never a gather. Layout per layer:
[slot * kv_head, position, head_dim] for keys and values alike: one decode step writes one
contiguous head_dim vector per (row, head), and attention reads exactly the positions in use.
(Measured on the ~1M model: a dense, resizable layout or transposed keys gave no gain, the
step being bound by reading the cache.)

Zero-initialised: positions past a row's length are masked in attention, and masked
entries must still be finite, since 0 * NaN would poison the output.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(
        self, layers: int, slots: int, kv_heads: int, head_dim: int, max_seq_len: int, dtype: torch.dtype
    ) -> None:
        self.slots, self.kv_heads, self.head_dim, self.max_seq_len = slots, kv_heads, head_dim, max_seq_len
        shape = (layers, slots * kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        # Flat row offset of (slot, head) at position 0 in a [-1, head_dim] view of one layer.
        self._base = torch.arange(slots * kv_heads) * max_seq_len

    def nbytes(self) -> int:
        return (self.k.numel() + self.v.numel()) * self.k.element_size()

    def write_prefill(self, layer: int, row0: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys/values [m, kv_heads, P, head_dim] at rows row0..row0+m-1, positions 0..P-1."""
        m, h, p, d = k.shape
        rows = slice(row0 * h, (row0 + m) * h)
        self.k[layer, rows, :p] = k.reshape(m * h, p, d)
        self.v[layer, rows, :p] = v.reshape(m * h, p, d)

    def decode_index(self, positions: torch.Tensor) -> torch.Tensor:
        """Scatter offsets for one new key/value per row 0..n-1 at `positions` [n]; computed
        once per step and shared by every layer."""
        n = positions.shape[0]
        return self._base[: n * self.kv_heads] + positions.repeat_interleave(self.kv_heads)

    def write_decode(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one key/value [n, kv_heads, head_dim] per row at offsets from decode_index."""
        d = self.head_dim
        self.k[layer].view(-1, d).index_copy_(0, index, k.reshape(-1, d))
        self.v[layer].view(-1, d).index_copy_(0, index, v.reshape(-1, d))

    def keys_t(self, layer: int, n: int, length: int) -> torch.Tensor:
        """Transposed view [n*kv_heads, head_dim, length] of rows 0..n-1 (for q @ k^T)."""
        return self.k[layer, : n * self.kv_heads, :length].transpose(1, 2)

    def values(self, layer: int, n: int, length: int) -> torch.Tensor:
        """View [n*kv_heads, length, head_dim] of rows 0..n-1."""
        return self.v[layer, : n * self.kv_heads, :length]

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row src into row dst (all layers)."""
        h = self.kv_heads
        s, d = slice(src * h, (src + 1) * h), slice(dst * h, (dst + 1) * h)
        self.k[:, d, :length] = self.k[:, s, :length]
        self.v[:, d, :length] = self.v[:, s, :length]
