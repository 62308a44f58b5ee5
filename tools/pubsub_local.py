"""Google's Pub/Sub emulator on this machine, for trying the streaming pipeline and for its tests.

    python -m tools.pubsub_local emulator --port 8085          # runs until Ctrl-C (Java 17)
    export PUBSUB_EMULATOR_HOST=127.0.0.1:8085
    python -m tools.pubsub_local setup                         # topics questions/answers/rejected + a subscription each
    python -m tools.pubsub_local publish samples/streaming_questions.jsonl   # one message per line
    python -m tools.pubsub_local pull answers --follow          # print answers as they come

The emulator is the Debian package ``google-cloud-cli-pubsub-emulator`` (``gcloud beta emulators
pubsub start --host-port=127.0.0.1:8085`` starts the same server). Every client here, and Beam's
Pub/Sub IO, reach it through ``PUBSUB_EMULATOR_HOST``; this module refuses any other host than
127.0.0.1 / localhost, so nothing is ever sent to Google.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

PROJECT = "local-qa"
TOPICS = ("questions", "answers", "rejected")  # each with a subscription of the same name
INSTALL = "apt-get install google-cloud-cli-pubsub-emulator"  # (Google Cloud CLI's apt repository)
_LAUNCHER = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def find_emulator() -> Optional[str]:
    """The emulator's launcher (``cloud-pubsub-emulator`` on PATH, else the Debian package's), or None."""
    on_path = shutil.which("cloud-pubsub-emulator")
    if on_path:
        return on_path
    if _LAUNCHER.is_file() and os.access(_LAUNCHER, os.X_OK):
        return str(_LAUNCHER)
    try:  # the package may live elsewhere
        files = subprocess.run(["dpkg", "-L", "google-cloud-cli-pubsub-emulator"], capture_output=True, text=True,
                               check=False).stdout.split()
    except OSError:
        return None
    return next((f for f in files if f.endswith("bin/cloud-pubsub-emulator")), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_host() -> str:
    """``PUBSUB_EMULATOR_HOST``, which must name this machine; SystemExit otherwise."""
    from pipelines.qa_streaming import lift_emulator_message_limit

    host = os.environ.get("PUBSUB_EMULATOR_HOST", "")
    if host.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost"):
        raise SystemExit("set PUBSUB_EMULATOR_HOST=127.0.0.1:PORT (the emulator's address) first; "
                         f"got {host!r}. This tool talks to the local emulator only.")
    lift_emulator_message_limit()  # pulls of several large messages
    port = int(host.rsplit(":", 1)[1]) if ":" in host else 8085
    deadline = time.monotonic() + 60  # an emulator started a moment ago (`... emulator &`) is still coming up
    while not _listening(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"no Pub/Sub emulator answers at {host}: start it first "
                             "(python -m tools.pubsub_local emulator)")
        time.sleep(0.25)
    return host


class PubSubEmulator:
    """The emulator as a child process on 127.0.0.1 (``with PubSubEmulator() as emu: ...``); while it
    runs, ``PUBSUB_EMULATOR_HOST`` points at it (restored on stop)."""

    def __init__(self, port: int = 0, launcher: Optional[str] = None, log: Optional[Path] = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._launcher = launcher or find_emulator()
        self._log = log
        self._proc: Optional[subprocess.Popen] = None
        self._saved_env: Optional[str] = None

    def start(self, timeout: float = 60.0) -> PubSubEmulator:
        if not self._launcher:
            raise FileNotFoundError(f"the Pub/Sub emulator is not installed: {INSTALL}")
        out: Any = open(self._log, "ab") if self._log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        self._proc = subprocess.Popen([self._launcher, "--host=127.0.0.1", f"--port={self.port}"],
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Pub/Sub emulator did not start on {self.host}"
                                   f"{f' (see {self._log})' if self._log else ''}")
            time.sleep(0.2)
        self._saved_env = os.environ.get("PUBSUB_EMULATOR_HOST")  # (stop() restores it)
        os.environ["PUBSUB_EMULATOR_HOST"] = self.host
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)  # the launcher script and its java child
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
        if os.environ.get("PUBSUB_EMULATOR_HOST") == self.host:
            if self._saved_env is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = self._saved_env

    def __enter__(self) -> PubSubEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def topic_path(name: str, project: str = PROJECT) -> str:
    return name if name.startswith("projects/") else f"projects/{project}/topics/{name}"


def subscription_path(name: str, project: str = PROJECT) -> str:
    return name if name.startswith("projects/") else f"projects/{project}/subscriptions/{name}"


def setup(project: str = PROJECT, names: Sequence[str] = TOPICS) -> Dict[str, Dict[str, str]]:
    """Create each topic and a subscription of the same name (existing ones are kept); their paths."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    local_host()
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    paths: Dict[str, Dict[str, str]] = {}
    with subscriber:
        for name in names:
            topic, sub = topic_path(name, project), subscription_path(name, project)
            with contextlib.suppress(AlreadyExists):
                publisher.create_topic(name=topic)
            with contextlib.suppress(AlreadyExists):
                subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=10)
            paths[name] = {"topic": topic, "subscription": sub}
    return paths


