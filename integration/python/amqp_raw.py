"""amqp_raw -- a tiny, dependency-free helper for speaking raw AMQP 0-9-1.

Meant for wire-level tests (see test_wire_errors.py): it lets a test build any frame byte by
byte -- including invalid ones -- push it down a plain TCP socket and look at exactly what the
broker sends back (which close method, reply code, reply text, offending class/method), and
whether the broker then closed the socket.

Frame layout (AMQP 0-9-1 section 4.2.3):

    type:octet  channel:short  size:long  payload:size octets  frame-end:octet (0xCE)

Method payload:          class-id:short method-id:short arguments...
Content header payload:  class-id:short weight:short body-size:longlong flags:short properties...
Content body payload:    raw bytes
Heartbeat payload:       empty (and on channel 0, in a well-formed stream)

Everything here is plain standard-library Python (struct, socket, time, weakref).
"""

import socket
import struct
import time
import weakref
from collections import namedtuple

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE

# Pseudo frame types used by read_frames() for things that are not frames.
PROTOCOL_HEADER_REPLY = "protocol-header"  # the server answered with its own "AMQP...." header
GARBAGE = "garbage"  # bytes that do not parse as a frame

# (class_id, method_id) of the methods the helpers and tests refer to.
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_SECURE = (10, 20)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CONNECTION_BLOCKED = (10, 60)
CONNECTION_UNBLOCKED = (10, 61)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_FLOW = (20, 20)
CHANNEL_FLOW_OK = (20, 21)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
EXCHANGE_DECLARE = (40, 10)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
BASIC_QOS = (60, 10)
BASIC_QOS_OK = (60, 11)
BASIC_PUBLISH = (60, 40)
BASIC_RETURN = (60, 50)

METHOD_NAMES = {
    (10, 10): "connection.start", (10, 11): "connection.start-ok",
    (10, 20): "connection.secure", (10, 21): "connection.secure-ok",
    (10, 30): "connection.tune", (10, 31): "connection.tune-ok",
    (10, 40): "connection.open", (10, 41): "connection.open-ok",
    (10, 50): "connection.close", (10, 51): "connection.close-ok",
    (10, 60): "connection.blocked", (10, 61): "connection.unblocked",
    (20, 10): "channel.open", (20, 11): "channel.open-ok",
    (20, 20): "channel.flow", (20, 21): "channel.flow-ok",
    (20, 40): "channel.close", (20, 41): "channel.close-ok",
    (40, 10): "exchange.declare", (40, 11): "exchange.declare-ok",
    (50, 10): "queue.declare", (50, 11): "queue.declare-ok",
    (60, 10): "basic.qos", (60, 11): "basic.qos-ok",
    (60, 40): "basic.publish", (60, 50): "basic.return",
    (85, 10): "confirm.select", (85, 11): "confirm.select-ok",
}


def method_name(class_id, method_id):
    return METHOD_NAMES.get((class_id, method_id), "%d/%d" % (class_id, method_id))


# --------------------------------------------------------------------------------------------
# Field encoders (AMQP 0-9-1 section 4.2.5; table value types as RabbitMQ reads them)
# --------------------------------------------------------------------------------------------

def octet(v):
    return struct.pack(">B", v)


def short(v):
    return struct.pack(">H", v)


def long_(v):
    return struct.pack(">I", v)


def longlong(v):
    return struct.pack(">Q", v)


def _b(s):
    return s if isinstance(s, (bytes, bytearray)) else s.encode("utf-8")


def shortstr(s):
    """Short string: 1 length octet + bytes. `s` may be str (UTF-8 encoded) or raw bytes
    (so tests can send non-UTF-8 names). Raises if longer than 255 octets."""
    b = _b(s)
    if len(b) > 255:
        raise ValueError("shortstr longer than 255 octets")
    return octet(len(b)) + bytes(b)


def longstr(s):
    """Long string: 4 length octets + bytes."""
    b = _b(s)
    return long_(len(b)) + bytes(b)


