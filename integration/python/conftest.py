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
AMQPS = re.compile(r"listening for AMQPS \(AMQP 0-9-1 over TLS\) connections on ([0-9.]+):(\d+)")
MANAGEMENT = re.compile(r"management API listening on https?://([0-9.]+):(\d+)/")


class Broker:
    """A Warren process. `config` (TOML text) is written to a file and passed with --config;
    the management port (if enabled) is read from its log line, which comes before the AMQP one."""

    def __init__(self, config=None, args=(), bind="127.0.0.1"):
        binary = os.environ.get("WARREN_BIN", os.path.join(ROOT, "target", "release", "warren"))
        # A fresh data directory per broker: durable state from earlier runs must not leak in.
        self.data = tempfile.TemporaryDirectory(prefix="warren-test-")
        extra = list(args)
        if config is not None:
            path = os.path.join(self.data.name, "broker.toml")
            with open(path, "w") as f:
                f.write(config)
            extra += ["--config", path]
        self.mgmt_port = None
        self.amqps_port = None
        self.proc = subprocess.Popen(
            [binary, "--bind", bind, "--port", "0", "--log-level", "info",
             "--data-dir", os.path.join(self.data.name, "data")] + extra,
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
                ms = AMQPS.search(line)
                if ms and self.amqps_port is None:
                    self.amqps_port = int(ms.group(2))
                mm = MANAGEMENT.search(line)
                if mm and self.mgmt_port is None:
                    self.mgmt_port = int(mm.group(2))
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


def make_certs(directory, client_cn="tls-user"):
    """The TLS test certificates (a CA, server, client, untrusted client) as PEM files, made at
    run time by the project's rcgen example (built by scripts/test; built here if missing)."""
    binary = os.path.join(ROOT, "target", "release", "examples", "test_certs")
    if os.path.exists(binary):
        subprocess.run([binary, directory, client_cn], check=True)
    else:
        subprocess.run(["cargo", "run", "-q", "--release", "--example", "test_certs", "--",
                        directory, client_cn], check=True, cwd=ROOT)
    return directory


@pytest.fixture(scope="session")
def broker():
    return _broker


@pytest.fixture(scope="session")
def port():
    return int(os.environ["WARREN_PORT"])
