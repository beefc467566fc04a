#!/usr/bin/env python3
"""amqp_tool -- the measurements of bench/run.sh that warren-perf cannot make.

Standard library only; speaks raw AMQP 0-9-1 over plain sockets (guest/guest, vhost "/").

  conns   --port P --pid PID [--n 1000] [--queue Q]
          Declare a queue, measure the broker's VmRSS, open N connections, each with channel 1
          and a basic.consume on Q (idle: the queue stays empty), wait 2 s, measure VmRSS again.
          Prints one JSON line: rss_before_kb, rss_after_kb, kb_per_conn, open_seconds.
  drain   --port P --pid PID --queue Q [--expect N]
          Consume Q with no-ack until it is empty; count the basic.deliver frames exactly.
          Prints one JSON line: delivered, seconds (consume-ok .. last byte), rate, broker CPU
          ticks over the drain, remaining (queue depth afterwards). Deletes Q at the end.
  startup --port P [--stop-cmd CMD] -- COMMAND...
          exec COMMAND, then try a TCP connect + full AMQP handshake (to connection.open-ok)
          every 2 ms; prints one JSON line with ms from exec to open-ok, then stops the broker
          (with --stop-cmd if given, else SIGTERM) and waits for it to exit.
"""

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

FRAME_END = b"\xce"


def shortstr(s):
    b = s.encode()
    return bytes([len(b)]) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


EMPTY_TABLE = b"\x00\x00\x00\x00"


def method_frame(ch, cls, mth, args=b""):
    payload = struct.pack(">HH", cls, mth) + args
    return struct.pack(">BHI", 1, ch, len(payload)) + payload + FRAME_END