def bits(*flags):
    """Pack consecutive bit fields into octets (first flag = least significant bit)."""
    out = bytearray()
    for i, flag in enumerate(flags):
        if i % 8 == 0:
            out.append(0)
        if flag:
            out[-1] |= 1 << (i % 8)
    return bytes(out)


def field_value(v):
    """One typed table/array value. bool->'t', int->'I' (or 'l' if it does not fit), str/bytes
    ->'S', dict->'F', list/tuple->'A', None->'V', float->'d'. Pass a (tag, raw_bytes) tuple
    wrapped in RawValue to emit anything else verbatim."""
    if isinstance(v, RawValue):
        return v.tag + v.data
    if isinstance(v, bool):
        return b"t" + octet(1 if v else 0)
    if isinstance(v, int):
        if -2**31 <= v < 2**31:
            return b"I" + struct.pack(">i", v)
        return b"l" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"d" + struct.pack(">d", v)
    if isinstance(v, (str, bytes, bytearray)):
        return b"S" + longstr(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    if isinstance(v, (list, tuple)):
        inner = b"".join(field_value(x) for x in v)
        return b"A" + long_(len(inner)) + inner
    if v is None:
        return b"V"
    raise TypeError("cannot encode %r in a field table" % (v,))


class RawValue(object):
    """A table value given as its type tag and already-encoded bytes, e.g. RawValue(b'b', b'\\x01')."""

    def __init__(self, tag, data):
        self.tag, self.data = tag, data


def table(d):
    """Field table: 4-octet byte length, then (shortstr name, typed value) pairs."""
    d = d or {}
    inner = b"".join(shortstr(k) + field_value(v) for k, v in d.items())
    return long_(len(inner)) + inner


# --------------------------------------------------------------------------------------------
# Field decoders (enough to read connection.start's server properties and close reasons)
# --------------------------------------------------------------------------------------------

def _dec_shortstr(buf, off):
    n = buf[off]
    return bytes(buf[off + 1:off + 1 + n]), off + 1 + n


def _dec_longstr(buf, off):
    (n,) = struct.unpack_from(">I", buf, off)
    return bytes(buf[off + 4:off + 4 + n]), off + 4 + n


def _dec_value(buf, off):
    tag = chr(buf[off])
    off += 1
    simple = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
              "l": ">q", "L": ">Q", "f": ">f", "d": ">d", "T": ">Q"}
    if tag == "t":
        return bool(buf[off]), off + 1
    if tag in simple:
        fmt = simple[tag]
        return struct.unpack_from(fmt, buf, off)[0], off + struct.calcsize(fmt)
    if tag == "D":
        scale = buf[off]
        (val,) = struct.unpack_from(">i", buf, off + 1)
        return (scale, val), off + 5
    if tag in ("S", "x"):
        return _dec_longstr(buf, off)
    if tag == "F":
        return _dec_table(buf, off)
    if tag == "A":
        (n,) = struct.unpack_from(">I", buf, off)
        end = off + 4 + n
        off += 4
        items = []
        while off < end:
            v, off = _dec_value(buf, off)
            items.append(v)
        return items, end
    if tag == "V":
        return None, off
    raise ValueError("unknown field type %r" % tag)


def _dec_table(buf, off):
    (n,) = struct.unpack_from(">I", buf, off)
    end = off + 4 + n
    off += 4
    out = {}
    while off < end:
        k, off = _dec_shortstr(buf, off)
        v, off = _dec_value(buf, off)
        out[k.decode("utf-8", "replace")] = v
    return out, end


def decode_table(data):
    """Decode a field table (including its 4-octet length prefix)."""
    return _dec_table(data, 0)[0]


# --------------------------------------------------------------------------------------------
# Frame builders
# --------------------------------------------------------------------------------------------

def frame(ftype, channel, payload, frame_end=FRAME_END, size=None):
    """Any frame. `size` overrides the size field (to lie about the payload length) and
    `frame_end` the final octet (to send a bad frame-end)."""
    if size is None:
        size = len(payload)
    return struct.pack(">BHI", ftype, channel, size) + bytes(payload) + octet(frame_end)


