"""The streaming pipeline as a user runs it: the README's command, as its own process, against Google's
real Pub/Sub emulator (the Debian package google-cloud-cli-pubsub-emulator, Java). One emulator and
one pipeline process serve the module; a second process checks a restart and a model swap.

Checked: the documented command comes up and answers like the in-process path; good and malformed
messages each get exactly one outcome (answer or dead letter with the right reason); a large
malformed message gives a dead letter under 1 MB that names the message by length and sha256;
answers at a trickle come within seconds; SIGTERM stops the process with a summary line, messages
published while it is down are answered after a restart; --watch-model picks up a model dropped
while the pipeline runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from tests.conftest import REPO
from tools.pubsub_local import INSTALL, Publisher, PubSubEmulator, Puller, find_emulator, setup

pytestmark = pytest.mark.skipif(find_emulator() is None, reason=f"needs the Pub/Sub emulator: {INSTALL}")

CTX = "The Amazon rainforest covers most of the Amazon basin of South America. It is in Brazil and Peru."
BUNDLE = REPO / "models" / "minilm-l6-squad2"
PROJECT = "local-qa"
ONE_MB = 1 << 20


def _question(qid: str, question: str = "Which countries is it in?", context: str = CTX) -> bytes:
    return json.dumps({"id": qid, "question": question, "context": context}).encode()


def _raw_sha(body: bytes) -> str:
    """sha256 of a message's raw text as a dead letter describes it (invalid UTF-8 as backslash escapes)."""
    return hashlib.sha256(body.decode("utf-8", errors="backslashreplace").encode("utf-8")).hexdigest()


class Outputs:
    """Every answer and dead letter the pipeline publishes, pulled in the background: (seconds, row)."""

    def __init__(self) -> None:
        self.answers: List[Tuple[float, Dict[str, Any]]] = []
        self.rejected: List[Tuple[float, Dict[str, Any]]] = []
        self.sizes: List[int] = []  # bytes of each dead letter
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._pull, args=(name, rows), daemon=True)
                         for name, rows in (("answers", self.answers), ("rejected", self.rejected))]
        for t in self._threads:
            t.start()

    def _pull(self, subscription: str, rows: List[Tuple[float, Dict[str, Any]]]) -> None:
        puller = Puller(subscription, PROJECT)
        while not self._stop.is_set():
            for body in puller.pull(timeout=1.0):
                if subscription == "rejected":
                    self.sizes.append(len(body))
                rows.append((time.monotonic(), json.loads(body)))
        puller.close()

    def wait_for(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s; answers {len(self.answers)}, "
                                     f"dead letters {len(self.rejected)}")
            time.sleep(0.1)

    def answers_for(self, ids: set) -> List[Dict[str, Any]]:
        return [row for _, row in self.answers if row["id"] in ids]

    def rejected_for(self, shas: set) -> List[Dict[str, Any]]:
        return [row for _, row in self.rejected if row["raw_sha256"] in shas]

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


def _command(*extra: str) -> List[str]:
    """The README's local command (with a silent progress line)."""
    return [sys.executable, "-m", "pipelines.qa_streaming",
            "--subscription", f"projects/{PROJECT}/subscriptions/questions",
            "--topic", f"projects/{PROJECT}/topics/answers", "--rejected-topic", f"projects/{PROJECT}/topics/rejected",
            "--progress-every", "0", *extra]


