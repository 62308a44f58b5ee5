"""One inference server per GPU, shared by every process of a worker.

A Dataflow GPU worker runs one Beam SDK process per vCPU. Left alone, each loads its own copy of the
model, pads only its own batches and time-slices the GPU with the others. With the server, the
first process that needs the GPU starts one server process for it (``client.InferenceClient``);
every process hands its batches' windows to that server through shared memory, and the server pools
the windows of all of them, sorts the pool by length, cuts it into model calls with the one planner
(``answer_batch.plan_model_calls``) and keeps the device queue full (``server.InferenceServer``).

Only small control messages cross the socket; token ids go in and logits come back through a
shared-memory segment of the client's (``shm``). Heavy imports happen in the server process only.
"""

from trt_handler.serving.options import ServerOptions

__all__ = ["ServerOptions"]
