"""A real hookrelay per test session (from $HOOKRELAY_BIN) and a receiver it delivers to."""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from hookrelay import HookrelayClient

START_TIMEOUT = 20.0


@dataclass
class Delivery:
    path: str
    headers: Dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Receiver:
    """Records every request hookrelay sends and answers 200."""

    server: ThreadingHTTPServer
    deliveries: List[Delivery] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def record(self, delivery: Delivery) -> None:
        with self.cond:
            self.deliveries.append(delivery)
            self.cond.notify_all()

    def wait_for(
        self, predicate: Callable[[Delivery], bool], count: int = 1, timeout: float = 10.0
    ) -> List[Delivery]:
        """The deliveries matching ``predicate`` once there are ``count`` of them; fails
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [d for d in self.deliveries if predicate(d)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(found)} of {count} expected deliveries arrived within {timeout} s "
                        f"({len(self.deliveries)} deliveries in all)"
                    )
                self.cond.wait(left)

    def matching(self, predicate: Callable[[Delivery], bool]) -> List[Delivery]:
        with self.cond:
            return [d for d in self.deliveries if predicate(d)]


def _start_receiver() -> Receiver:
    holder: Dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            holder["r"].record(
                Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(server)
    holder["r"] = receiver
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


@dataclass
class Server:
    url: str
    ingest_secret: str
    admin_token: str
    webhook_secret: str
    receiver: Receiver
    process: "subprocess.Popen[bytes]"

    def client(self, **options: Any) -> HookrelayClient:
        options.setdefault("ingest_secret", self.ingest_secret)
        options.setdefault("admin_token", self.admin_token)
        return HookrelayClient(self.url, **options)


def _binary() -> str:
    path = os.environ.get("HOOKRELAY_BIN")
    if not path:
        pytest.fail(
            "HOOKRELAY_BIN is not set: point it at a built hookrelay binary "
            "(e.g. target/debug/hookrelay) to run the tests against a real server",
            pytrace=False,
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"HOOKRELAY_BIN={path} is not an executable file", pytrace=False)
    return path


def _start_server(tmp: Path, receiver: Receiver, **env_overrides: str) -> Server:
    binary = _binary()
    data = tmp / "data"
    ingest_secret = secrets.token_hex(32)
    admin_token = secrets.token_hex(24)
    webhook_secret = secrets.token_hex(32)
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("HOOKRELAY_") or k.startswith("WEBHOOK_") or k == "DATABASE_URL")
    }
    env.update(
        {
            "HOOKRELAY_DATA_DIR": str(data),
            "DATABASE_URL": f"sqlite://{data}/hookrelay.db",
            "HOOKRELAY_INGEST_SECRET": ingest_secret,
            "HOOKRELAY_ADMIN_TOKEN": admin_token,
            "WEBHOOK_SECRET": webhook_secret,
            "WEBHOOK_RATE_LIMIT": "100000",
            "WEBHOOK_RATE_WINDOW": "1",
            "HOOKRELAY_ALLOW_PRIVATE_TARGETS": "true",
            "ZAPIER_WEBHOOK_URL": receiver.url,
            "WEBHOOK_RETRY_DELAY_SECONDS": "1",
            "LOG_LEVEL": "WARN",
        }
    )
    env.update(env_overrides)
    stderr = open(tmp / "stderr.log", "wb")
    process = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0"],
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    stderr.close()
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump() -> None:
        # Keeps reading so the pipe never fills; the first lines tell the port.
        assert process.stdout is not None
        for raw in process.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    marker = "hookrelay listening on "
    while True:
        left = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.01, left))
        except queue.Empty:
            line = ""
        if line and marker in line:
            url = line.split(marker, 1)[1].strip().split()[0]
            break
        if line is None or left <= 0:
            process.kill()
            process.wait()
            log = (tmp / "stderr.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"hookrelay did not start (exit {process.returncode}):\n{log}")
    return Server(url, ingest_secret, admin_token, webhook_secret, receiver, process)


def _stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """hookrelay with signed ingest, an admin token, signed deliveries to a local receiver."""
    receiver = _start_receiver()
    with tempfile.TemporaryDirectory(prefix="hookrelay-pyclient-") as tmp:
        srv = _start_server(Path(tmp), receiver)
        try:
            yield srv
        finally:
            _stop(srv)
            receiver.server.shutdown()


@pytest.fixture(scope="session")
def limited_server() -> Iterator[Server]:
    """hookrelay allowing one ingest request per 2 s and no burst."""
    receiver = _start_receiver()
    with tempfile.TemporaryDirectory(prefix="hookrelay-pyclient-limited-") as tmp:
        srv = _start_server(
            Path(tmp),
            receiver,
            WEBHOOK_RATE_LIMIT="1",
            WEBHOOK_RATE_WINDOW="2",
            WEBHOOK_BURST_ALLOWANCE="0",
        )
        try:
            yield srv
        finally:
            _stop(srv)
            receiver.server.shutdown()


@pytest.fixture
def unique() -> str:
    """A fresh id for the test's sessions and keys, so tests sharing a server never meet."""
    return "py-" + secrets.token_hex(6)