def method_payload(class_id, method_id, args=b""):
    return short(class_id) + short(method_id) + bytes(args)


def method_frame(channel, class_id, method_id, args=b"", **kw):
    """A method frame from class id, method id and the already-encoded argument bytes."""
    return frame(FRAME_METHOD, channel, method_payload(class_id, method_id, args), **kw)


# Basic content properties in flag order (bit 15 first) with their encoders.
_BASIC_PROPS = [
    ("content_type", shortstr), ("content_encoding", shortstr), ("headers", table),
    ("delivery_mode", octet), ("priority", octet), ("correlation_id", shortstr),
    ("reply_to", shortstr), ("expiration", shortstr), ("message_id", shortstr),
    ("timestamp", longlong), ("type", shortstr), ("user_id", shortstr),
    ("app_id", shortstr), ("cluster_id", shortstr),
]


def basic_properties(**props):
    """Encode basic properties -> (flags, property bytes). Unknown names raise."""
    flags, out = 0, b""
    names = [n for n, _ in _BASIC_PROPS]
    for k in props:
        if k not in names:
            raise TypeError("unknown basic property %r" % k)
    for i, (name, enc) in enumerate(_BASIC_PROPS):
        if props.get(name) is not None:
            flags |= 1 << (15 - i)
            out += enc(props[name])
    return flags, out


def content_header_frame(channel, body_size, class_id=60, weight=0, flags=None,
                         properties=b"", **props):
    """A content header frame. Either pass basic properties as keyword arguments (e.g.
    delivery_mode=2), or raw `flags` + `properties` bytes."""
    if flags is None:
        flags, properties = basic_properties(**props)
    payload = short(class_id) + short(weight) + longlong(body_size) + short(flags) + properties
    return frame(FRAME_HEADER, channel, payload)


def body_frame(channel, data):
    return frame(FRAME_BODY, channel, data)


def heartbeat_frame(channel=0):
    return frame(FRAME_HEARTBEAT, channel, b"")


# Convenience builders for the methods tests use most. Each returns one complete frame.

def channel_open(channel):
    return method_frame(channel, 20, 10, shortstr(""))  # reserved-1 (out-of-band)


def channel_close(channel, code=200, text="bye", class_id=0, method_id=0):
    return method_frame(channel, 20, 40, short(code) + shortstr(text) + short(class_id) + short(method_id))


def channel_close_ok(channel):
    return method_frame(channel, 20, 41)


def channel_flow(channel, active):
    return method_frame(channel, 20, 20, bits(active))


def connection_close(code=200, text="bye", class_id=0, method_id=0):
    return method_frame(0, 10, 50, short(code) + shortstr(text) + short(class_id) + short(method_id))


def connection_close_ok():
    return method_frame(0, 10, 51)


def queue_declare(channel, name="", passive=False, durable=False, exclusive=False,
                  auto_delete=False, nowait=False, arguments=None):
    args = (short(0) + shortstr(name)
            + bits(passive, durable, exclusive, auto_delete, nowait) + table(arguments))
    return method_frame(channel, 50, 10, args)


def basic_qos(channel, prefetch_size=0, prefetch_count=0, global_=False):
    return method_frame(channel, 60, 10, long_(prefetch_size) + short(prefetch_count) + bits(global_))


def basic_publish(channel, exchange="", routing_key="", mandatory=False, immediate=False):
    return method_frame(channel, 60, 40,
                        short(0) + shortstr(exchange) + shortstr(routing_key) + bits(mandatory, immediate))


def publish_message(channel, body, exchange="", routing_key="", mandatory=False,
                    immediate=False, frame_max=131072, **props):
    """basic.publish + content header + body frame(s), split to fit frame_max."""
    out = basic_publish(channel, exchange, routing_key, mandatory, immediate)
    out += content_header_frame(channel, len(body), **props)
    step = frame_max - 8
    for i in range(0, len(body), step):
        out += body_frame(channel, body[i:i + step])
    return out


