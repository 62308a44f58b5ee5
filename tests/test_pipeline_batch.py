"""The batch pipeline end to end (DirectRunner, ONNX Runtime, the shared MiniLM model): answers
equal the in-process path, `make run` / `make eval`, gs:// through the GCS emulator, BigQuery sink
construction, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import qa_batch
from pipelines.options import QASettings
from pipelines.records import ANSWER_BQ_SCHEMA, REJECTED_BQ_SCHEMA
from pipelines.transforms import AnswerQuestions, ReadRecords, input_format
from tests.conftest import REPO
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (pytest fixture)

SAMPLE = REPO / "samples" / "squad_sample.jsonl"
METRIC_KEYS = ("exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
               "NoAns_total")


@pytest.fixture(scope="module")
def bundle(model_dir: Path, test_cache: Path) -> str:
    from trt_handler.engines.export import resolve_model_bundle

    return str(resolve_model_bundle(model_dir, test_cache))


def _rows(pattern_dir: Path, glob: str) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for f in sorted(pattern_dir.glob(glob)):
        out += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line]
    return out


def test_question_coders_round_trip_and_measure_without_pickling(bundle: str, monkeypatch: Any) -> None:
    """QAExample / QuestionWindows elements (what the pipeline's typed steps carry, what users
    beam.Create) round-trip through Beam with our coders, and Beam's size estimate of them, taken
    for every item of a sampled batch, pickles nothing and is close to the encoded size."""
    import numpy as np

    from pipelines import transforms
    from trt_handler.qa.reading import read_jsonl
    from trt_handler.qa.types import QAExample, QuestionWindows
    from trt_handler.qa.windows import WindowMaker, load_tokenizer

    examples = read_jsonl(str(SAMPLE))[:6]
    questions = [QuestionWindows(ex, tuple(ws), "raw")
                 for ex, ws in zip(examples, WindowMaker(load_tokenizer(bundle)).windows_many(examples))]
    registry = beam.coders.registry
    for value, hint in ((examples[0], QAExample), (questions[0], QuestionWindows)):
        coder = registry.get_coder(hint)
        assert isinstance(coder, (transforms.QAExampleCoder, transforms.QuestionWindowsCoder))
        back = coder.decode(coder.encode(value))
        assert back.example == value.example if hint is QuestionWindows else back == value
        size = len(coder.encode(value))
        with monkeypatch.context() as m:
            m.setattr(transforms.pickle, "dumps", lambda *a, **k: pytest.fail("the size estimate pickled"))
            estimate = coder.get_impl().estimate_size(value)
        assert size / 2 <= estimate <= size * 2, (estimate, size)
    with test_pipeline.TestPipeline(argv=[]) as p:
        got = (p | beam.Create(questions) | beam.BatchElements(min_batch_size=3, max_batch_size=3)
               | beam.FlatMap(lambda batch: [(q.example.id, int(np.sum(q.windows[0].input_ids))) for q in batch]))
        assert_that(got, equal_to([(q.example.id, int(np.sum(q.windows[0].input_ids))) for q in questions]))


def test_sample_answers_equal_the_in_process_path(bundle: str, test_cache: Path) -> None:
    """assert_that on the pipeline's answers: the same text and offsets as trt_handler.evaluate's
    in-process features -> ONNX Runtime -> answers, and every text is its context slice."""
    from trt_handler.evaluate import answer_examples
    from trt_handler.qa.reading import read_jsonl

    examples = read_jsonl(str(SAMPLE))
    expected = [(a.id, a.text, a.start_char, a.end_char, a.window_index)
                for a in answer_examples(examples, bundle, test_cache).values()]
    contexts = {ex.id: ex.context for ex in examples}
    with test_pipeline.TestPipeline(argv=[]) as p:
        out = p | ReadRecords(str(SAMPLE)) | AnswerQuestions(QASettings(model_dir=bundle))
        got = out.answers | beam.Map(lambda pair: (pair[1].id, pair[1].text, pair[1].start_char,
                                                   pair[1].end_char, pair[1].window_index))
        assert_that(got, equal_to(expected), label="answers")
        slices_ok = out.answers | "Slices" >> beam.Map(
            lambda pair: pair[1].text == ("" if pair[1].start_char < 0
                                          else contexts[pair[1].id][pair[1].start_char:pair[1].end_char]))
        assert_that(slices_ok, equal_to([True] * len(examples)), label="slices")
        assert_that(out.rejected, equal_to([]), label="rejected")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def test_make_run_prints_answers_and_summary(model_dir: Path, test_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "answers"
    proc = _make("run", f"OUTPUT={out}", f"MODEL={model_dir}", f"CACHE={test_cache}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert sum(1 for line in lines if line.strip().startswith("-> ")) == 5
    assert lines[-1].startswith("summary: read 20 records from 1 file, answered 20, rejected 0;") and "questions/s" in lines[-1]
    assert lines[-2].startswith("no-answer threshold ")  # which threshold applied, and why
    answers = _rows(tmp_path, "answers-0*-of-*.jsonl")
    assert len(answers) == 20 and set(answers[0]) == {f["name"] for f in ANSWER_BQ_SCHEMA["fields"]}
    assert list(tmp_path.glob("answers-rejected-*.jsonl")) and not _rows(tmp_path, "answers-rejected-*.jsonl")


def _squad_subset(squad_b1: Path, articles: int, path: Path) -> Path:
    doc = json.loads(squad_b1.read_text(encoding="utf-8"))
    doc["data"] = doc["data"][:articles]
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_make_eval_equals_in_process_evaluation(model_dir: Path, squad_b1: Path, test_cache: Path,
                                               tmp_path: Path) -> None:
    """`make eval` through Beam prints the same SQuAD metric as trt_handler.evaluate (B1's first article, 284 questions)."""
    from trt_handler.evaluate import evaluate

    data = _squad_subset(squad_b1, 1, tmp_path / "b1_first_article.json")
    out = tmp_path / "answers"
    proc = _make("eval", f"DATA={data}", f"OUTPUT={out}", f"MODEL={model_dir}", f"CACHE={test_cache}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    written = json.loads((tmp_path / "answers-eval-metric.json").read_text())
    assert printed == written
    reference = evaluate(str(data), str(model_dir), test_cache)
    assert reference["total"] == 284
    for key in METRIC_KEYS:
        assert printed[key] == pytest.approx(reference[key], abs=1e-9), key


def test_gs_input_model_and_output(bundle: str, gcs_emulator: Any, tmp_path: Path) -> None:  # noqa: F811
    """JSONL input, the model bundle and all outputs on gs:// (the local GCS emulator)."""
    from apache_beam.io.filesystems import FileSystems

    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:4] + ['{"id": "broken"']
    local = tmp_path / "in.jsonl"
    local.write_text("\n".join(lines) + "\n", encoding="utf-8")
    src = gcs_emulator.upload(local, "data/in.jsonl")
    model = gcs_emulator.upload(bundle, "models/minilm")
    out = gcs_emulator.url("out/answers")
    outcome = qa_batch.run(["--input", src, "--output", out, "--model", model, "--show", "2"])

    def read(pattern: str) -> List[Dict[str, Any]]:
        rows: List[Dict[str, Any]] = []
        for m in FileSystems.match([pattern])[0].metadata_list:
            with FileSystems.open(m.path) as f:
                rows += [json.loads(x) for x in f.read().decode().splitlines() if x]
        return rows

    answers = read(out + "-0*-of-*.jsonl")
    rejected = read(out + "-rejected-*.jsonl")
    assert sorted(a["id"] for a in answers) == sorted(json.loads(x)["id"] for x in lines[:4])
    assert [(r["reason_code"], r["raw"]) for r in rejected] == [("invalid_json", '{"id": "broken"')]
    assert len(outcome["shown"]) == 2 and outcome["counters"]["records_read"] == 5


def test_squad_json_input_with_a_broken_entry(bundle: str, squad_b1: Path, tmp_path: Path) -> None:
    """A SQuAD document is split into questions; a question with a bad field is dead-lettered alone."""
    doc = json.loads(squad_b1.read_text(encoding="utf-8"))
    paragraph = doc["data"][0]["paragraphs"][0]
    paragraph["qas"] = paragraph["qas"][:3]
    paragraph["qas"][1]["question"] = ["not", "a", "string"]
    doc["data"] = [{"title": "t", "paragraphs": [paragraph]}]
    data = tmp_path / "small.json"
    data.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "answers"
    outcome = qa_batch.run(["--input", str(data), "--output", str(out), "--model", bundle, "--eval"])
    ids = [qa["id"] for qa in paragraph["qas"]]
    assert sorted(a["id"] for a in _rows(tmp_path, "answers-0*-of-*.jsonl")) == sorted([ids[0], ids[2]])
    rejected = _rows(tmp_path, "answers-rejected-*.jsonl")
    assert [(r["id"], r["reason_code"]) for r in rejected] == [(ids[1], "wrong_type")]
    assert json.loads(rejected[0]["raw"])["context"] == paragraph["context"]  # self-contained dead letter
    assert outcome["metric"]["total"] == 2


def test_bigquery_sinks_are_built_with_their_schemas(bundle: str) -> None:
    """Not run (no BigQuery here): the graph holds WriteToBigQuery with our schemas and tables."""
    args, _ = qa_batch.split_argv(qa_batch.build_parser(), [
        "--input", str(SAMPLE), "--output", "gs://b/out/answers", "--model", bundle,
        "--bigquery-table", "proj:ds.answers", "--bigquery-rejected-table", "proj:ds.rejected"])
    p = beam.Pipeline(argv=[])
    qa_batch.build_pipeline(p, args, QASettings(model_dir=bundle))
    writes: List[Any] = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node: Any) -> None:
            if isinstance(node.transform, beam.io.WriteToBigQuery):
                writes.append(node.transform)

    p.visit(Visitor())
    by_table = {f"{w.table_reference.projectId}:{w.table_reference.datasetId}.{w.table_reference.tableId}": w
                for w in writes}
    assert set(by_table) == {"proj:ds.answers", "proj:ds.rejected"}
    assert by_table["proj:ds.answers"].schema == ANSWER_BQ_SCHEMA
    assert by_table["proj:ds.rejected"].schema == REJECTED_BQ_SCHEMA


