"""Plain data passed between the QA stages.

Every stage of a question's trip (parse -> features -> inference -> answers) hands the next one
these dataclasses, never framework objects, so each stage can be tested, pickled by Beam and run
on a machine that has none of the GPU libraries.

Shapes use ``L`` for a window's real token count (unpadded) and ``B``/``S`` for a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

# Names of the model's inputs and outputs, shared by the ONNX export, the engine builder,
# the engine session and both RunInference handlers.
INPUT_NAMES: Tuple[str, str, str] = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES: Tuple[str, str] = ("start_logits", "end_logits")


@dataclass(frozen=True)
class QAExample:
    """One question about one context, as read from the input.

    ``answers`` holds gold answer texts when the input has them (SQuAD files); an empty tuple
    with ``is_impossible=True`` marks a SQuAD v2 unanswerable question.
    """

    id: str
    question: str
    context: str
    answers: Tuple[str, ...] = ()
    is_impossible: Optional[bool] = None


@dataclass(frozen=True)
class Window:
    """One model window of a question: [CLS] question [SEP] context-slice [SEP], unpadded.

    Arrays have length ``L`` (the window's real tokens); padding to a batch length happens at
    batching time, so a window never carries padding it may not need.

    Attributes:
        example_id: id of the QAExample this window came from.
        window_index: position of this window among the question's windows (0-based).
        input_ids: int32 [L] token ids.
        token_type_ids: int32 [L] segment ids (0 question, 1 context).
        offsets: int32 [L, 2] character span of each token in the original context; (-1, -1)
            for tokens that are not context (special tokens, question tokens).
        is_context: bool [L] True where a token belongs to the context.
        max_context: bool [L] True where this window gives the token its maximum surrounding
            context among all windows (only such tokens may start an answer).
    """

    example_id: str
    window_index: int
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    is_context: np.ndarray
    max_context: np.ndarray

    @property
    def length(self) -> int:
        """Number of real tokens in the window."""
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class QuestionWindows:
    """One question with all of its windows: the element that goes through ``RunInference``.

    A question travels as one element, so its answer is decided in the same call that computes its
    logits and nothing downstream has to put a question back together (as Hugging Face's QA
    pipeline fed all spans of a question to one model call). ``raw`` is the input record, kept so
    a failed batch can dead-letter each of its questions with what was read.
    """

    example: QAExample
    windows: Tuple[Window, ...]
    raw: str = ""

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError(f"question {self.example.id!r} has no windows")

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    @property
    def tokens(self) -> int:
        """Real tokens over all windows."""
        return sum(w.length for w in self.windows)


@dataclass(frozen=True)
class ModelBatch:
    """Padded int32 model inputs for a batch of windows: each array is [B, S]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    @property
    def shape(self) -> Tuple[int, int]:
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]))

    def as_feed(self) -> Dict[str, np.ndarray]:
        """Inputs by tensor name, the form ONNX Runtime and TensorRT take."""
        return {
                "input_ids": self.input_ids,
                "attention_mask": self.attention_mask,
                "token_type_ids": self.token_type_ids,
        }


@dataclass(frozen=True)
class WindowLogits:
    """Model output for one window, cut back to the window's real length ``L`` (float32)."""

    start_logits: np.ndarray
    end_logits: np.ndarray


@dataclass(frozen=True)
class Answer:
    """The answer to one question.

    ``text`` is an exact slice of the original context (``context[start_char:end_char]``), or ""
    when the model predicts no answer (SQuAD v2). ``score`` is the best span's start+end logit,
    ``null_score`` the no-answer score (minimum over windows of the [CLS] start+end logits);
    ``probability`` is the softmax of the best span over the n-best candidates.
    """

    id: str
    text: str
    score: float
    null_score: float
    probability: float
    start_char: int
    end_char: int
    window_index: int
    best_span_text: str = ""
    n_best: Sequence[Dict[str, Any]] = field(default_factory=tuple)

    @property
    def is_no_answer(self) -> bool:
        return self.text == ""


@dataclass(frozen=True)
class Rejection:
    """A record that could not be answered, with the reason and the raw input (dead-letter)."""

    reason: str
    raw: str
    stage: str = "parse"
    example_id: Optional[str] = None
