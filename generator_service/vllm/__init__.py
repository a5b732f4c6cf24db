"""The vLLM backend: vLLM's engine behind the same backend interface as the built-in engine, with in-flight
weight updates through vLLM's weight-transfer engines (docs/vllm.md). Imports vllm: load it only when
`generator.backend = "vllm"`.
"""