def test_help_lists_every_setting() -> None:
    proc = subprocess.run([sys.executable, "-m", "pipelines.qa_batch", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--input", "--output", "--model", "--backend", "--engine", "--cache-dir", "--show", "--eval",
                 "--bigquery-table", "--max-seq-length", "--doc-stride", "--max-query-length", "--n-best",
                 "--max-answer-length", "--null-threshold", "--v1", "--buckets", "--max-batch", "--batch-windows",
                 "--max-tokens", "--pad-to", "--inference-timeout-secs", "--torch-device", "--torch-dtype",
                 "--gpu-count", "--inference-server", "--server-pool-windows", "--server-max-wait-ms",
                 "--server-queue-depth", "--server-linger-secs", "--allow-duplicate-ids",
                 "--max-context-chars"):
        assert flag in proc.stdout, flag


@pytest.mark.parametrize("argv, message", [
    (["--max-seq-lenght", "256"], "unknown option --max-seq-lenght"),
    (["--backend", "tensorrt"], "needs --engine"),
    (["--max-seq-length", "512", "--buckets", "128,256"], "largest bucket"),
    (["--doc-stride", "400"], "doc_stride (400) must be smaller"),
    (["--show", "-1"], "--show must be 0 or more"),
])
def test_misspelt_flag_and_bad_settings_are_errors(bundle: str, argv: List[str], message: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        qa_batch.run(["--input", "x.jsonl", "--output", "o", "--model", bundle, *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_input_format_by_flag_or_extension() -> None:
    assert input_format("gs://b/dev-v2.0.json") == "squad"
    assert input_format("data/dev.json.gz") == "squad"
    assert input_format("data/q.jsonl") == "jsonl"
    assert input_format("data/q.json", "jsonl") == "jsonl"
    with pytest.raises(ValueError, match="auto, jsonl or squad"):
        input_format("x", "csv")