def client_properties(capabilities=None, **extra):
    """Client properties table contents for start-ok. By default announces the capabilities
    a modern client (pika, the Java client) sends, including authentication_failure_close."""
    if capabilities is None:
        capabilities = {
            "authentication_failure_close": True,
            "basic.nack": True,
            "connection.blocked": True,
            "consumer_cancel_notify": True,
            "publisher_confirms": True,
        }
    props = {"product": "amqp_raw", "platform": "Python", "version": "0.1",
             "capabilities": capabilities}
    props.update(extra)
    return props


def start_ok(mechanism="PLAIN", response=None, user="guest", password="guest",
             locale="en_US", capabilities=None, properties=None):
    """connection.start-ok. `response` defaults to the PLAIN response \\0user\\0password."""
    if response is None:
        response = b"\x00" + _b(user) + b"\x00" + _b(password)
    if properties is None:
        properties = client_properties(capabilities)
    args = table(properties) + shortstr(mechanism) + longstr(response) + shortstr(locale)
    return method_frame(0, 10, 11, args)


def tune_ok(channel_max=2047, frame_max=131072, heartbeat=0):
    return method_frame(0, 10, 31, short(channel_max) + long_(frame_max) + short(heartbeat))


def connection_open(vhost="/"):
    return method_frame(0, 10, 40, shortstr(vhost) + shortstr("") + bits(False))


# --------------------------------------------------------------------------------------------
# Frame decoding
# --------------------------------------------------------------------------------------------

# A close method's arguments (connection.close 10/50 and channel.close 20/40).
Close = namedtuple("Close", "reply_code reply_text class_id method_id")

# One decoded frame. `type` is 1/2/3/8 (or another int the peer sent), PROTOCOL_HEADER_REPLY or
# GARBAGE. class_id/method_id are set for method frames (class_id also for content headers);
# `close` is a Close for connection.close / channel.close, else None. `payload` is the raw
# payload (for PROTOCOL_HEADER_REPLY / GARBAGE: the raw bytes).
Frame = namedtuple("Frame", "type channel class_id method_id close payload")


def _frame_str(self):
    if self.type == FRAME_METHOD:
        s = "ch%d %s" % (self.channel, method_name(self.class_id, self.method_id))
        if self.close:
            s += " %d %r %d/%d" % self.close
        return s
    return "ch%s type=%s %r" % (self.channel, self.type, bytes(self.payload[:40]))


Frame.__str__ = _frame_str


def decode_close(payload):
    """Arguments of connection.close / channel.close (payload includes class/method ids)."""
    off = 4
    (code,) = struct.unpack_from(">H", payload, off)
    text, off = _dec_shortstr(payload, off + 2)
    cid, mid = struct.unpack_from(">HH", payload, off)
    # surrogateescape: a reply text that is not valid UTF-8 (RabbitMQ can send such, e.g. when it
    # quotes latin-1 payload bytes) keeps its exact bytes: text.encode("utf-8", "surrogateescape")
    return Close(code, text.decode("utf-8", "surrogateescape"), cid, mid)


def decode_frame(ftype, channel, payload):
    class_id = method_id = close = None
    if ftype == FRAME_METHOD and len(payload) >= 4:
        class_id, method_id = struct.unpack_from(">HH", payload, 0)
        if (class_id, method_id) in (CONNECTION_CLOSE, CHANNEL_CLOSE):
            try:
                close = decode_close(payload)
            except (struct.error, IndexError):
                close = Close(None, "<undecodable close %r>" % bytes(payload), None, None)
    elif ftype == FRAME_HEADER and len(payload) >= 2:
        (class_id,) = struct.unpack_from(">H", payload, 0)
    return Frame(ftype, channel, class_id, method_id, close, bytes(payload))


def decode_start(payload):
    """connection.start -> dict(version_major, version_minor, server_properties, mechanisms, locales)."""
    off = 4
    major, minor = payload[off], payload[off + 1]
    props, off = _dec_table(payload, off + 2)
    mechs, off = _dec_longstr(payload, off)
    locales, off = _dec_longstr(payload, off)
    return {"version_major": major, "version_minor": minor, "server_properties": props,
            "mechanisms": mechs.decode(), "locales": locales.decode()}


