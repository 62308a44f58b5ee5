"""No run loses outputs (issue 19): a run replaces the earlier outputs of its prefix only once it has
finished, a killed run (SIGTERM) leaves them whole and the next run cleans up after it, one live run
per prefix (locally and on gs://), and paths are taken as written. Real runs of the batch pipeline
(DirectRunner, the bundled model), real subprocesses, real files, the GCS emulator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipelines import qa_batch
from pipelines.outputs import OutputRun
from tests.conftest import REPO
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (pytest fixture)

SAMPLE = REPO / "samples" / "squad_sample.jsonl"
EARLIER = {  # an earlier run's outputs: two answer shards (the new run writes one), dead letters, a metric
    "-00000-of-00002.jsonl": '{"id": "earlier-0"}\n',
    "-00001-of-00002.jsonl": '{"id": "earlier-1"}\n',
    "-rejected-00000-of-00001.jsonl": '{"reason_code": "earlier"}\n',
    "-metric.json": '{"f1": 1.0}\n',
}


def _main(capsys: pytest.CaptureFixture, *argv: str) -> tuple:
    try:
        code = qa_batch.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _write_earlier(prefix: Path) -> Dict[Path, str]:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    files = {Path(f"{prefix}{tail}"): text for tail, text in EARLIER.items()}
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return files


def _answer_ids(prefix: Path) -> List[str]:
    ids: List[str] = []
    for f in sorted(prefix.parent.iterdir()):
        if f.name.startswith(prefix.name + "-0") and f.name.endswith(".jsonl"):
            ids += [json.loads(line)["id"] for line in f.read_text(encoding="utf-8").splitlines() if line]
    return ids


def _cli(*argv: str) -> List[str]:
    return [sys.executable, "-m", "pipelines.qa_batch", *argv]


def _env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _squad_as_jsonl(squad: Path, path: Path, limit: int) -> Path:
    doc = json.loads(squad.read_text(encoding="utf-8"))
    rows = [{"id": qa["id"], "question": qa["question"], "context": p["context"]}
            for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]][:limit]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_killed_run_keeps_earlier_outputs_a_concurrent_run_is_refused_the_next_run_cleans_up(
        bundled_model: Path, squad_b1: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Run A (a subprocess) is killed with SIGTERM mid-run: the earlier outputs are byte for byte as they
    were. While A runs, run B on the same prefix is refused in one line. The next run replaces the
    outputs (the stale second shard too), deletes A's staging folder and leaves no lock."""
    out = tmp_path / "out" / "answers"
    earlier = _write_earlier(out)
    neighbour = tmp_path / "out" / "answers2-00000-of-00001.jsonl"  # another prefix in the same folder
    neighbour.write_text('{"id": "neighbour"}\n')
    data = _squad_as_jsonl(squad_b1, tmp_path / "many.jsonl", 400)
    run_a = subprocess.Popen(_cli("--input", str(data), "--output", str(out), "--model", str(bundled_model),
                                  "--progress-every", "0"), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not any(p.name.startswith("beam-temp") for s in out.parent.glob(".qa-staging-*") for p in s.iterdir()):
            assert run_a.poll() is None, run_a.communicate()[1][-2000:]
            assert time.time() < deadline, "run A never started writing"
            time.sleep(0.1)
        run_b = subprocess.run(_cli("--input", str(SAMPLE), "--output", str(out), "--model", str(bundled_model)),
                               cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert run_a.poll() is None, "run A finished before it could be killed; give it more questions"
        run_a.send_signal(signal.SIGTERM)
        run_a.wait(timeout=60)
    finally:
        if run_a.poll() is None:
            run_a.kill()
            run_a.wait()
    assert run_b.returncode == 2, run_b.stderr[-2000:]
    [line] = run_b.stderr.strip().splitlines()
    assert "another run" in line and f"pid {run_a.pid}" in line and str(out) in line
    assert run_a.returncode == -signal.SIGTERM
    for path, text in earlier.items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} was changed by a run that did not finish"
    assert list(out.parent.glob(".qa-staging-*")), "the killed run left no staging folder (nothing to clean)"

    code, stdout, _ = _main(capsys, "--input", str(SAMPLE), "--output", str(out), "--model", str(bundled_model))
    assert code == 0 and "summary: read 20 records from 1 file, answered 20" in stdout
    ids = [json.loads(line)["id"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert sorted(_answer_ids(out)) == sorted(ids)
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["answers-00000-of-00001.jsonl", "answers-rejected-00000-of-00001.jsonl", neighbour.name], names
    assert neighbour.read_text() == '{"id": "neighbour"}\n'


def test_a_run_killed_while_committing_is_finished_by_the_next(tmp_path: Path) -> None:
    """A staging folder holding COMMIT.json belongs to a run killed between moving its files into place:
    the next run on the prefix finishes that commit (its files in place, the earlier ones it replaced gone)."""
    out = tmp_path / "answers"
    _write_earlier(out)
    killed = OutputRun(str(out), qa_batch.OUTPUT_TAILS, run="killedrun")
    staging = Path(killed.staging)
    staging.mkdir()
    (staging / "out-00000-of-00001.jsonl").write_text('{"id": "new"}\n')
    (staging / "COMMIT.json").write_text(json.dumps({"prefix": str(out), "files": [
        "answers-00000-of-00001.jsonl", "answers-rejected-00000-of-00001.jsonl"]}))
    Path(f"{out}-rejected-00000-of-00001.jsonl").write_text("")  # moved before the kill
    with OutputRun(str(out), qa_batch.OUTPUT_TAILS):
        names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        assert names == ["answers-00000-of-00001.jsonl", "answers-rejected-00000-of-00001.jsonl", "answers.lock"]
        assert not staging.exists()
    assert _answer_ids(out) == ["new"] and not Path(f"{out}.lock").exists()


def test_prefix_and_input_names_with_glob_characters_and_spaces(bundled_model: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """A literal input named with [, *, ? and spaces is read as that file (not the file its glob would
    match); an output prefix with them replaces only its own earlier outputs, not those of the prefixes
    its glob would match."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    folder = tmp_path / "in [a]*?"
    folder.mkdir()
    literal = folder / "q [1]*?.jsonl"
    literal.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    (folder / "q 1ab.jsonl").write_text("\n".join(lines[3:6]) + "\n", encoding="utf-8")  # what the glob matches
    out = tmp_path / "out [x]*?" / "ans [1]*"
    _write_earlier(out)
    decoys = [out.parent / "ans 1a-00000-of-00001.jsonl", out.parent / "ans 1-metric.json"]  # its glob's matches
    for d in decoys:
        d.write_text("decoy\n")
    code, stdout, err = _main(capsys, "--input", str(literal), "--output", str(out), "--model", str(bundled_model))
    assert code == 0, err
    assert "read 3 records from 1 file" in stdout
    assert sorted(_answer_ids(out)) == sorted(json.loads(x)["id"] for x in lines[:3])
    assert all(d.read_text() == "decoy\n" for d in decoys)
    assert not Path(f"{out}-00001-of-00002.jsonl").exists() and not Path(f"{out}-metric.json").exists()


def test_unknown_extra_arguments_stop_the_run_in_one_line(bundled_model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """What an unquoted glob becomes (extra paths after --input), or a flag nobody knows: refused with
    one line before anything is read or written, instead of Beam's warning and a run over the first file."""
    out = tmp_path / "o" / "a"
    base = ["--input", str(SAMPLE), "--output", str(out), "--model", str(bundled_model)]
    for extra, says in ((["samples/other.jsonl"], "unexpected argument 'samples/other.jsonl'"),
                        (["--no_such_beam_flag", "1"], "unknown option --no_such_beam_flag")):
        code, _, err = _main(capsys, *base, *extra)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not out.parent.exists()


def test_make_run_quotes_its_paths(bundled_model: Path, tmp_path: Path) -> None:
    """`make run INPUT='<folder with spaces>/part*.jsonl'`: the glob reaches the pipeline whole and every
    file it matches is read (the shell used to expand it and Beam read the first file only)."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    folder = tmp_path / "my data"
    folder.mkdir()
    (folder / "part 1.jsonl").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    (folder / "part 2.jsonl").write_text("\n".join(lines[2:5]) + "\n", encoding="utf-8")
    out = tmp_path / "my out" / "answers"
    proc = subprocess.run(["make", "--no-print-directory", "run", f"INPUT={folder}/part*.jsonl", f"OUTPUT={out}",
                           f"MODEL={bundled_model}", "EXTRA_ARGS=--progress-every 0"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "summary: read 5 records from 2 files, answered 5, rejected 0" in proc.stdout
    assert sorted(_answer_ids(out)) == sorted(json.loads(x)["id"] for x in lines[:5])


def _gs_lock(gcs: Any, prefix: str, **holder: Any) -> None:
    from apache_beam.io.filesystems import FileSystems

    now = time.time()
    meta = {"run": "other", "pid": 4242, "host": "another-host", "started": now, "heartbeat": now, **holder}
    with FileSystems.create(prefix + ".lock") as f:
        f.write(json.dumps(meta).encode())


def test_gs_lock_refuses_a_live_run_and_takes_over_a_dead_one(bundled_model: Path, gcs_emulator: Any,  # noqa: F811
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """On gs://, a lock whose heartbeat is fresh refuses the run in one line; one not beaten for longer than
    the stale age (or whose process is gone from this host) is taken over: the run replaces the earlier
    outputs, deletes the dead run's staging objects, and deletes the lock when done."""
    from apache_beam.io.filesystems import FileSystems

    from pipelines.outputs import STALE_SECS

    prefix = gcs_emulator.url(f"{tmp_path.name}/out/ans*?")
    for tail, text in EARLIER.items():
        with FileSystems.create(prefix + tail) as f:
            f.write(text.encode())
    decoy = gcs_emulator.url(f"{tmp_path.name}/out/ansXY-00000-of-00001.jsonl")  # what the prefix's glob matches
    with FileSystems.create(decoy) as f:
        f.write(b"decoy\n")
    dead = OutputRun(prefix, qa_batch.OUTPUT_TAILS, run="deadrun")
    with FileSystems.create(dead.staging + "/out-00000-of-00001.jsonl") as f:
        f.write(b'{"id": "half-written"}\n')

    argv = ["--input", str(SAMPLE), "--output", prefix, "--model", str(bundled_model), "--progress-every", "0"]
    _gs_lock(gcs_emulator, prefix)
    code, _, err = _main(capsys, *argv)
    assert code == 2 and "another run (pid 4242 on host another-host" in err and len(err.strip().splitlines()) == 1

    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        pass  # a process of this host that has ended: its lock is dead at once
    _gs_lock(gcs_emulator, prefix, pid=gone.pid, host=socket.gethostname())
    with OutputRun(prefix, qa_batch.OUTPUT_TAILS):
        assert not FileSystems.exists(dead.staging + "/out-00000-of-00001.jsonl")  # cleaned after the dead run

    _gs_lock(gcs_emulator, prefix, heartbeat=time.time() - STALE_SECS - 60)
    code, stdout, err = _main(capsys, *argv)
    assert code == 0, err
    assert "read 20 records from 1 file, answered 20" in stdout
    listed = sorted(m.path for m in FileSystems.match([gcs_emulator.url(f"{tmp_path.name}/out/**")])[0].metadata_list)
    assert listed == sorted([decoy, prefix + "-00000-of-00001.jsonl", prefix + "-rejected-00000-of-00001.jsonl"]), listed


def test_gs_lock_heartbeat_keeps_a_long_run_alive(gcs_emulator: Any, tmp_path: Path) -> None:  # noqa: F811
    """While a run holds a gs:// lock its heartbeat is rewritten, so a run that outlives the stale age is
    not taken for dead; the lock is gone when the run ends."""
    from apache_beam.io.filesystems import FileSystems

    prefix = gcs_emulator.url(f"{tmp_path.name}/answers")

    def holder() -> Dict[str, Any]:
        with FileSystems.open(prefix + ".lock") as f:
            return json.loads(f.read())

    with OutputRun(prefix, qa_batch.OUTPUT_TAILS, heartbeat=0.2, stale_after=2.0):
        first = holder()
        time.sleep(2.5)  # older than the stale age, but beaten meanwhile
        later = holder()
        assert later["run"] == first["run"] and later["heartbeat"] > first["heartbeat"]
        with pytest.raises(ValueError, match="another run"):
            OutputRun(prefix, qa_batch.OUTPUT_TAILS, stale_after=2.0).__enter__()
    assert not FileSystems.exists(prefix + ".lock")
