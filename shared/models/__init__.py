"""Models: the built-in tiny Qwen2 and its character tokenizer, and loading a model directory.

Imports torch and transformers: never imported by the CLI at module load.
"""
