"""Inference: KV cache, sampling, batched prefill + decode, chat sessions, and the continuous-batching engine.

The HTTP server lives in bessemer.infer.server (imported on its own: it pulls in FastAPI).
"""

from bessemer.infer.generate import DecodeBatch, Sequence, decode_step, generate, prefill, stream
from bessemer.infer.kv_cache import KVCache
from bessemer.infer.loading import InferenceModel, load_for_inference
from bessemer.infer.sampling import SamplingParams

__all__ = [
    "DecodeBatch",
    "InferenceModel",
    "KVCache",
    "SamplingParams",
    "Sequence",
    "decode_step",
    "generate",
    "load_for_inference",
    "prefill",
    "stream",
]
