"""Plain, picklable data passed between the QA stages (parse -> windows -> inference -> answers).
Shapes: ``L`` a window's real tokens (unpadded), ``B``/``S`` a padded batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

# The model's input and output tensor names (ONNX export, engine builder and session, handlers).
INPUT_NAMES: Tuple[str, str, str] = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES: Tuple[str, str] = ("start_logits", "end_logits")


@dataclass(frozen=True)
class QAExample:
    """One question about one context; ``answers``: gold texts when the input has them (empty with
    ``is_impossible=True``: a SQuAD v2 unanswerable question)."""

    id: str
    question: str
    context: str
    answers: Tuple[str, ...] = ()
    is_impossible: Optional[bool] = None


@dataclass(frozen=True)
class Window:
    """One model window of a question: [CLS] question [SEP] context-slice [SEP], unpadded.

    int32 [L] ``input_ids``, ``token_type_ids``; int32 [L, 2] ``offsets`` in the original context,
    (-1, -1) for non-context tokens; bool [L] ``is_context``, ``max_context`` (the window giving the
    token its most context: only such tokens may start an answer)."""

    example_id: str
    window_index: int
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    is_context: np.ndarray
    max_context: np.ndarray

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class QuestionWindows:
    """One question with all of its windows: the element that goes through ``RunInference``, so it
    is answered in the call that computes its logits. ``raw``: the input record, for dead letters.
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
        return {name: getattr(self, name) for name in INPUT_NAMES}


@dataclass(frozen=True)
class WindowLogits:
    """Model output for one window, cut back to the window's real length ``L`` (float32)."""

    start_logits: np.ndarray
    end_logits: np.ndarray


@dataclass(frozen=True)
class Answer:
    """The answer to one question.

    ``text``: ``context[start_char:end_char]``, or "" for no answer (SQuAD v2). ``score``: the best
    span's start+end logit; ``null_score``: the minimum over windows of the [CLS] start+end logits;
    ``probability``: the answer's softmax over the n-best candidates.
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
    """A record that could not be answered, with the reason and the raw input (dead-letter).
    ``raw`` may be a prefix of the record: ``raw_chars`` and ``raw_sha256`` then describe the whole
    raw text (its length in characters, the sha256 hex of its UTF-8 bytes); None when not recorded."""

    reason: str
    raw: str
    stage: str = "parse"
    example_id: Optional[str] = None
    raw_chars: Optional[int] = None
    raw_sha256: Optional[str] = None
