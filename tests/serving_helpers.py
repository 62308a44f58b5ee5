"""Picklable loaders for inference-server tests: the server process imports this module to load them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional, Tuple

import numpy as np

from trt_handler.backends.handlers import OnnxRuntimeQAHandler
from trt_handler.planning import BatchPlan
from trt_handler.qa.types import ModelBatch


class EchoRunner:
    """start = token ids, end = -token ids (so every window's logits trace back to it); sleeps
    ``sleep_s`` per call; raises for a call holding token ``poison``, or for one whose profile (the
    planner's choice, which a runner must be given) does not hold its length."""

    def __init__(self, sleep_s: float = 0.0, poison: Optional[int] = None, plan: Optional[BatchPlan] = None) -> None:
        self.sleep_s, self.poison, self.plan = sleep_s, poison, plan

    def run(self, batch: ModelBatch, profile: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.plan is not None and not self.plan.profile(profile).accepts(*batch.shape):
            raise RuntimeError(f"profile {profile} was given for a call of shape {batch.shape}")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.poison is not None and bool((batch.input_ids == self.poison).any()):
            raise RuntimeError(f"poisoned call of shape {batch.shape}")
        ids = batch.input_ids.astype(np.float32)
        return ids, -ids


@dataclass(frozen=True)
class EchoLoader:
    """Loads an :class:`EchoRunner` with a small plan (``max_rows`` rows per call, buckets 32/64)."""

    sleep_s: float = 0.0
    poison: Optional[int] = None
    max_rows: int = 4
    fail_to_load: str = ""

    def __call__(self) -> Any:
        if self.fail_to_load:
            raise RuntimeError(self.fail_to_load)
        plan = BatchPlan.for_buckets((32, 64), max_batch=self.max_rows, max_tokens=None)
        return SimpleNamespace(runner=EchoRunner(self.sleep_s, self.poison, plan), plan=plan)



class PoisonHandler(OnnxRuntimeQAHandler):
    """An ONNX Runtime handler of a bundle (its tokenizer, its plan) whose model is an
    :class:`EchoRunner` failing every call that holds token ``poison``."""

    def __init__(self, bundle: str, poison: int, **options: Any) -> None:
        super().__init__(bundle, **options)
        self.poison = poison

    def load_runner(self) -> Any:
        return EchoRunner(poison=self.poison, plan=self.plan)
