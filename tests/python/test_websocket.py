"""SECoP over WebSocket (RFC-107) on the gateway's one port, next to raw SECoP over TCP.

Clients: the `websockets` package (a real, strict RFC 6455 client) for everything a normal
client does, and a small hand-written client on a raw socket (RawWebSocket) for what a good
client never does: wrong handshakes, frames announcing 1 GiB, invalid UTF-8, never answering
pings. Raw SECoP over TCP is spoken with LineClient.

Everything runs on loopback; every wait is bounded (WAIT seconds unless said otherwise).
"""

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import struct
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.timeout(120)   # safety net only; every wait below is bounded

WAIT = 5.0                        # s for any expected reply, update or close frame
IDN = 'ISSE,SECoP,,v2.0'
MAX_MESSAGE = 4096                # [listen.websocket] max_message_bytes of the shared gateway
EVIL_ORIGIN = 'http://evil.example'
TRUSTED_ORIGIN = 'http://trusted.example:8080'

# close codes (RFC 6455 7.4.1)
GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED_DATA, INVALID_DATA, TOO_BIG = \
    1001, 1002, 1003, 1007, 1009

# opcodes
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@pytest.fixture(scope='module')
def ws_gateway(start_module_gateway, make_config):
    """the gateway shared by most tests here: default origin policy and pings, small
    max_message_bytes"""
    return start_module_gateway(make_config(websocket={'max_message_bytes': MAX_MESSAGE}),
                                name='ws')


def ws_url(gw, path='/ws'):
    return f'ws://{gw.host}:{gw.port}{path}'


def ws_connect(gw, path='/ws', **kwargs):
    """websockets client; no proxy, no compression offer unless asked"""
    kwargs.setdefault('compression', None)
    kwargs.setdefault('open_timeout', WAIT)
    kwargs.setdefault('close_timeout', WAIT)
    return connect(ws_url(gw, path), proxy=None, **kwargs)


def run(coro, timeout=60.0):
    """run a coroutine of a test, bounded"""
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


def split_message(line):
    """'update m:p [..]' -> ('update', 'm:p', parsed data or None)"""
    parts = line.split(' ', 2)
    action = parts[0]
    spec = parts[1] if len(parts) > 1 else ''
    data = json.loads(parts[2]) if len(parts) > 2 else None
    return action, spec, data


async def ws_recv(ws, timeout=WAIT):
    """the next SECoP message over WebSocket; every one is a str without trailing LF"""
    try:
        message = await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        raise AssertionError(f'no WebSocket message within {timeout:.1f} s') from None
    assert isinstance(message, str), f'SECoP must come in TEXT frames, got {message!r}'
    assert not message.endswith('\n'), f'WebSocket replies carry no LF: {message!r}'
    return message


async def ws_recv_until(ws, predicate, timeout=WAIT):
    """messages received until (and including) the first one matching predicate"""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f'no matching message within {timeout} s; got {seen}')
        try:
            seen.append(await ws_recv(ws, left))
        except AssertionError as e:
            raise AssertionError(f'{e}; before: {seen}') from None
        if predicate(seen[-1]):
            return seen


async def ws_request(ws, request, timeout=WAIT):
    await ws.send(request)
    return await ws_recv(ws, timeout)


class LineClient:
    """raw SECoP over TCP: one request line, LF-terminated lines back"""

    def __init__(self, gw):
        self.sock = socket.create_connection((gw.host, gw.port), timeout=WAIT)
        self.buffer = b''

    def send(self, line):
        self.sock.sendall(line.encode() + b'\n')

    def read_line(self, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while b'\n' not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f'no line within {timeout} s (have {self.buffer[:200]!r})')
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise AssertionError('gateway closed the TCP connection')
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b'\n')
        return line.decode()

    def read_until(self, predicate, timeout=WAIT):
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f'no matching line within {timeout} s; got {seen}')
            seen.append(self.read_line(left))
            if predicate(seen[-1]):
                return seen

    def request(self, line, timeout=WAIT):
        self.send(line)
        return self.read_line(timeout)

    def close(self):
        self.sock.close()