class Pipeline:
    """One qa_streaming process; its stdout and stderr go to files."""

    def __init__(self, workdir: Path, name: str, *extra: str) -> None:
        self.out, self.err = workdir / f"{name}.out", workdir / f"{name}.err"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(_command(*extra), cwd=REPO, env=env, stdout=out, stderr=err)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> Tuple[int, str]:
        """Send ``sig``; (exit status, stdout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return code, self.out.read_text(encoding="utf-8")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")[-3000:]


def _wait_answered(outputs: Outputs, pipeline: Pipeline, qid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not outputs.answers_for({qid}):
        assert pipeline.alive(), f"the pipeline exited: {pipeline.log()}"
        assert time.monotonic() < deadline, f"no answer to {qid} within {timeout} s: {pipeline.log()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    log = tmp_path_factory.mktemp("pubsub") / "emulator.log"
    with PubSubEmulator(log=log) as emu:
        setup(PROJECT)
        yield emu


@pytest.fixture(scope="module")
def outputs(emulator: PubSubEmulator) -> Iterator[Outputs]:
    out = Outputs()
    yield out
    out.close()


@pytest.fixture(scope="module")
def questions(emulator: PubSubEmulator) -> Publisher:
    return Publisher("questions", PROJECT)


@pytest.fixture(scope="module")
def pipeline(emulator: PubSubEmulator, outputs: Outputs, questions: Publisher,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The README's command, up: its first answer has come (model loaded)."""
    proc = Pipeline(tmp_path_factory.mktemp("run"), "first", "--model", str(BUNDLE))
    questions.publish(_question("warmup"))
    try:
        _wait_answered(outputs, proc, "warmup", timeout=120)
        yield proc
    finally:
        if proc.alive():
            proc.stop()


def test_a_missing_topic_is_refused_before_any_message_is_pulled(emulator: PubSubEmulator, tmp_path: Path) -> None:
    """A local run acks what it pulls: a job that would fail on its first publish must not start."""
    proc = Pipeline(tmp_path, "typo", "--model", str(BUNDLE), "--topic", f"projects/{PROJECT}/topics/answerz")
    code = proc.proc.wait(120)
    assert code == 2
    assert proc.log().splitlines()[-1] == (f"python -m pipelines.qa_streaming: error: the topic projects/{PROJECT}/"
                                           f"topics/answerz does not exist on the Pub/Sub emulator at {emulator.host}; "
                                           "create it first")


def test_the_documented_command_answers_like_the_in_process_path(pipeline: Pipeline, outputs: Outputs,
                                                                test_cache: Path) -> None:
    from trt_handler.evaluate import answer_examples
    from trt_handler.qa.types import QAExample

    reference = answer_examples([QAExample("warmup", "Which countries is it in?", CTX)], str(BUNDLE), test_cache)
    (row,) = outputs.answers_for({"warmup"})
    assert row["answer"] == reference["warmup"].text
    assert row["model_id"] and row["backend"] == "onnx"


def test_good_and_malformed_messages_each_get_exactly_one_outcome(
        pipeline: Pipeline, outputs: Outputs, questions: Publisher) -> None:
    good = [_question(f"good-{i}", q) for i, q in enumerate(
        ["Which countries is it in?", "What does the rainforest cover?", "Which continent?"] * 5)]
    reused = [_question("reused", "Which continent?"), _question("reused", "Which countries?")]
    bad = {  # body -> the dead letter's reason code
        b"   ": "empty_record", b"not json": "invalid_json", b'{"id": "x", "question": ': "invalid_json",
        b"[1, 2]": "not_an_object", b'{"id": "m1", "question": "Why?"}': "missing_field",
        b'{"id": "w1", "question": 7, "context": "c"}': "wrong_type", b'{"id": "e1", "question": " ", "context": "c"}':
        "empty_field", b'\xff\xfe{"id": "enc"}': "invalid_encoding",
        _question("long-q", "why " * 2000): "too_long",
    }
    bodies = good + reused + list(bad)
    questions.publish_many(bodies)
    good_ids = {f"good-{i}" for i in range(len(good))} | {"reused"}
    shas = {_raw_sha(body): code for body, code in bad.items()}
    outputs.wait_for(lambda: len(outputs.answers_for(good_ids)) >= len(good) + 2
                     and len(outputs.rejected_for(set(shas))) >= len(bad))
    time.sleep(3)  # anything extra (a second outcome) would come now
    answered = sorted(row["id"] for row in outputs.answers_for(good_ids))
    assert answered == sorted([f"good-{i}" for i in range(len(good))] + ["reused", "reused"])
    letters = outputs.rejected_for(set(shas))
    assert sorted(row["reason_code"] for row in letters) == sorted(bad.values())
    assert all(row["reason_code"] == shas[row["raw_sha256"]] for row in letters)
    assert pipeline.alive()


