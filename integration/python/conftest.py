"""Starts the Warren release binary once per test session on an ephemeral loopback port.

The broker prints one log line when its listener is up ("listening for AMQP 0-9-1 connections
on ADDR"); we read the port from it. WARREN_PORT is set for the suites; at the end the broker
gets SIGTERM and must exit 0 within a second (the shutdown contract).
"""
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTENING = re.compile(r"listening for AMQP 0-9-1 connections on ([0-9.]+):(\d+)")


class Broker:
    def __init__(self):
        binary = os.environ.get("WARREN_BIN", os.path.join(ROOT, "target", "release", "warren"))
        # A fresh data directory per broker: durable state from earlier runs must not leak in.
        self.data = tempfile.TemporaryDirectory(prefix="warren-test-")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", "0", "--log-level", "info",
             "--data-dir", self.data.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        ready = threading.Event()
        self.port = None

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = LISTENING.search(line)
                if m and self.port is None:
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(30) or self.port is None:
            self.proc.kill()
            raise RuntimeError("warren did not start:\n" + "".join(self.lines))

    def stop(self):
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=5)
        return code, time.monotonic() - started


_broker = None


def pytest_configure(config):
    """Start before collection so modules can read WARREN_PORT at import time."""
    global _broker
    if "WARREN_PORT" in os.environ and os.environ.get("WARREN_EXTERNAL") == "1":
        return  # run against a broker started by hand (e.g. RabbitMQ for comparison)
    _broker = Broker()
    os.environ["WARREN_PORT"] = str(_broker.port)


def pytest_unconfigure(config):
    if _broker is not None and _broker.proc.poll() is None:
        _broker.stop()


@pytest.fixture(scope="session")
def broker():
    return _broker


@pytest.fixture(scope="session")
def port():
    return int(os.environ["WARREN_PORT"])
