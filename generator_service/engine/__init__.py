"""The built-in sampling engine: continuous batching over a slot KV cache, in torch, on CPU or one GPU.

A library, not a service: the generator uses it for rollouts, and inline evaluation and `scalerl eval` use it
for held-out scoring (docs/engine.md).
"""
