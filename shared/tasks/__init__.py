"""Tasks and rewards: task items and data files, chat rendering, verifiers and the code sandbox.

No torch here: the CLI validates tasks before any process starts.
"""
