"""Shared test helpers: free loopback ports, the Rust binaries of this repository
as real processes, and a Python server running in the test's event loop."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from stream_rpc.crypto import generate_key

REPO = Path(__file__).resolve().parents[2]


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def rust_example(name: str) -> Path:
    """A Rust example binary of this repository; fails saying how to build it."""
    path = target_dir() / "debug" / "examples" / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: build the Rust examples first (`cargo build --examples`; "
            "scripts/test does it)"
        )
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A real process whose output lines are collected as they come."""

    def __init__(self, argv: List[str], env: Dict[str, str]) -> None:
        full = dict(os.environ)
        full.update(env)
        full.setdefault("STREAM_RPC_HOST", "127.0.0.1")
        self.child = subprocess.Popen(
            argv,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: List[str] = []
        self._ended = False
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """The first output line matching ``pattern``, waiting for it (bounded)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    found = regex.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    raise AssertionError(f"no line matching {pattern!r}:\n{self.output()}")
                self._changed.wait(min(left, 0.2))

    def wait_exit(self, timeout: float = 60.0) -> int:
        code = self.child.wait(timeout)
        with self._changed:
            self._changed.wait_for(lambda: self._ended, 5)
        return code

    def stop(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait(10)


@pytest.fixture
def key() -> str:
    return generate_key()


@pytest.fixture
def processes():
    """Starts processes and kills whatever is left at the end of the test."""
    started: List[Process] = []

    def start(argv: List[str], env: Dict[str, str]) -> Process:
        process = Process([str(part) for part in argv], env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def rust_server(start, name: str, key: str, extra: Optional[Dict[str, str]] = None):
    """A Rust example server on a free port, and its port."""
    env = {"CRYPTO_KEY": key, "STREAM_RPC_PORT": "0", "STREAM_RPC_LOG_LVL": "INFO"}
    env.update(extra or {})
    server = start([rust_example(name)], env)
    port = int(server.wait_for(r"Serving on 127\.0\.0\.1:(\d+)").group(1))
    return server, port


def run(coroutine, timeout: float = 60.0):
    """Runs a test's coroutine with a time bound."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))
