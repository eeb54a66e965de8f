"""A hostile AMQP 1.0 application user, for Ferry's noisy-neighbour story (issue 15).

It speaks AMQP by hand over a raw socket (frames encoded below, decoded with Qpid Proton's codec), because
what it does is what no client library lets an application do: grant huge credit and never read, attach
a thousand links on one connection, send a disposition spanning all 2^32 delivery ids.

Usage (HOST PORT of the router; every mode runs until STOP_FILE exists or SECONDS have passed):
  amqp_flooder.py stall HOST PORT USER PASSWORD ADDRESS STOP_FILE SECONDS
      attach a receiver to ADDRESS (pre-settled: nothing unsettled to bound it), grant credit 2^31-1 and a
      huge session window, never read again
  amqp_flooder.py links HOST PORT USER PASSWORD TENANT STOP_FILE SECONDS
      open connections up to the user's cap (and one more, which must be refused) and attach thousands of
      receivers: 1,024 on telemetry/TENANT, on event/TENANT and on command_response/TENANT/<id> each
      connection (one more per connection, beyond the links-per-connection cap), and hold them
  amqp_flooder.py churn HOST PORT USER PASSWORD TENANT STOP_FILE SECONDS
      attach and detach receivers on command_response/TENANT/<random reply id> in a loop (64 at a time,
      and now and then one with an over-long reply id)
  amqp_flooder.py guess HOST PORT USER PASSWORD TENANT STOP_FILE SECONDS
      log in with wrong passwords (USER's and random names) as fast as the router answers, 4 at a time
  amqp_flooder.py disposition HOST PORT USER PASSWORD TENANT STOP_FILE SECONDS
      attach a receiver, then send dispositions role=receiver first=1,last=0 and first=0,last=2^32-1 in a
      loop; each unsettled one must be answered (the router settles the range) before the next is sent

The flooder's sockets come from 127.0.0.2 (FLOOD_SOURCE), another host as far as the router can tell.
Prints one JSON object a line: {"ready": {...}} once the attack is in place, {"done": {...}} with its
counts at the end, {"error": "..."} when the router did something unexpected (then exits 1).
"""
import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time

from proton import Data

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SOURCE = os.environ.get("FLOOD_SOURCE", "127.0.0.2")

# Performative descriptors.
OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
SASL_MECHANISMS, SASL_INIT, SASL_OUTCOME = 0x40, 0x41, 0x44


def emit(**kw):
    print(json.dumps(kw), flush=True)


def fail(what):
    emit(error=what)
    sys.stdout.flush()
    os._exit(1)


# --- encoding -------------------------------------------------------------------------------------

NULL = b"\x40"


def boolean(v):
    return b"\x41" if v else b"\x42"


def uint(v):
    return b"\x70" + struct.pack(">I", v)


def ubyte(v):
    return b"\x50" + struct.pack(">B", v)


def ushort(v):
    return b"\x60" + struct.pack(">H", v)


def string(s):
    b = s.encode()
    return (b"\xa1" + struct.pack(">B", len(b)) if len(b) < 256 else b"\xb1" + struct.pack(">I", len(b))) + b


def symbol(s):
    b = s.encode()
    return b"\xa3" + struct.pack(">B", len(b)) + b


def binary(b):
    return b"\xb0" + struct.pack(">I", len(b)) + b


def described(code, fields):
    body = b"".join(fields)
    return b"\x00\x53" + struct.pack(">B", code) + b"\xd0" + struct.pack(">II", len(body) + 4, len(fields)) + body


def frame(body, channel=0, kind=0):
    return struct.pack(">IBBH", 8 + len(body), 2, kind, channel) + body


def open_frame():
    return frame(described(OPEN, [string("ferry-flooder-%d" % os.getpid()), NULL, uint(65536), ushort(255)]))


def begin(channel=0):
    # A huge incoming window: the router may send as much as it likes.
    return frame(described(BEGIN, [NULL, uint(0), uint(0x7FFFFFFF), uint(2048), uint(1023)]), channel)


def attach_receiver(handle, address, channel=0, settled=False):
    """A receiving link; `settled`: the router is to send pre-settled (nothing left unsettled to count)."""
    source = described(0x28, [string(address)])
    target = described(0x29, [NULL])
    return frame(described(ATTACH, [string("flood-%d-%d" % (channel, handle)), uint(handle), boolean(True),
                                    ubyte(1 if settled else 0), ubyte(0), source, target]), channel)


def flow(handle, credit):
    return frame(described(FLOW, [uint(0), uint(0x7FFFFFFF), uint(0), uint(2048), uint(handle), uint(0),
                                  uint(credit)]))


def detach(handle):
    return frame(described(DETACH, [uint(handle), boolean(True)]))


def disposition(first, last, settled):
    return frame(described(DISPOSITION, [boolean(True), uint(first), uint(last), boolean(settled)]))


# --- decoding -------------------------------------------------------------------------------------

