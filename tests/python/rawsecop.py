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