def test_a_large_malformed_message_becomes_a_dead_letter_under_1_mb(
        pipeline: Pipeline, outputs: Outputs, questions: Publisher) -> None:
    """2.3 MB of non-UTF-8 bytes (under the record limit; kept whole it was an 11.5 MB dead letter that
    Pub/Sub refused) and a 3 MB question whose context is over its limit."""
    not_utf8 = b'{"id": "big", "question": "q", "context": "' + bytes(range(128, 256)) * 17_000 + b'"}'
    huge = _question("huge", "Where?", "Amazon " * 450_000)
    assert 2_000_000 < len(not_utf8) < 2_300_000 and len(huge) > 3_000_000
    # a record over the record limit is not read whole: its dead letter hashes the 10,000 characters it keeps
    shas = {_raw_sha(not_utf8): ("invalid_encoding", not_utf8), _raw_sha(huge[:10_000]): ("too_long", huge)}
    questions.publish_many([not_utf8, huge])
    outputs.wait_for(lambda: len(outputs.rejected_for(set(shas))) == 2)
    for row in outputs.rejected_for(set(shas)):
        code, body = shas[row["raw_sha256"]]
        assert row["reason_code"] == code
        assert row["raw_truncated"] is True and len(row["raw"]) < row["raw_chars"]
        assert row["raw_chars"] == len(body.decode("utf-8", errors="backslashreplace")) or code == "too_long"
        assert body.decode("utf-8", errors="backslashreplace").startswith(row["raw"])
    assert max(outputs.sizes) < ONE_MB, "a dead letter over 1 MB"
    assert pipeline.alive()


def test_answers_at_a_trickle_come_within_seconds(pipeline: Pipeline, outputs: Outputs, questions: Publisher) -> None:
    """One question a second: each answered promptly, not when the next message arrives. (The
    benchmark, benchmarks/bench_streaming.py, gives the figures: about a second locally.)"""
    sent: Dict[str, float] = {}
    for i in range(5):
        qid = f"trickle-{i}"
        sent[qid] = time.monotonic()
        questions.publish(_question(qid))
        time.sleep(1.0)
    outputs.wait_for(lambda: len(outputs.answers_for(set(sent))) == len(sent), timeout=60)
    latency = {row["id"]: t - sent[row["id"]] for t, row in outputs.answers if row["id"] in sent}
    print(f"trickle latency: median {statistics.median(latency.values()):.2f} s, max {max(latency.values()):.2f} s")
    assert max(latency.values()) < 10.0, latency


BURST = [f"burst-{i}" for i in range(40)]


@pytest.fixture(scope="module")
def stopped(pipeline: Pipeline, outputs: Outputs, questions: Publisher) -> Tuple[int, str, str]:
    """The first process stopped by SIGTERM in the middle of a burst: (status, stdout, stderr)."""
    questions.publish_many([_question(qid, "Which countries?") for qid in BURST])
    outputs.wait_for(lambda: bool(outputs.answers_for(set(BURST))))
    code, stdout = pipeline.stop(signal.SIGTERM)
    return code, stdout, pipeline.log()


def _lost(stderr: str) -> int:
    """N of the warning 'N messages read but not answered ... are lost', else 0."""
    found = re.search(r"warning: (\d+) messages read but not answered", stderr)
    return int(found.group(1)) if found else 0


