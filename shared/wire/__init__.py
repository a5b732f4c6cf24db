"""What crosses a process boundary: message types, the msgpack codec, ZeroMQ sockets, addresses and dtypes.

Nothing here is pickled; weights travel as raw tensors (docs/protocol.md).
"""