def decode_tune(payload):
    """connection.tune -> (channel_max, frame_max, heartbeat)."""
    return struct.unpack_from(">HIH", payload, 4)


def is_close(f):
    return f.close is not None


# Bytes received but not yet returned as frames, per socket (read_frames may stop between
# frames in the middle of a recv() buffer; the next call continues from there).
_pending = weakref.WeakKeyDictionary()


def _parse(buf):
    """Split complete frames off the front of buf -> (frames, rest, garbage_seen)."""
    frames = []
    off = 0
    while True:
        if len(buf) - off >= 4 and buf[off:off + 4] == b"AMQP":
            if len(buf) - off < 8:
                break
            frames.append(Frame(PROTOCOL_HEADER_REPLY, None, None, None, None, bytes(buf[off:off + 8])))
            off += 8
            continue
        if len(buf) - off < 7:
            break
        ftype, channel, size = struct.unpack_from(">BHI", buf, off)
        if ftype not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT) or size > 1 << 28:
            frames.append(Frame(GARBAGE, None, None, None, None, bytes(buf[off:])))
            return frames, b"", True
        if len(buf) - off < 7 + size + 1:
            break
        payload = buf[off + 7:off + 7 + size]
        if buf[off + 7 + size] != FRAME_END:
            frames.append(Frame(GARBAGE, None, None, None, None, bytes(buf[off:])))
            return frames, b"", True
        frames.append(decode_frame(ftype, channel, payload))
        off += 8 + size
    return frames, bytes(buf[off:]), False


class ReadResult(object):
    """What read_frames saw.

    frames      -- list of Frame, in arrival order
    eof         -- the peer closed the socket (orderly FIN or a reset)
    reset       -- the close was a TCP reset (ECONNRESET / EPIPE)
    timed_out   -- the timeout expired first (socket still open as far as we know)
    stopped     -- the `until` predicate matched a frame and reading stopped there
    close_first -- a close frame (connection.close or channel.close) arrived before the socket
                   was closed / before the timeout; False for a bare socket close
    """

    def __init__(self):
        self.frames = []
        self.eof = self.reset = self.timed_out = self.stopped = False

    @property
    def close_first(self):
        return any(is_close(f) for f in self.frames)

    @property
    def first_close(self):
        """The first connection.close / channel.close frame, or None."""
        for f in self.frames:
            if is_close(f):
                return f
        return None

    def methods(self):
        return [(f.channel, f.class_id, f.method_id) for f in self.frames if f.type == FRAME_METHOD]

    def find(self, class_id, method_id, channel=None):
        for f in self.frames:
            if f.type == FRAME_METHOD and (f.class_id, f.method_id) == (class_id, method_id) \
                    and (channel is None or f.channel == channel):
                return f
        return None

    def __repr__(self):
        return "ReadResult(eof=%s reset=%s timed_out=%s frames=[%s])" % (
            self.eof, self.reset, self.timed_out, "; ".join(str(f) for f in self.frames))


