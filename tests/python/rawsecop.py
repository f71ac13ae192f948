"""A raw SECoP line client for tests: send a request, get its reply, wait for events."""

import json
import socket
import time

WAIT = 5.0


class Line:
    """A raw SECoP client."""

    def __init__(self, gw):
        self.sock = socket.create_connection((gw.host, gw.port), timeout=WAIT)
        self.buf = b''

    def send(self, line):
        self.sock.sendall(line.encode() + b'\n')

    def line(self, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while b'\n' not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return line.decode()

    def ask(self, request, timeout=WAIT):
        """The reply to `request` (events before it are skipped)."""
        self.send(request)
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            assert line is not None, f'no reply to {request!r}'
            if not line.startswith(('update ', 'error_update ', 'log ')):
                return line

    def wait_for(self, prefix, timeout=WAIT):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f'no {prefix!r} within {timeout} s; saw {seen[-5:]}')

    def wait_for_all(self, prefixes, timeout=WAIT):
        """Wait until a line starting with each prefix arrived, in any order; the
        matching lines by prefix."""
        deadline = time.monotonic() + timeout
        found, seen = {}, []
        while len(found) < len(prefixes) and time.monotonic() < deadline:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            seen.append(line)
            for prefix in prefixes:
                if prefix not in found and line.startswith(prefix):
                    found[prefix] = line
        missing = [p for p in prefixes if p not in found]
        if missing:
            raise AssertionError(f'no {missing!r} within {timeout} s; saw {seen[-5:]}')
        return found

    def close(self):
        self.sock.close()


def value_of(line):
    import json
    return json.loads(line.split(' ', 2)[2])[0]


class Recorder:
    """A raw SECoP client that keeps every byte the gateway sends: a thread reads all
    the time (the gateway is never held up by a slow test), lines are kept with their
    arrival time (time.monotonic()), and `raw` holds the bytes exactly as received, so
    a test can check that no byte >= 0x80 ever arrived."""

    def __init__(self, gw):
        import threading
        self.sock = socket.create_connection((gw.host, gw.port), timeout=WAIT)
        self.sock.settimeout(0.2)
        self.raw = bytearray()
        self.entries = []          # (arrival time, line as bytes, without the LF)
        self.cond = threading.Condition()
        self.closed = False
        self._buf = b''
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            now = time.monotonic()
            with self.cond:
                self.raw += data
                self._buf += data
                while b'\n' in self._buf:
                    line, self._buf = self._buf.split(b'\n', 1)
                    self.entries.append((now, line))
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def send(self, line):
        self.sock.sendall(line.encode() + b'\n')

    def mark(self):
        """the index of the next line to arrive (for lines(since=...))"""
        with self.cond:
            return len(self.entries)

    def lines(self, since=0):
        """(arrival time, text) of the lines from index `since` on; bytes that are not
        UTF-8 show as U+FFFD here (check `raw` for the bytes themselves)"""
        with self.cond:
            entries = self.entries[since:]
        return [(t, line.decode('utf-8', 'replace')) for t, line in entries]

    def raw_lines(self, since=0):
        """the lines from index `since` on, as the bytes received"""
        with self.cond:
            return [line for _, line in self.entries[since:]]

    def wait_for(self, match, since=0, timeout=WAIT):
        """the first line from index `since` on that starts with `match` (a string) or
        for which `match(line)` holds: (index, arrival time, text); AssertionError after
        `timeout`"""
        test = match if callable(match) else (lambda text: text.startswith(match))
        deadline = time.monotonic() + timeout
        i = since
        with self.cond:
            while True:
                while i < len(self.entries):
                    t, line = self.entries[i]
                    text = line.decode('utf-8', 'replace')
                    if test(text):
                        return i, t, text
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    seen = [l.decode('utf-8', 'replace') for _, l in self.entries[-5:]]
                    raise AssertionError(f'no line {match!r} within {timeout} s; last: {seen}')
                self.cond.wait(left)

    def ask(self, request, timeout=WAIT):
        """the reply to `request` (the first line after it that is no event)"""
        since = self.mark()
        self.send(request)
        _, _, line = self.wait_for(
            lambda text: not text.startswith(('update ', 'error_update ', 'log ')),
            since, timeout)
        return line

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(2)