def test_sigterm_mid_burst_stops_with_a_summary_line_that_adds_up(stopped: Tuple[int, str, str],
                                                                  outputs: Outputs) -> None:
    """The summary counts what was published: every answer and dead letter it counts reached its topic,
    and every message read is answered, dead-lettered or reported lost."""
    code, stdout, stderr = stopped
    assert code == 0, stderr
    (line,) = [x for x in stdout.splitlines() if x.startswith("stopped by SIGTERM: summary: read ")]
    read, answered, rejected = (int(n) for n in re.findall(r"(?:read|answered|rejected) (\d+)", line)[:3])
    assert 0 <= read - answered - rejected <= _lost(stderr)  # lost: also those pulled but not yet read
    time.sleep(3)  # the last outcomes reach our subscriptions
    assert (answered, rejected) == (len(outputs.answers), len(outputs.rejected))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of model bundles for --watch-model: v1 now (a copy of the bundled model)."""
    from tests.helpers import link_bundle

    root = tmp_path_factory.mktemp("models")
    link_bundle(BUNDLE, root / "v1")
    return root


@pytest.fixture(scope="module")
def restarted(stopped: Tuple[int, str, str], outputs: Outputs, questions: Publisher, models: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Pipeline, List[str]]]:
    """Messages published while no pipeline runs, then a second process (watching ``models``)."""
    ids = [f"meanwhile-{i}" for i in range(4)]
    questions.publish_many([_question(qid) for qid in ids])
    proc = Pipeline(tmp_path_factory.mktemp("run"), "second", "--model", str(models / "v1"),
                    "--watch-model", str(models / "*" / "model.onnx"), "--watch-interval-secs", "1")
    try:
        yield proc, ids
    finally:
        if proc.alive():
            proc.stop()


def test_messages_published_while_stopped_are_answered_after_a_restart(
        restarted: Tuple[Pipeline, List[str]], outputs: Outputs) -> None:
    proc, ids = restarted
    for qid in ids:
        _wait_answered(outputs, proc, qid, timeout=120)
    assert sorted(row["id"] for row in outputs.answers_for(set(ids))) == sorted(ids)


def test_every_burst_message_is_answered_once_across_the_stop_or_reported_lost(
        stopped: Tuple[int, str, str], restarted: Tuple[Pipeline, List[str]], outputs: Outputs) -> None:
    """Those the first process did not read wait in the subscription for the second one."""
    proc, _ = restarted
    lost = _lost(stopped[2])
    outputs.wait_for(lambda: len({r["id"] for r in outputs.answers_for(set(BURST))}) >= len(BURST) - lost,
                     timeout=120)
    time.sleep(2)
    answered = [row["id"] for row in outputs.answers_for(set(BURST))]
    assert len(answered) == len(set(answered)) == len(BURST) - lost


def test_watch_model_swaps_in_a_model_dropped_while_the_pipeline_runs(
        restarted: Tuple[Pipeline, List[str]], outputs: Outputs, questions: Publisher, models: Path) -> None:
    from tests.helpers import link_bundle

    proc, ids = restarted
    for qid in ids:  # up, with v1
        _wait_answered(outputs, proc, qid, timeout=120)
    assert {row["model_id"] for row in outputs.answers_for(set(ids))} == {str(models / "v1")}
    staging = models.parent / "v2-staging"  # a new bundle whose saved threshold answers "" to everything
    link_bundle(BUNDLE, staging)
    meta = json.loads((staging / "export.json").read_text(encoding="utf-8"))
    meta["null_threshold"] = {"value": -1000.0}
    (staging / "export.json").write_text(json.dumps(meta), encoding="utf-8")
    (staging / "model.onnx").unlink()  # a real file: the watch goes by modification time, a link has the original's
    (staging / "model.onnx").write_bytes((BUNDLE / "model.onnx").read_bytes())
    staging.rename(models / "v2")
    time.sleep(1.5)  # the watch looks at most once a second
    questions.publish(_question("after-swap"))
    _wait_answered(outputs, proc, "after-swap", timeout=60)
    (row,) = outputs.answers_for({"after-swap"})
    assert row["model_id"] == str(models / "v2" / "model.onnx")
    assert row["answer"] == "" and row["threshold_source"] == "model" and row["null_threshold"] == -1000.0
    code, stdout = proc.stop(signal.SIGINT)
    assert code == 0 and "stopped by SIGINT: summary:" in stdout
