"""A whole SQuAD split answered through the inference server and in process: the answers, text for text.

The handlers' path without Beam (so it runs where Beam is not installed): windows in the handlers'
default Beam batches (``batches_of``), ``answer_batch`` over a :class:`PlannedRunner` in this
process, then over an :class:`InferenceClient` of a server that loads the same runner and plan,
with 1 client (the server plans each batch alone: the same calls as in process) and with K clients
at once (threads with a connection each: the server pools their batches, so calls mix them).

    python -m benchmarks.check_server_answers --data squad_B1.json --model CHECKPOINT --device cuda --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import emit  # noqa: E402


@dataclass(frozen=True)
class TorchLoader:
    """The server's (and this process's) model: a TorchRunner with the default plan, warmed up."""

    model_dir: str
    device: str
    dtype: str

    def __call__(self) -> Any:
        from trt_handler.answer_batch import PlannedRunner
        from trt_handler.backends.torch_runner import TorchRunner
        from trt_handler.planning import BatchPlan

        plan = BatchPlan.for_buckets()
        runner = TorchRunner(self.model_dir, device=self.device, dtype=self.dtype)
        runner.warm_up([(p.max_batch, p.max_seq) for p in plan.profiles])
        return PlannedRunner(runner, plan)


def _texts(answers: Sequence[Any]) -> List[Optional[str]]:
    return [a.text if hasattr(a, "text") else None for a in answers]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from benchmarks.bench_gpu import squad_examples
    from trt_handler.answer_batch import answer_batch, batches_of
    from trt_handler.qa.types import QuestionWindows
    from trt_handler.qa.windows import WindowMaker, load_tokenizer
    from trt_handler.serving import ServerOptions
    from trt_handler.serving.client import InferenceClient

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True, help="a Hugging Face QA checkpoint folder")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--clients", default="1,8", help="client counts to try, comma-separated")
    p.add_argument("--limit", type=int, default=0, help="the first N questions only (0: all)")
    p.add_argument("--out", default=None, help="append the JSON lines here")
    args = p.parse_args(argv)

    examples = squad_examples(Path(args.data))[:args.limit or None]
    maker = WindowMaker(load_tokenizer(args.model))
    questions = [QuestionWindows(ex, tuple(ws)) for ex, ws in zip(examples, maker.windows_many(examples))
                 if not isinstance(ws, Exception)]
    batches = batches_of(questions)
    from benchmarks.check_server_answers import TorchLoader as Loader  # by module name: the server unpickles it

    loader = Loader(args.model, args.device, args.dtype)
    local = loader()
    t0 = time.perf_counter()
    reference = _texts([a for b in batches for a in answer_batch(b, local)])
    in_process_s = time.perf_counter() - t0
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qa-check-") as folder:
        for clients in (int(c) for c in args.clients.split(",")):
            options = ServerOptions(directory=f"{folder}/c{clients}", linger_s=1.0)  # a fresh server each
            got: List[Optional[List[Optional[str]]]] = [None] * len(batches)
            client = InferenceClient(loader, options)  # started here (model load) before the clock

            def work(k: int, clients: int = clients, got: List[Any] = got, client: Any = client) -> None:
                for i in range(k, len(batches), clients):
                    got[i] = _texts(answer_batch(batches[i], client))

            t0 = time.perf_counter()
            threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            server_s = time.perf_counter() - t0
            texts = [t for part in got for t in (part or [])]
            stats = client.stats()
            client.close()
            differ = [(q.example.id, a, b) for q, a, b in zip(questions, reference, texts) if a != b]
            rows.append(emit("server_answers_identical", len(questions) - len(differ), "questions",
                             device=_device_name(args.device), data=Path(args.data).name, model=args.model,
                             dtype=args.dtype, questions=len(questions), clients=clients, differ=len(differ),
                             first_differences=differ[:10], in_process_s=in_process_s, server_s=server_s,
                             server_pools=stats.get("pools"), server_max_pool_clients=stats.get("max_pool_clients"),
                             server_padded_per_real=stats["padded_tokens"] / max(stats["real_tokens"], 1)))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return str(torch.cuda.get_device_name(torch.device(device)))


if __name__ == "__main__":
    sys.exit(main())