class Conn:
    """One connection: a socket from SOURCE and a buffer of what was read."""

    def __init__(self, host, port, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((SOURCE, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            return False
        self.buf += chunk
        return True

    def exact(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            got = self._fill(max(0.001, deadline - time.monotonic()))
            if not got:
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self, timeout=10):
        """(descriptor code, fields) of the next non-empty frame; None on timeout or close."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.exact(8, max(0.001, deadline - time.monotonic()))
            if head is None:
                return None
            size, doff = struct.unpack(">IB", head[:5])
            rest = self.exact(size - 8, max(0.001, deadline - time.monotonic()))
            if rest is None:
                return None
            body = rest[doff * 4 - 8:]
            if not body:
                continue  # heartbeat
            d = Data()
            n = d.decode(body)
            d.rewind()
            d.next()
            obj = d.get_object()
            return int(obj.descriptor), list(obj.value or [])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def condition(fields, index):
    """The condition symbol of an error field (detach: 2, close: 0)."""
    if len(fields) > index and fields[index] is not None:
        err = fields[index]
        return str(err.value[0]) if hasattr(err, "value") else str(err)
    return None


def sasl_plain(conn, user, password):
    """SASL PLAIN; the outcome code (0 ok), or None when the router closed or said nothing."""
    conn.send(SASL_HEADER)
    if conn.exact(8) != SASL_HEADER:
        return None
    got = conn.frame()
    if got is None or got[0] != SASL_MECHANISMS:
        return None
    init = described(SASL_INIT, [symbol("PLAIN"), binary(b"\0" + user.encode() + b"\0" + password.encode())])
    conn.send(frame(init, kind=1))
    got = conn.frame(30)
    if got is None or got[0] != SASL_OUTCOME:
        return None
    return int(got[1][0])


def login(host, port, user, password, rcvbuf=None):
    """(a connection through SASL, open and begin, None); (None, close condition) when the router closed it
    after open (e.g. amqp:resource-limit-exceeded past the user's connection cap)."""
    conn = Conn(host, port, rcvbuf)
    if sasl_plain(conn, user, password) != 0:
        fail("login of %s refused" % user)
    try:
        conn.send(AMQP_HEADER)
        if conn.exact(8) != AMQP_HEADER:
            return None, "no AMQP header"
        conn.send(open_frame() + begin())
        while True:
            got = conn.frame()
            if got is None:
                return None, "closed without close"
            if got[0] == CLOSE:
                conn.close()
                return None, condition(got[1], 0)
            if got[0] == BEGIN:
                return conn, None
    except OSError as e:
        conn.close()
        return None, str(e)


class Stop:
    def __init__(self, stop_file, seconds):
        self.stop_file, self.deadline = stop_file, time.monotonic() + float(seconds)

    def __call__(self):
        return os.path.exists(self.stop_file) or time.monotonic() > self.deadline

    def wait(self):
        while not self():
            time.sleep(0.05)


# --- the attacks ----------------------------------------------------------------------------------

def stall(host, port, user, password, address, stop_file, seconds):
    stop = Stop(stop_file, seconds)
    # A small receive buffer: the kernel takes little before the router must hold the rest.
    conn, _ = login(host, port, user, password, rcvbuf=4096)
    if conn is None:
        fail("stall: no connection")
    conn.send(attach_receiver(0, address, settled=True))
    got = conn.frame()
    if got is None or got[0] != ATTACH or got[1][5] is None:
        fail("stall: attach to %s answered %r" % (address, got))
    conn.send(flow(0, 0x7FFFFFFF))
    emit(ready={"stalled": address, "credit": 0x7FFFFFFF})
    stop.wait()  # and never read again
    import fcntl
    import termios
    queued = struct.unpack("I", fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    emit(done={"unread_bytes": len(conn.buf) + queued})
    conn.close()


def links(host, port, user, password, tenant, stop_file, seconds):
    stop = Stop(stop_file, seconds)
    addresses = ["telemetry/%s" % tenant, "event/%s" % tenant, None, None]
    conns, attached, refused, conditions = [], 0, 0, {}
    for i, address in enumerate(addresses):
        conn, why = login(host, port, user, password)
        if conn is None:
            fail("links: connection %d refused (%s)" % (i, why))
        conns.append(conn)
        out = []
        for h in range(1024):
            out.append(attach_receiver(h, address or "command_response/%s/flood-%d-%d" % (tenant, i, h)))
        # One more on a second session: beyond the links-per-connection cap.
        out.append(frame(described(BEGIN, [NULL, uint(0), uint(2048), uint(2048), uint(1023)]), 1))
        out.append(attach_receiver(0, address or "command_response/%s/flood-%d-x" % (tenant, i), 1))
        conn.send(b"".join(out))
        answered = 0
        while answered < 1025:
            got = conn.frame(20)
            if got is None:
                fail("links: connection %d closed or silent after %d answers" % (i, answered))
            code, fields = got
            if code == ATTACH and fields[5] is None:
                continue  # a refused attach: its detach follows
            if code == ATTACH:
                attached += 1
                answered += 1
            elif code == DETACH:
                refused += 1
                answered += 1
                c = condition(fields, 2)
                conditions[c] = conditions.get(c, 0) + 1
            elif code == CLOSE:
                fail("links: connection %d closed: %r" % (i, fields))
    # More connections with nothing on them, up to the user's cap and one beyond.
    open_conns, refused_conns = len(conns), 0
    while open_conns < 100 and not stop():
        conn, why = login(host, port, user, password)
        if conn is None:
            fail("links: connection %d refused below the cap (%s)" % (open_conns, why))
        conns.append(conn)
        open_conns += 1
    extra, refused_why = login(host, port, user, password)
    if extra is None:
        refused_conns += 1
    else:
        conns.append(extra)
        open_conns += 1
    emit(ready={"links": attached, "refused_links": refused, "conditions": conditions,
                "connections": open_conns, "refused_connections": refused_conns,
                "refused_connection_condition": refused_why})
    # Hold everything; answer nothing but keep the sockets drained so heartbeats do not pile up.
    while not stop():
        readable, _, _ = select.select([c.sock for c in conns], [], [], 0.2)
        for s in readable:
            try:
                s.recv(65536)
            except OSError:
                pass
    emit(done={"links": attached, "connections": open_conns})
    for c in conns:
        c.close()


def churn(host, port, user, password, tenant, stop_file, seconds):
    stop = Stop(stop_file, seconds)
    conn, why = login(host, port, user, password)
    if conn is None:
        fail("churn: no connection (%s)" % why)
    emit(ready={"churn": "command_response/%s/<random>" % tenant})
    cycles = attaches = refused_long = 0
    while not stop():
        batch = b""
        for h in range(64):
            reply = "%016x" % random.getrandbits(64)
            if h == 63 and cycles % 8 == 0:
                reply = "x" * 300  # over the reply id cap
            batch += attach_receiver(h, "command_response/%s/%s" % (tenant, reply))
        conn.send(batch)
        answered, detached = 0, set()
        while answered < 64:
            got = conn.frame()
            if got is None:
                fail("churn: the router stopped answering attaches after %d cycles" % cycles)
            code, fields = got
            if code == ATTACH and fields[5] is not None:
                answered += 1
                attaches += 1
            elif code == DETACH:
                answered += 1
                refused_long += 1
                detached.add(int(fields[0]))
            elif code == CLOSE:
                fail("churn: connection closed: %r" % fields)
        conn.send(b"".join(detach(h) for h in range(64) if h not in detached))
        waiting = 64 - len(detached)
        while waiting:
            got = conn.frame()
            if got is None:
                fail("churn: the router stopped answering detaches after %d cycles" % cycles)
            if got[0] == DETACH:
                waiting -= 1
        cycles += 1
    emit(done={"cycles": cycles, "attaches": attaches, "refused_long_ids": refused_long})
    conn.close()


def guess(host, port, user, password, tenant, stop_file, seconds):
    stop = Stop(stop_file, seconds)
    counts = {"attempts": 0, "refused": 0, "other": 0}
    lock = threading.Lock()

    def worker(n):
        while not stop():
            name = user if n % 2 == 0 else "nobody-%d" % random.getrandbits(32)
            try:
                conn = Conn(host, port)
                code = sasl_plain(conn, name, "wrong-%d" % random.getrandbits(32))
                conn.close()
            except OSError:
                code = None
            with lock:
                counts["attempts"] += 1
                counts["refused" if code == 1 else "other"] += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    emit(ready={"guessing": user})
    for t in threads:
        t.join()
    emit(done=counts)


def dispositions(host, port, user, password, tenant, stop_file, seconds):
    stop = Stop(stop_file, seconds)
    conn, why = login(host, port, user, password)
    if conn is None:
        fail("disposition: no connection (%s)" % why)
    conn.send(attach_receiver(0, "command_response/%s/dispositions" % tenant))
    got = conn.frame()
    if got is None or got[0] != ATTACH:
        fail("disposition: attach answered %r" % (got,))
    emit(ready={"disposition": "first=1,last=0 and first=0,last=4294967295"})
    sent = answered = 0
    ranges = [(1, 0), (0, 0xFFFFFFFF)]
    while not stop():
        first, last = ranges[sent % 2]
        conn.send(disposition(first, last, True) + disposition(first, last, False))
        sent += 2
        while True:
            got = conn.frame(10)
            if got is None:
                fail("disposition: no answer to %d..%d within 10 s (after %d)" % (first, last, answered))
            if got[0] == DISPOSITION:
                answered += 1
                break
            if got[0] == CLOSE:
                fail("disposition: connection closed: %r" % got[1])
    emit(done={"sent": sent, "answered": answered})
    conn.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"stall": stall, "links": links, "churn": churn, "guess": guess, "disposition": dispositions}[mode](*args)
