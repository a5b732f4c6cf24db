"""Trainer -> generator policy weights: one family of transports, named in registry.py.

layout.py: buckets and manifests; base.py: the interfaces and the zmq announcement; zmq.py and dist.py: the
transports.

Both transports flatten the named tensors into byte buckets (~64 MiB; a larger
tensor gets a bucket of its own) described by a WeightUpdate (messages.py)
whose manifest gives each tensor's name, dtype, shape, bucket and offset.

  zmq:  ZmqWeightSender binds a ROUTER and serves from a background thread. A
        ZmqWeightReceiver (DEALER) sends Ready(version=v) meaning "I want a version
        newer than v"; it is answered, as soon as one exists, with a single
        multipart message [WeightUpdate, bucket 0, bucket 1, ...] of the latest
        version. So publish() never waits for generators, a late joiner gets the
        latest weights at once, and a slow one skips versions instead of queueing.
  dist: DistWeightSender (rank 0 of a weight process group holding the trainer
        and the generators) sends the WeightUpdate over zmq to every receiver,
        then broadcasts the buckets. publish() blocks until every receiver has
        called receive(), so generators must poll receive() regularly (e.g.
        between decode steps). Collectives only start after an announcement,
        so nothing sits pending on an NCCL stream between updates.
  vllm-nccl / vllm-gloo: the same announcement and broadcast, but the receivers
        are vLLM's workers (its weight-transfer engines; AnnouncementReceiver in the
        generator only hears the WeightUpdate), so the buckets are laid out as
        vLLM's packed_tensor module cuts them (packed_layout), not aligned.

Senders take the tensors as a stream (publish_stream): the trainer gathers and
casts one tensor at a time (FSDP2), so only one bucket is ever held on the device.
What they publish is under checkpoint names (checkpoint_names.py): an MoE layer's
fused experts go out one tensor per expert, as vLLM's loader wants them.

Receivers return tensors that are views into freshly allocated buckets: the
caller may keep or modify them. Tensors travel as raw little-endian bytes.
"""