class Conn:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by broker")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        t, ch, size = struct.unpack(">BHI", self._read(7))
        payload = self._read(size)
        if self._read(1) != FRAME_END:
            raise ConnectionError("bad frame end")
        return t, ch, payload

    def expect(self, cls, mth):
        while True:
            t, ch, payload = self.read_frame()
            if t == 8:  # heartbeat
                continue
            got = struct.unpack(">HH", payload[:4])
            if got == (cls, mth):
                return payload[4:]
            if got in ((10, 50), (20, 40)):
                code = struct.unpack(">H", payload[4:6])[0]
                text = payload[7:7 + payload[6]].decode(errors="replace")
                raise ConnectionError(f"broker closed: {code} {text}")
            # anything else (e.g. a delivery) is ignored here

    def send(self, data):
        self.sock.sendall(data)

    def handshake(self, vhost="/"):
        self.send(b"AMQP\x00\x00\x09\x01")
        self.expect(10, 10)
        self.send(method_frame(0, 10, 11, EMPTY_TABLE + shortstr("PLAIN")
                               + longstr(b"\x00guest\x00guest") + shortstr("en_US")))
        tune = self.expect(10, 30)
        ch_max, frame_max, _hb = struct.unpack(">HIH", tune[:8])
        self.send(method_frame(0, 10, 31, struct.pack(">HIH", ch_max or 2047, frame_max or 131072, 0)))
        self.send(method_frame(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        self.expect(10, 41)
        return self

    def channel_open(self, ch=1):
        self.send(method_frame(ch, 20, 10, shortstr("")))
        self.expect(20, 11)

    def queue_declare(self, q, passive=False, durable=False, ch=1):
        bits = (1 if passive else 0) | (2 if durable else 0)
        self.send(method_frame(ch, 50, 10, struct.pack(">H", 0) + shortstr(q) + bytes([bits]) + EMPTY_TABLE))
        ok = self.expect(50, 11)
        n = ok[0]
        msgs, consumers = struct.unpack(">II", ok[1 + n:9 + n])
        return msgs, consumers

    def queue_delete(self, q, ch=1):
        self.send(method_frame(ch, 50, 40, struct.pack(">H", 0) + shortstr(q) + b"\x00"))
        self.expect(50, 41)

    def consume(self, q, tag, no_ack, ch=1):
        bits = 2 if no_ack else 0
        self.send(method_frame(ch, 60, 20, struct.pack(">H", 0) + shortstr(q) + shortstr(tag) + bytes([bits]) + EMPTY_TABLE))
        self.expect(60, 21)

    def close(self):
        try:
            self.send(method_frame(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)))
        except OSError:
            pass
        self.sock.close()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def cmd_conns(a):
    admin = Conn(a.host, a.port).handshake()
    admin.channel_open()
    admin.queue_declare(a.queue)
    time.sleep(1.0)
    before = rss_kb(a.pid)
    conns = []
    t0 = time.monotonic()
    err = None
    try:
        for i in range(a.n):
            c = Conn(a.host, a.port).handshake()
            c.channel_open()
            c.consume(a.queue, f"idle-{i}", no_ack=False)
            conns.append(c)
    except Exception as e:  # report how far it got
        err = f"{type(e).__name__}: {e}"
    opened = time.monotonic() - t0
    time.sleep(2.0)
    after = rss_kb(a.pid)
    _, consumers = admin.queue_declare(a.queue, passive=True)
    n = len(conns)
    out = {"connections": n, "consumers_seen": consumers, "rss_before_kb": before, "rss_after_kb": after,
           "kb_per_conn": (after - before) / n if n else None, "open_seconds": round(opened, 3), "error": err}
    for c in conns:
        c.close()
    time.sleep(1.0)
    admin.queue_delete(a.queue)
    admin.close()
    print(json.dumps(out))


def count_delivers(data):
    n = 0
    i = 0
    end = len(data)
    while i + 7 <= end:
        t = data[i]
        size = int.from_bytes(data[i + 3:i + 7], "big")
        if t == 1 and data[i + 7:i + 11] == b"\x00\x3c\x00\x3c":  # basic.deliver (60, 60)
            n += 1
        i += 8 + size
    return n


def cmd_drain(a):
    c = Conn(a.host, a.port).handshake()
    c.channel_open()
    depth, _ = c.queue_declare(a.queue, passive=True)
    s = c.sock
    ticks0 = cpu_ticks(a.pid)
    t0 = time.monotonic()
    c.send(method_frame(1, 60, 20, struct.pack(">H", 0) + shortstr(a.queue) + shortstr("drain") + bytes([2]) + EMPTY_TABLE))
    chunks = []
    last = t0
    s.settimeout(a.idle)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        try:
            n = s.recv_into(buf)
        except socket.timeout:
            break
        if n == 0:
            break
        last = time.monotonic()
        chunks.append(bytes(view[:n]))
    ticks1 = cpu_ticks(a.pid)
    data = c.buf + b"".join(chunks)
    # the stream starts with basic.consume-ok (frames are counted, not decoded further)
    delivered = count_delivers(data)
    s.settimeout(30)
    c.buf = b""
    c.send(method_frame(1, 60, 30, shortstr("drain") + b"\x00"))  # basic.cancel
    c.expect(60, 31)
    remaining, _ = c.queue_declare(a.queue, passive=True)
    c.queue_delete(a.queue)
    c.close()
    secs = last - t0
    print(json.dumps({"depth_before": depth, "delivered": delivered, "remaining": remaining,
                      "seconds": round(secs, 3), "rate": round(delivered / secs, 1) if secs > 0 else None,
                      "cpu_ticks": ticks1 - ticks0,
                      "cpu_us_per_msg": round((ticks1 - ticks0) * 10000 / delivered, 3) if delivered else None}))


def try_handshake(host, port):
    try:
        c = Conn(host, port, timeout=2.0).handshake()
        c.close()
        return True
    except OSError:
        return False


def cmd_startup(a):
    cmd = a.command[1:] if a.command and a.command[0] == "--" else a.command
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ok = False
    while time.monotonic() - t0 < a.timeout:
        if try_handshake(a.host, a.port):
            ok = True
            break
        if proc.poll() is not None and not a.stop_cmd:
            break
        time.sleep(0.002)
    ms = (time.monotonic() - t0) * 1000
    if a.stop_cmd:
        subprocess.run(a.stop_cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        proc.send_signal(getattr(signal, "SIG" + a.signal))
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # wait for the port to be free again
    for _ in range(300):
        try:
            socket.create_connection((a.host, a.port), timeout=0.2).close()
            time.sleep(0.1)
        except OSError:
            break
    print(json.dumps({"ok": ok, "ms": round(ms, 1)}))


def cmd_wait(a):
    """Wait until the broker completes a handshake; print the seconds waited."""
    t0 = time.monotonic()
    ok = False
    while time.monotonic() - t0 < a.timeout:
        if try_handshake(a.host, a.port):
            ok = True
            break
        time.sleep(0.005)
    print(json.dumps({"ok": ok, "s": round(time.monotonic() - t0, 3)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("conns", "drain", "startup", "wait"):
        s = sub.add_parser(name)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, required=True)
        if name not in ("startup", "wait"):
            s.add_argument("--pid", type=int, required=True)
        if name == "wait":
            s.add_argument("--timeout", type=float, default=600)
        if name == "conns":
            s.add_argument("--n", type=int, default=1000)
            s.add_argument("--queue", default="bench-idle")
        if name == "drain":
            s.add_argument("--queue", required=True)
            s.add_argument("--idle", type=float, default=2.0, help="end after this many s without data")
        if name == "startup":
            s.add_argument("--stop-cmd")
            s.add_argument("--signal", default="TERM", help="signal that stops the broker (without --stop-cmd)")
            s.add_argument("--timeout", type=float, default=120)
            s.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    {"conns": cmd_conns, "drain": cmd_drain, "startup": cmd_startup, "wait": cmd_wait}[a.cmd](a)


if __name__ == "__main__":
    main()