def websocket_key():
    return base64.b64encode(os.urandom(16)).decode()


class RawWebSocket:
    """a hand-written WebSocket client on a plain socket, for what good clients never do"""

    def __init__(self, gw, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect((gw.host, gw.port))
        self.gw = gw
        self.buffer = b''
        self.eof = False

    # --- HTTP

    def send_request(self, path='/ws', headers=None, upgrade=True):
        """a handwritten GET; headers: name -> value, None leaves a default header out"""
        all_headers = {'Host': f'{self.gw.host}:{self.gw.port}'}
        if upgrade:
            all_headers.update({'Upgrade': 'websocket', 'Connection': 'Upgrade',
                                'Sec-WebSocket-Key': websocket_key(),
                                'Sec-WebSocket-Version': '13'})
        else:
            all_headers['Connection'] = 'close'
        all_headers.update(headers or {})
        head = f'GET {path} HTTP/1.1\r\n' + ''.join(
            f'{k}: {v}\r\n' for k, v in all_headers.items() if v is not None) + '\r\n'
        self.sock.sendall(head.encode())

    def read_response(self, timeout=WAIT):
        """(status, {lowercased header: value}, body); the body only as far as
        Content-Length says (nothing for 101)"""
        deadline = time.monotonic() + timeout
        while b'\r\n\r\n' not in self.buffer:
            self._fill(deadline, f'HTTP response head (have {self.buffer!r})')
        head, _, self.buffer = self.buffer.partition(b'\r\n\r\n')
        status_line, *header_lines = head.decode('latin-1').split('\r\n')
        status = int(status_line.split(' ')[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(':')
            headers[name.strip().lower()] = value.strip()
        body = b''
        if status != 101:
            length = int(headers.get('content-length', '0'))
            while len(self.buffer) < length:
                self._fill(deadline, 'HTTP body')
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def handshake(self, path='/ws'):
        self.send_request(path)
        status, headers, _ = self.read_response()
        assert status == 101, f'upgrade refused: {status} {headers}'
        return headers

    # --- frames

    def _fill(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f'timed out waiting for {what}')
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f'timed out waiting for {what}') from None
        except ConnectionResetError:
            chunk = b''
        if not chunk:
            self.eof = True
            raise EOFError(what)
        self.buffer += chunk

    @staticmethod
    def frame_header(opcode, length, fin=True, mask_key=b'\x11\x22\x33\x44'):
        """a client frame header (masked) announcing `length` payload bytes"""
        first = (0x80 if fin else 0) | opcode
        if length < 126:
            header = struct.pack('!BB', first, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack('!BBH', first, 0x80 | 126, length)
        else:
            header = struct.pack('!BBQ', first, 0x80 | 127, length)
        return header + mask_key

    @staticmethod
    def mask(payload, mask_key=b'\x11\x22\x33\x44'):
        return bytes(b ^ mask_key[i % 4] for i, b in enumerate(payload))

    def send_frame(self, opcode, payload=b'', fin=True):
        self.sock.sendall(self.frame_header(opcode, len(payload), fin) + self.mask(payload))

    def read_frame(self, timeout=WAIT):
        """(opcode, payload) of the next server frame; EOFError when the connection ends"""
        deadline = time.monotonic() + timeout
        while len(self.buffer) < 2:
            self._fill(deadline, 'frame header')
        first, second = self.buffer[0], self.buffer[1]
        assert not second & 0x80, 'server frames must not be masked'
        length, offset = second & 0x7f, 2
        if length == 126:
            while len(self.buffer) < 4:
                self._fill(deadline, 'frame header')
            length, offset = struct.unpack('!H', self.buffer[2:4])[0], 4
        elif length == 127:
            while len(self.buffer) < 10:
                self._fill(deadline, 'frame header')
            length, offset = struct.unpack('!Q', self.buffer[2:10])[0], 10
        while len(self.buffer) < offset + length:
            self._fill(deadline, 'frame payload')
        payload = self.buffer[offset:offset + length]
        self.buffer = self.buffer[offset + length:]
        return first & 0x0f, payload

    def read_close(self, timeout=WAIT, answer_pings=True):
        """read until a close frame: (code or None, frames before it)"""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            opcode, payload = self.read_frame(max(deadline - time.monotonic(), 0.001))
            if opcode == CLOSE:
                code = struct.unpack('!H', payload[:2])[0] if len(payload) >= 2 else None
                return code, before
            if opcode == PING and answer_pings:
                self.send_frame(PONG, payload)
            before.append((opcode, payload))

    def wait_eof(self, timeout=WAIT):
        """True if the gateway closes the TCP connection within timeout"""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline, 'end of connection')
                self.buffer = b''
        except EOFError:
            return True
        except AssertionError:
            return False

    def close(self):
        self.sock.close()


def rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS in /proc/<pid>/status')


# ---------------------------------------------------------------------------------------
# SECoP over WebSocket and TCP on the same port


def test_ws_and_tcp_clients_on_one_port_see_each_others_changes(ws_gateway):
    """a change by one client reaches the other as `update`, never as `changed`"""
    tcp = LineClient(ws_gateway)

    def changed(lines):
        return [l for l in lines if l.startswith('changed')]

    def is_target_update(value):
        return lambda l: l.startswith('update ps:target') and split_message(l)[2][0] == value

    async def scenario():
        # the websockets default offer includes permessage-deflate, which we decline
        async with ws_connect(ws_gateway, compression='deflate') as ws:
            assert ws.protocol.extensions == []
            tcp.send('activate')
            assert tcp.read_until(lambda l: l == 'active')[-1] == 'active'
            await ws.send('activate')
            assert (await ws_recv_until(ws, lambda m: m == 'active'))[-1] == 'active'

            # WebSocket client changes: `changed` for it, an `update` for the TCP client
            await ws.send('change ps:target 7.5')
            ws_lines = await ws_recv_until(ws, lambda m: m.startswith('changed ps:target'))
            assert split_message(ws_lines[-1])[2][0] == 7.5
            assert [m for m in ws_lines if is_target_update(7.5)(m)], ws_lines
            tcp_lines = tcp.read_until(is_target_update(7.5))
            # ping/pong: everything the gateway queued for the TCP client so far is read
            tcp.send('ping sync1')
            tcp_lines += tcp.read_until(lambda l: l.startswith('pong sync1'))
            assert not changed(tcp_lines), tcp_lines

            # TCP client changes: `changed` for it, an `update` for the WebSocket client
            tcp.send('change ps:target 12.5')
            tcp_lines = tcp.read_until(lambda l: l.startswith('changed ps:target'))
            assert split_message(tcp_lines[-1])[2][0] == 12.5
            assert [l for l in tcp_lines if is_target_update(12.5)(l)], tcp_lines
            ws_lines = await ws_recv_until(ws, is_target_update(12.5))
            await ws.send('ping sync2')
            ws_lines += await ws_recv_until(ws, lambda m: m.startswith('pong sync2'))
            assert not changed(ws_lines), ws_lines

            # back to 0, by the WebSocket client
            await ws.send('change ps:target 0')
            await ws_recv_until(ws, lambda m: m.startswith('changed ps:target'))
            tcp_lines = tcp.read_until(is_target_update(0))
            tcp.send('ping sync3')
            tcp_lines += tcp.read_until(lambda l: l.startswith('pong sync3'))
            assert not changed(tcp_lines), tcp_lines
    try:
        run(scenario())
    finally:
        tcp.close()


def test_ws_identification_and_trailing_lf(ws_gateway):
    async def scenario():
        async with ws_connect(ws_gateway) as ws:
            assert await ws_request(ws, '*IDN?') == IDN
            # one message per frame; a trailing LF (or CRLF) is accepted and not echoed
            assert await ws_request(ws, '*IDN?\n') == IDN
            assert await ws_request(ws, '*IDN?\r\n') == IDN
            pong = await ws_request(ws, 'ping abc\n')
            assert split_message(pong)[:2] == ('pong', 'abc')
            reply = await ws_request(ws, 'read T:value\n')
            action, spec, data = split_message(reply)
            assert (action, spec) == ('reply', 'T:value') and isinstance(data[0], float)
    run(scenario())


def test_ws_on_root_path_too(ws_gateway):
    async def scenario():
        async with ws_connect(ws_gateway, path='/') as ws:
            assert await ws_request(ws, '*IDN?') == IDN
    run(scenario())


def test_describe_is_the_same_over_ws_and_tcp(ws_gateway):
    tcp = LineClient(ws_gateway)
    try:
        tcp_reply = tcp.request('describe')

        async def scenario():
            async with ws_connect(ws_gateway) as ws:
                return await ws_request(ws, 'describe')
        ws_reply = run(scenario())
    finally:
        tcp.close()
    assert ws_reply.startswith('describing . {')
    assert ws_reply == tcp_reply
    assert split_message(ws_reply)[2]['equipment_id'] == 'ws_test_node'


# ---------------------------------------------------------------------------------------
# HTTP side of the port


def test_wrong_websocket_version_gets_426(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.send_request('/ws', {'Sec-WebSocket-Version': '8'})
        status, headers, _ = raw.read_response()
    finally:
        raw.close()
    assert status == 426, headers
    assert headers.get('sec-websocket-version') == '13', headers


def test_missing_websocket_key_gets_400(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.send_request('/ws', {'Sec-WebSocket-Key': None})
        status, headers, _ = raw.read_response()
    finally:
        raw.close()
    assert status == 400, headers


def test_unknown_path_gets_404(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.send_request('/nope', upgrade=False)
        status, _, _ = raw.read_response()
    finally:
        raw.close()
    assert status == 404


def test_echo_endpoint_is_off_by_default(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.send_request('/echo')
        status, headers, _ = raw.read_response()
    finally:
        raw.close()
    assert status == 404, headers


def test_plain_get_root_is_the_web_client(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.send_request('/', upgrade=False)
        status, headers, body = raw.read_response()
    finally:
        raw.close()
    assert status == 200
    assert headers['content-type'].startswith('text/html'), headers
    page = body.decode()
    assert 'ws_test_node' in page
    # the web client: its values come over the WebSocket (tests/python/test_web_client.py)
    assert 'id="state"' in page and '/assets/app.js?v=' in page


def test_upgrade_variants_seen_in_the_wild(ws_gateway):
    """Firefox sends `Connection: keep-alive, Upgrade`; old clients `Upgrade: WebSocket`"""
    raw = RawWebSocket(ws_gateway)
    try:
        raw.send_request('/ws', {'Connection': 'keep-alive, Upgrade', 'Upgrade': 'WebSocket'})
        status, headers, _ = raw.read_response()
        assert status == 101, headers
        raw.send_frame(TEXT, b'*IDN?')
        assert raw.read_frame() == (TEXT, IDN.encode())
    finally:
        raw.close()


def test_first_frame_in_the_same_packet_as_the_handshake(ws_gateway):
    """a client that does not wait for the 101 before its first frame loses nothing"""
    raw = RawWebSocket(ws_gateway)
    try:
        head = (f'GET /ws HTTP/1.1\r\nHost: {ws_gateway.host}:{ws_gateway.port}\r\n'
                f'Upgrade: websocket\r\nConnection: Upgrade\r\n'
                f'Sec-WebSocket-Key: {websocket_key()}\r\nSec-WebSocket-Version: 13\r\n\r\n')
        frame = RawWebSocket.frame_header(TEXT, 5) + RawWebSocket.mask(b'*IDN?')
        raw.sock.sendall(head.encode() + frame)
        status, headers, _ = raw.read_response()
        assert status == 101, headers
        assert raw.read_frame() == (TEXT, IDN.encode())
    finally:
        raw.close()


def test_upgrade_after_plain_requests_on_a_keep_alive_connection(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.send_request('/', {'Connection': 'keep-alive'}, upgrade=False)
        assert raw.read_response()[0] == 200
        raw.send_request('/nope', {'Connection': 'keep-alive'}, upgrade=False)
        assert raw.read_response()[0] == 404
        raw.handshake('/ws')
        raw.send_frame(TEXT, b'*IDN?')
        assert raw.read_frame() == (TEXT, IDN.encode())
    finally:
        raw.close()


def test_incomplete_get_is_dropped_after_handshake_timeout(start_gateway, make_config):
    """`GE` and then nothing: neither HTTP nor SECoP yet; dropped after handshake_timeout"""
    gw = start_gateway(make_config(listen={'handshake_timeout': 0.5}), name='handshake')
    raw = RawWebSocket(gw)
    try:
        raw.sock.sendall(b'GE')
        assert raw.wait_eof(0.5 + 2 * WAIT), 'connection still open'
    finally:
        raw.close()
    # a silent client that has sent nothing is a SECoP client waiting to speak: kept
    silent = LineClient(gw)
    try:
        time.sleep(1.0)
        assert silent.request('*IDN?') == IDN
    finally:
        silent.close()


# ---------------------------------------------------------------------------------------
# Origin policy


def test_origin_absent_or_same_host_allowed_other_refused(ws_gateway):
    async def scenario():
        async with ws_connect(ws_gateway) as ws:      # websockets sends no Origin
            assert await ws_request(ws, '*IDN?') == IDN
        same = f'http://{ws_gateway.host}:{ws_gateway.port}'
        async with ws_connect(ws_gateway, origin=same) as ws:
            assert await ws_request(ws, '*IDN?') == IDN
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(ws_gateway, origin=EVIL_ORIGIN):
                pass
        assert refused.value.response.status_code == 403
        # the opaque origin of sandboxed frames and file:// pages
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(ws_gateway, origin='null'):
                pass
        assert refused.value.response.status_code == 403
        # same host name, other port: another origin
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(ws_gateway, origin=f'http://{ws_gateway.host}:1'):
                pass
        assert refused.value.response.status_code == 403
    run(scenario())


def test_configured_allowed_origin_accepted(start_gateway, make_config):
    gw = start_gateway(make_config(websocket={'allowed_origins': [TRUSTED_ORIGIN]}),
                       name='origins')

    async def scenario():
        async with ws_connect(gw, origin=TRUSTED_ORIGIN) as ws:
            assert await ws_request(ws, '*IDN?') == IDN
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(gw, origin=EVIL_ORIGIN):
                pass
        assert refused.value.response.status_code == 403
    run(scenario())


def test_any_origin_with_star(start_gateway, make_config):
    gw = start_gateway(make_config(websocket={'allowed_origins': ['*']}), name='any_origin')

    async def scenario():
        async with ws_connect(gw, origin=EVIL_ORIGIN) as ws:
            assert await ws_request(ws, '*IDN?') == IDN
    run(scenario())


# ---------------------------------------------------------------------------------------
# Subprotocols


def test_unknown_subprotocol_offer_connects_without_one(ws_gateway):
    async def scenario():
        async with ws_connect(ws_gateway, subprotocols=['foo']) as ws:
            assert ws.subprotocol is None
            assert 'Sec-WebSocket-Protocol' not in ws.response.headers
            assert await ws_request(ws, '*IDN?') == IDN
    run(scenario())


# ---------------------------------------------------------------------------------------
# Close codes


async def expect_close(ws, code, send=None, timeout=WAIT):
    """send `send` (if given), then read until the gateway closes; its close code must be
    `code` (the gateway may close while the message is still being sent)"""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            if send is not None:
                await ws.send(send)
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None, f'no close frame: {closed.value!r}'
    assert closed.value.rcvd.code == code, closed.value.rcvd


def test_binary_frame_closes_with_1003(ws_gateway):
    async def scenario():
        async with ws_connect(ws_gateway) as ws:
            await expect_close(ws, UNSUPPORTED_DATA, send=b'*IDN?')
    run(scenario())


def in_fragments(text, size=1000):
    return [text[i:i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize('fragmented', [False, True], ids=['one_frame', 'fragments'])
def test_message_over_max_message_bytes_closes_with_1009(ws_gateway, fragmented):
    async def scenario():
        async with ws_connect(ws_gateway) as ws:
            # a message of exactly the limit is fine (an unknown request: an error reply)
            exact = 'x' * MAX_MESSAGE
            reply = await ws_request(ws, in_fragments(exact) if fragmented else exact)
            assert reply.startswith('error_')
            big = 'x' * (MAX_MESSAGE + 1)
            await expect_close(ws, TOO_BIG, send=in_fragments(big) if fragmented else big)
    run(scenario())


def test_frame_announcing_1gib_is_refused_at_once_with_bounded_memory(gateway):
    """the default gateway (max_message_bytes 16 MiB): a text frame header announcing 1 GiB
    gets close 1009 at once, before any payload, and whatever payload follows is not
    buffered"""
    raw = RawWebSocket(gateway)
    try:
        raw.handshake()
        rss_before = rss_kib(gateway.process.pid)
        raw.sock.sendall(RawWebSocket.frame_header(TEXT, 1 << 30))
        code, before = raw.read_close()
        assert code == TOO_BIG, before
        # then send payload anyway, as an attacker would, for a bounded while: the gateway
        # may read and discard it or stop reading, but must not keep it
        sent = 0
        deadline = time.monotonic() + 2.0
        chunk = RawWebSocket.mask(b'x' * 65536)
        raw.sock.settimeout(0.2)
        while sent < 32 << 20 and time.monotonic() < deadline:
            try:
                sent += raw.sock.send(chunk)
            except (socket.timeout, BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        time.sleep(0.2)
        rss_after = rss_kib(gateway.process.pid)
    finally:
        raw.close()
    growth = rss_after - rss_before
    print(f'1 GiB frame: close {code}, then {sent} payload bytes sent; gateway RSS '
          f'{rss_before} -> {rss_after} KiB')
    assert growth < 4096, f'gateway RSS grew by {growth} KiB ({rss_before} -> {rss_after})'
    assert gateway.running


def test_frame_header_over_limit_is_refused_before_its_payload(ws_gateway):
    """the announced length decides: no payload is sent at all, the close comes anyway"""
    raw = RawWebSocket(ws_gateway)
    try:
        raw.handshake()
        raw.sock.sendall(RawWebSocket.frame_header(TEXT, MAX_MESSAGE + 1))
        code, before = raw.read_close()
    finally:
        raw.close()
    assert code == TOO_BIG, before


def test_unmasked_client_frame_closes_with_1002(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.handshake()
        raw.sock.sendall(struct.pack('!BB', 0x80 | TEXT, 5) + b'*IDN?')   # no mask bit
        code, before = raw.read_close()
    finally:
        raw.close()
    assert code == PROTOCOL_ERROR, before


def test_invalid_utf8_closes_with_1007(ws_gateway):
    raw = RawWebSocket(ws_gateway)
    try:
        raw.handshake()
        raw.send_frame(TEXT, b'*IDN?')
        opcode, payload = raw.read_frame()
        assert (opcode, payload) == (TEXT, IDN.encode())
        raw.send_frame(TEXT, b'read T:value \xff\xfe')
        code, before = raw.read_close()
    finally:
        raw.close()
    assert code == INVALID_DATA, before


def test_sigterm_closes_websockets_with_1001(start_gateway, make_config):
    gw = start_gateway(make_config(), name='sigterm')

    async def scenario():
        async with ws_connect(gw) as ws:
            await ws.send('activate')
            await ws_recv_until(ws, lambda m: m == 'active')
            gw.process.send_signal(signal.SIGTERM)
            await expect_close(ws, GOING_AWAY)
    run(scenario())
    gw.process.wait(WAIT)
    assert gw.process.returncode == 0, gw.log_section()


# ---------------------------------------------------------------------------------------
# Ping / pong

PING_INTERVAL = 0.5
PING_TIMEOUT = 1.5


class RecordList(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_server_pings_are_answered_and_keep_the_client(start_gateway, make_config):
    gw = start_gateway(make_config(websocket={'ping_interval': PING_INTERVAL,
                                              'ping_timeout': PING_TIMEOUT}), name='ping')
    log = logging.getLogger('test_websocket.ping_client')
    log.setLevel(logging.DEBUG)
    log.propagate = False
    records = RecordList()
    log.addHandler(records)

    def pings():
        return [m for m in records.messages if m.startswith('< PING')]

    async def scenario():
        # the client sends no pings of its own: only its automatic pongs keep it alive
        async with ws_connect(gw, ping_interval=None, logger=log) as ws:
            deadline = time.monotonic() + WAIT
            while not pings() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert pings(), 'no ping from the gateway'
            await asyncio.sleep(0.2)
            assert [m for m in records.messages if m.startswith('> PONG')], records.messages
            # well past ping_timeout, the client is still served
            await asyncio.sleep(2 * PING_TIMEOUT)
            assert await ws_request(ws, '*IDN?') == IDN
            assert len(pings()) >= 3
    try:
        run(scenario())
    finally:
        log.removeHandler(records)


def test_client_that_never_answers_pings_is_dropped(start_gateway, make_config):
    gw = start_gateway(make_config(websocket={'ping_interval': PING_INTERVAL,
                                              'ping_timeout': PING_TIMEOUT}), name='no_pong')
    raw = RawWebSocket(gw)
    try:
        raw.handshake()
        frames = []
        dropped = False
        close_code = None
        deadline = time.monotonic() + PING_TIMEOUT + PING_INTERVAL + 3 * WAIT
        try:
            while time.monotonic() < deadline:
                opcode, payload = raw.read_frame(deadline - time.monotonic())
                frames.append(opcode)
                if opcode == CLOSE:
                    close_code = struct.unpack('!H', payload[:2])[0] if payload else None
                    break
        except EOFError:
            dropped = True
        if not dropped:
            dropped = raw.wait_eof(WAIT)
    finally:
        raw.close()
    print(f'silent client: frames {frames}, close code {close_code}, dropped {dropped}')
    assert PING in frames, f'no ping before the drop: {frames}'
    assert dropped, f'silent client not disconnected (frames {frames})'
    # the gateway still serves others
    raw = RawWebSocket(gw)
    try:
        raw.handshake()
        raw.send_frame(TEXT, b'*IDN?')
        opcode, payload = raw.read_frame()
        while opcode == PING:
            opcode, payload = raw.read_frame()
        assert payload == IDN.encode()
    finally:
        raw.close()


# ---------------------------------------------------------------------------------------
# Slow consumer


def test_ws_client_that_stops_reading_does_not_stall_tcp_client(ws_gateway):
    """a WebSocket client floods requests (describe) and reads nothing; a TCP client keeps
    getting updates and replies"""
    raw = RawWebSocket(ws_gateway, rcvbuf=4096)
    tcp = LineClient(ws_gateway)
    try:
        raw.handshake()
        raw.send_frame(TEXT, b'activate')
        request = RawWebSocket.frame_header(TEXT, len(b'describe')) + \
            RawWebSocket.mask(b'describe')
        raw.sock.settimeout(0.2)
        flooded = 0
        deadline = time.monotonic() + 3.0
        while flooded < 200_000 and time.monotonic() < deadline:
            try:
                raw.sock.sendall(request)
            except socket.timeout:
                break   # the gateway stopped reading its requests: backpressure
            flooded += 1

        tcp.send('activate')
        tcp.read_until(lambda l: l == 'active')
        # poll updates keep coming (T and p are polled every 0.2 s)
        for _ in range(5):
            tcp.read_until(lambda l: l.startswith('update T:value'))
        tcp.send('change ps:target 3')
        tcp.read_until(lambda l: l.startswith('changed ps:target'))
        tcp.send('change ps:target 0')
        tcp.read_until(lambda l: l.startswith('changed ps:target'))
        tcp.send('*IDN?')
        tcp.read_until(lambda l: l == IDN)
        print(f'slow consumer: {flooded} describe requests sent without reading')
    finally:
        raw.close()
        tcp.close()
