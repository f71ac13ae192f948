"""Instrument simulators that live in the tests: line-based devices on a real
pseudo-terminal or a loopback TCP socket, with switchable faults."""

import os
import pty
import random
import select
import socket
import threading
import time
import tty


class LakeShoreSim:
    """A LakeShore-336-like temperature controller.

    Commands: *IDN?, KRDG? <ch>, SETP <loop>,<v>, SETP? <loop>, RANGE <loop>,<n>,
    RANGE? <loop>, HTR? <loop>, STOP, LABEL <text>, LABEL?.  Input A follows setpoint 1 at `rate` K/s.
    `replies` maps further commands (as sent, e.g. "MODEL?") to fixed answers.
    Faults: `stall` (no answer), `garble` (nonsense answers), `late` (answers after
    `late_delay` seconds), `garble_rate` (the probability that an answer is garbled,
    drawn from random.Random(`seed`); see `garbled`).

    Every line received is in `requests`; every exchange, as (line, bytes sent or None),
    in `exchanges` (one per line received, also for lines without an answer and while
    stalled); `garbled_count` counts the garbled answers sent.
    """

    def __init__(self, rate=50.0, temperature=295.0, garble_rate=0.0, seed=1, replies=None):
        self.lock = threading.Lock()
        self.temperature = temperature
        self.setpoint = temperature
        self.rate = rate
        self.range = 0
        self.label = ""
        self.last = time.monotonic()
        self.stall = False
        self.garble = False
        self.late = False
        self.late_delay = 2.0
        self.garble_rate = garble_rate
        self.random = random.Random(seed)
        self.replies = dict(replies or {})
        self.requests = []
        self.exchanges = []
        self.garbled_count = 0

    def _advance(self):
        now = time.monotonic()
        dt = now - self.last
        self.last = now
        step = self.rate * dt
        diff = self.setpoint - self.temperature
        self.temperature += max(-step, min(step, diff))

    def garbled(self, reply):
        """`reply` as a device with a bad cable might send it: bytes that are no
        ASCII (invalid UTF-8, like b"\\xff0") in place of its first character or in its
        middle, or a number cut off after its sign ("+"). Never a line terminator, and
        never another valid number."""
        raw = reply.encode()
        kind = self.random.randrange(3)
        if kind == 2 and raw[:1] in (b"+", b"-"):
            return raw[:1]
        if kind == 1 and len(raw) >= 2:
            mid = len(raw) // 2
            return raw[:mid] + b"\xfe\x80" + raw[mid:]
        return b"\xff" + raw[1:]

    def answer(self, line):
        """Reply to one command line (str, or bytes when garbled), or None for commands
        without a reply."""
        with self.lock:
            self.requests.append(line)
            self._advance()
            reply = self._reply(line)
            if reply is not None and self.garble_rate > 0 and \
                    self.random.random() < self.garble_rate:
                self.garbled_count += 1
                return self.garbled(reply)
            return reply

    def record(self, line, sent):
        """One exchange: the line received and the bytes answered (None: no answer)."""
        self.exchanges.append((line, sent))

    def _reply(self, line):
        if self.garble:
            return "#?!ERR"
        if line.strip() in self.replies:
            return self.replies[line.strip()]
        cmd, _, arg = line.strip().partition(" ")
        cmd = cmd.upper()
        if cmd == "*IDN?":
            return "LSCI,MODEL336,SIM0001,1.0"
        if cmd == "KRDG?":
            return f"+{self.temperature:.4f}" if arg.strip().upper() == "A" else "+0.0000"
        if cmd == "SETP":
            _, _, value = arg.partition(",")
            self.setpoint = float(value)
            return None
        if cmd == "SETP?":
            return f"+{self.setpoint:.4f}"
        if cmd == "RANGE":
            _, _, value = arg.partition(",")
            self.range = int(value)
            return None
        if cmd == "RANGE?":
            return str(self.range)
        if cmd == "HTR?":
            return f"+{min(100.0, abs(self.setpoint - self.temperature) * 10):.2f}"
        if cmd == "STOP":
            self.setpoint = self.temperature
            return None
        if cmd == "LABEL":
            self.label = arg
            return None
        if cmd == "LABEL?":
            return self.label
        return "?"


class _Server:
    """Reads lines from `read`, writes answers with `write`, in a thread. Lines end with
    `terminator`, answers with `reply_terminator` (default: the same). Every byte read
    is kept in `received`, also bytes that never formed a complete line."""

    def __init__(self, instrument, terminator=b"\r\n", reply_terminator=None):
        self.instrument = instrument
        self.terminator = terminator
        self.reply_terminator = terminator if reply_terminator is None else reply_terminator
        self.received = bytearray()
        self.stopped = threading.Event()
        self.thread = None

    def _serve(self, read, write, wait_readable):
        buf = b""
        while not self.stopped.is_set():
            if not wait_readable(0.1):
                continue
            try:
                data = read()
            except OSError:
                return
            if not data:
                return
            self.received += data
            buf += data
            while self.terminator in buf:
                line, buf = buf.split(self.terminator, 1)
                text = line.decode("ascii", "replace")
                reply = self.instrument.answer(text)
                record = getattr(self.instrument, "record", None)
                if reply is None or self.instrument.stall:
                    if record:
                        record(text, None)
                    continue
                if self.instrument.late:
                    time.sleep(self.instrument.late_delay)
                # a garbled reply is bytes already, sent as it is
                data = reply if isinstance(reply, bytes) else reply.encode()
                if record:
                    record(text, data)
                try:
                    write(data + self.reply_terminator)
                except OSError:
                    return


class PtyInstrument(_Server):
    """The instrument on the master side of a pty; the gateway opens `path`, a stable
    symlink to the slave, so a restarted instrument is found at the same path."""

    def __init__(self, instrument, path, terminator=b"\r\n", reply_terminator=None):
        super().__init__(instrument, terminator, reply_terminator)
        self.path = path
        self.master = None
        self.slave = None

    def start(self):
        self.stopped.clear()
        self.master, self.slave = pty.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        name = os.ttyname(self.slave)
        tmp = self.path + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(name, tmp)
        os.replace(tmp, self.path)
        master = self.master

        def wait(t):
            return bool(select.select([master], [], [], t)[0])

        def read():
            return os.read(master, 4096)

        def write(b):
            os.write(master, b)

        self.thread = threading.Thread(target=self._serve, args=(read, write, wait), daemon=True)
        self.thread.start()
        return self

    def stop(self):
        """Pull the cable: close both ends of the pty."""
        self.stopped.set()
        if self.thread:
            self.thread.join(timeout=2)
        for fd in (self.master, self.slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = None


class TcpInstrument(_Server):
    """The instrument as a LAN device: a TCP server on 127.0.0.1 (one client)."""

    def __init__(self, instrument, port=0, terminator=b"\r\n"):
        super().__init__(instrument, terminator)
        self.port = port
        self.listener = None

    def start(self):
        self.stopped.clear()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self):
        while not self.stopped.is_set():
            if not select.select([self.listener], [], [], 0.1)[0]:
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                def wait(t, c=conn):
                    return bool(select.select([c], [], [], t)[0])

                self._serve(lambda c=conn: c.recv(4096), conn.sendall, wait)

    def stop(self):
        self.stopped.set()
        if self.thread:
            self.thread.join(timeout=3)
        if self.listener:
            self.listener.close()