class Publisher:
    """Publish message bodies to one topic of the emulator, each confirmed (``publish`` returns its id)."""

    def __init__(self, topic: str, project: str = PROJECT) -> None:
        from google.cloud import pubsub_v1

        local_host()
        self.topic = topic_path(topic, project)
        self._client = pubsub_v1.PublisherClient()

    def publish(self, data: bytes, timeout: float = 30.0) -> str:
        return str(self._client.publish(self.topic, data).result(timeout=timeout))

    def publish_many(self, bodies: Iterable[bytes], timeout: float = 60.0) -> List[str]:
        futures = [self._client.publish(self.topic, body) for body in bodies]
        return [str(f.result(timeout=timeout)) for f in futures]


class Puller:
    """Pull (and ack) message bodies from one subscription of the emulator."""

    def __init__(self, subscription: str, project: str = PROJECT) -> None:
        from google.cloud import pubsub_v1

        local_host()
        self.subscription = subscription_path(subscription, project)
        self._client = pubsub_v1.SubscriberClient()

    def pull(self, timeout: float = 5.0, max_messages: int = 100) -> List[bytes]:
        """The messages waiting (up to ``max_messages``), or those that arrive within ``timeout`` s; acked."""
        from google.api_core.exceptions import DeadlineExceeded

        try:
            response = self._client.pull(subscription=self.subscription, max_messages=max_messages, timeout=timeout)
        except DeadlineExceeded:
            return []
        received = list(response.received_messages)
        if received:
            self._client.acknowledge(subscription=self.subscription, ack_ids=[m.ack_id for m in received])
        return [m.message.data for m in received]

    def drain(self, quiet: float = 2.0) -> List[bytes]:
        """Everything until nothing arrives for ``quiet`` seconds."""
        out: List[bytes] = []
        while True:
            got = self.pull(timeout=quiet)
            if not got:
                return out
            out.extend(got)

    def follow(self) -> Iterator[bytes]:
        while True:
            yield from self.pull(timeout=30.0)

    def close(self) -> None:
        self._client.close()


def _lines(paths: Sequence[str]) -> Iterator[bytes]:
    for path in paths:
        with (sys.stdin.buffer if path == "-" else open(path, "rb")) as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pubsub_local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", default=PROJECT, help=f"emulator project (default {PROJECT})")
    sub = parser.add_subparsers(dest="command", required=True)
    emu = sub.add_parser("emulator", help="run the emulator on 127.0.0.1 until Ctrl-C")
    emu.add_argument("--port", type=int, default=8085)
    sub.add_parser("setup", help=f"create the topics {', '.join(TOPICS)} and a subscription of the same name each")
    pub = sub.add_parser("publish", help="publish each non-empty line of FILE ('-': stdin) as one message")
    pub.add_argument("files", nargs="+", metavar="FILE")
    pub.add_argument("--topic", default="questions")
    pub.add_argument("--every", type=float, default=0.0, metavar="SECS", help="wait SECS between messages")
    pull = sub.add_parser("pull", help="print the messages of a subscription, one per line (acked)")
    pull.add_argument("subscription", nargs="?", default="answers")
    pull.add_argument("--follow", action="store_true", help="keep printing until Ctrl-C")
    args = parser.parse_args(argv)

    if args.command == "emulator":
        emulator = PubSubEmulator(args.port)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the emulator on kill too
        with emulator:
            print(f"Pub/Sub emulator on {emulator.host}: export PUBSUB_EMULATOR_HOST={emulator.host}", flush=True)
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        return 0
    if args.command == "setup":
        for name, paths in setup(args.project).items():
            print(f"{name}: {paths['topic']}  {paths['subscription']}")
        return 0
    if args.command == "publish":
        publisher, count = Publisher(args.topic, args.project), 0
        for line in _lines(args.files):
            publisher.publish(line)
            count += 1
            if args.every > 0:
                time.sleep(args.every)
        print(f"published {count} messages to {publisher.topic}", file=sys.stderr)
        return 0
    puller = Puller(args.subscription, args.project)
    try:
        for body in puller.follow() if args.follow else puller.drain():
            print(body.decode("utf-8", errors="backslashreplace"), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