def read_frames(sock, timeout=3.0, until=None, reply_close_ok=False, skip_heartbeats=True):
    """Read and decode frames until the peer closes the socket or `timeout` seconds pass.

    until          -- optional predicate on a Frame; stop right after the first frame it accepts
                      (unread bytes are kept for the next call on the same socket)
    reply_close_ok -- answer connection.close with connection.close-ok and channel.close with
                      channel.close-ok (so a broker that waits for close-ok closes promptly)
    skip_heartbeats-- do not report heartbeat frames on channel 0

    Returns a ReadResult (frames, eof, reset, timed_out, close_first)."""
    res = ReadResult()
    deadline = time.monotonic() + timeout
    buf = _pending.pop(sock, b"")
    desync = False  # set once unparseable bytes arrived; everything after is reported raw
    while True:
        frames, buf, garbage = _parse(buf)
        desync = desync or garbage
        for i, f in enumerate(frames):
            if skip_heartbeats and f.type == FRAME_HEARTBEAT and f.channel == 0:
                continue
            res.frames.append(f)
            if reply_close_ok and f.type == FRAME_METHOD:
                try:
                    if (f.class_id, f.method_id) == CONNECTION_CLOSE:
                        sock.sendall(connection_close_ok())
                    elif (f.class_id, f.method_id) == CHANNEL_CLOSE:
                        sock.sendall(channel_close_ok(f.channel))
                except OSError:
                    pass
            if until is not None and until(f):
                res.stopped = True
                # keep the frames after this one for the next read
                rest = b"".join(_reencode(g) for g in frames[i + 1:])
                _pending[sock] = rest + buf
                return res
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            res.timed_out = True
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            res.timed_out = True
            break
        except (ConnectionResetError, BrokenPipeError):
            res.eof = res.reset = True
            break
        if not data:
            res.eof = True
            break
        if desync:
            # cannot resynchronise after garbage; report what follows raw until EOF
            res.frames.append(Frame(GARBAGE, None, None, None, None, data))
            continue
        buf += data
    if buf and res.timed_out:
        _pending[sock] = buf  # a partial frame: the next call may complete it
    elif buf:
        # the peer closed in the middle of a frame: report the stub
        res.frames.append(Frame(GARBAGE, None, None, None, None, bytes(buf)))
    return res


def _reencode(f):
    if f.type == PROTOCOL_HEADER_REPLY or f.type == GARBAGE:
        return f.payload
    return frame(f.type, f.channel, f.payload)


# --------------------------------------------------------------------------------------------
# Connection set-up
# --------------------------------------------------------------------------------------------

class HandshakeError(Exception):
    """The broker did not answer the handshake as expected. `.result` is the ReadResult."""

    def __init__(self, msg, result):
        Exception.__init__(self, "%s: %r" % (msg, result))
        self.result = result


def connect(port, host="127.0.0.1", timeout=3.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def expect_method(sock, class_id, method_id, channel=None, timeout=3.0):
    """Read until the given method arrives (returns its Frame); raise HandshakeError if a close,
    EOF or the timeout comes first."""
    res = read_frames(sock, timeout, until=lambda f: f.type == FRAME_METHOD and (
        (f.class_id, f.method_id) == (class_id, method_id) or is_close(f)))
    f = res.frames[-1] if res.stopped else None
    if f is None or is_close(f) or (channel is not None and f.channel != channel):
        raise HandshakeError("expected %s" % method_name(class_id, method_id), res)
    return f


def handshake(sock, vhost="/", heartbeat=0, frame_max=131072, channel_max=2047,
              user="guest", password="guest", capabilities=None, timeout=3.0):
    """Protocol header -> connection.start -> start-ok (PLAIN, client capabilities incl.
    authentication_failure_close=true) -> connection.tune -> tune-ok(channel_max, frame_max,
    heartbeat) -> connection.open(vhost) -> connection.open-ok.

    Returns dict(start=decode_start(...), tune=(channel_max, frame_max, heartbeat) offered by the
    server). Raises HandshakeError when any step gets something else."""
    sock.sendall(PROTOCOL_HEADER)
    start = decode_start(expect_method(sock, 10, 10, timeout=timeout).payload)
    sock.sendall(start_ok(user=user, password=password, capabilities=capabilities))
    tune = decode_tune(expect_method(sock, 10, 30, timeout=timeout).payload)
    sock.sendall(tune_ok(channel_max, frame_max, heartbeat) + connection_open(vhost))
    expect_method(sock, 10, 41, timeout=timeout)
    return {"start": start, "tune": tune}


def open_channel(sock, channel=1, timeout=3.0):
    """channel.open on `channel` and wait for channel.open-ok."""
    sock.sendall(channel_open(channel))
    return expect_method(sock, 20, 11, channel=channel, timeout=timeout)


def close_connection(sock, timeout=1.0):
    """Best-effort polite close: connection.close, wait briefly for close-ok, close the socket."""
    try:
        sock.sendall(connection_close())
        read_frames(sock, timeout, until=lambda f: (f.class_id, f.method_id) == CONNECTION_CLOSE_OK
                    and f.type == FRAME_METHOD)
    except OSError:
        pass
    finally:
        sock.close()
