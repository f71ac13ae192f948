"""The fault policy of config-defined links (ASCII and Modbus), issue 14: transient
faults are retried and do not flip a module to ERROR; a lasting fault gives one
error_update per parameter and one ERROR status per episode; reconnects back off, also
from a device that accepts connections but never answers; every value sent to clients
fits its datainfo and is ASCII; one silent unit on an RS-485 bus leaves the others
alone; metrics count exchanges on the wire. Simulators: instruments.LakeShoreSim on a
pty (garbled replies, stalls), modbus_sim.ModbusSim (pymodbus: exceptions, stalls,
silent units) over TCP and over a socat pty pair.

The link keys (defaults) this relies on: retries (1), error_after_failures (3),
error_after_seconds (0), timeout, reconnect_min, reconnect_max, pollinterval; the module
key pollinterval. The metrics: secop_gateway_device_transactions_total{device, result}
(one per exchange on the wire) and secop_gateway_device_cache_hits_total{device}.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import gateway_binary
from instruments import LakeShoreSim, PtyInstrument
from modbus_sim import ModbusSim, f32_words
from rawsecop import Line, Recorder, value_of
from test_prometheus import scrape

pytestmark = pytest.mark.timeout(200)   # safety net only; every wait below is bounded

IDLE, WARN, BUSY, ERROR = 'IDLE', 'WARN', 'BUSY', 'ERROR'
TRANSACTIONS = 'secop_gateway_device_transactions_total'
CACHE_HITS = 'secop_gateway_device_cache_hits_total'
OUTCOMES = {'ok', 'timeout', 'error', 'garbled'}

NODE = '''
[node]
equipment_id = "fault_test"
description = "links with faults"

[discovery]
enabled = false
'''


def ascii_link(path, name='ls', timeout=0.3, reconnect_min=0.2, reconnect_max=1.0,
               pollinterval=0.3, extra='', tcp=None):
    """an ASCII `[[link]]` on the pty at `path` (or to `tcp`, host:port), LakeShore
    terminators and identify"""
    transport = f'tcp = "{tcp}"' if tcp else f'serial = "{path}"'
    return f'''
[[link]]
name = "{name}"
protocol = "ascii"
{transport}
timeout = {timeout}
reconnect_min = {reconnect_min}
reconnect_max = {reconnect_max}
pollinterval = {pollinterval}
{extra}
[link.ascii]
write_terminator = "\\r\\n"
read_terminator = "\\r\\n"
identify = "*IDN?"
identify_expect = "^LSCI,MODEL336"
'''


def lakeshore_module(name='T', link='ls'):
    """a LakeShore-like Drivable: value, target, heater range (slow), heater, label"""
    return f'''
[[module]]
name = "{name}"
link = "{link}"
class = "Drivable"
description = "sample temperature"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", min = 0, max = 500, unit = "K" }}
query = "KRDG? A"
reply = '^\\+?(?P<value>[-0-9.]+)$'
[[module.parameter]]
name = "target"
datainfo = {{ type = "double", min = 0, max = 400, unit = "K" }}
query = "SETP? 1"
write = "SETP 1,{{value:.3f}}"
[[module.parameter]]
name = "_heater_range"
datainfo = {{ type = "enum", members = {{ off = 0, low = 1, medium = 2, high = 3 }} }}
query = "RANGE? 1"
write = "RANGE 1,{{value:d}}"
poll = "slow"
[[module.parameter]]
name = "_heater"
datainfo = {{ type = "double", min = 0, max = 100, unit = "%" }}
query = "HTR? 1"
[[module.parameter]]
name = "_label"
datainfo = {{ type = "string", maxchars = 16 }}
query = "LABEL?"
[module.drive]
tolerance = 0.5
settle = 0.2
timeout = 600
stop = "STOP"
'''


def modbus_link(transport, name='plc', timeout=0.3, reconnect_min=0.2, reconnect_max=1.0,
                pollinterval=0.3, extra=''):
    return f'''
[[link]]
name = "{name}"
protocol = "modbus"
{transport}
timeout = {timeout}
reconnect_min = {reconnect_min}
reconnect_max = {reconnect_max}
pollinterval = {pollinterval}
{extra}
[link.modbus]
unit_id = 1
'''


def psu_module(name='psu', link='plc', cls='Drivable', unit=None):
    """a power supply: value (input 0, f32) follows target (holding 0, f32)"""
    text = f'''
[[module]]
name = "{name}"
link = "{link}"
class = "{cls}"
description = "power supply output"
'''
    if unit is not None:
        text += f'unit_id = {unit}\n'
    text += '''[[module.parameter]]
name = "value"
datainfo = { type = "double", min = 0, max = 100, unit = "V" }
table = "input"
address = 0
type = "f32"
[[module.parameter]]
name = "target"
datainfo = { type = "double", min = 0, max = 100, unit = "V" }
table = "holding"
address = 0
type = "f32"
writable = true
[[module.parameter]]
name = "_current"
datainfo = { type = "double", min = -50, max = 50, unit = "A" }
table = "input"
address = 2
type = "i16"
scale = 0.01
[[module.parameter]]
name = "_serial"
datainfo = { type = "string", maxchars = 8 }
table = "holding"
address = 10
type = "string"
length = 4
[[module.parameter]]
name = "_mode"
datainfo = { type = "enum", members = { off = 0, cv = 1, cc = 2 } }
table = "holding"
address = 30
writable = true
'''
    if cls == 'Drivable':
        text += '''[module.drive]
tolerance = 0.5
settle = 0.2
timeout = 600
'''
    return text


def fill_psu(sim, unit=1, value=0.0):
    sim.set(unit, 'input', 0, f32_words(value))
    sim.set(unit, 'holding', 0, f32_words(value))
    sim.set(unit, 'input', 2, [150])                               # 1.5 A
    sim.set(unit, 'holding', 10, [0x5053, 0x552D, 0x3432, 0])      # "PSU-42"
    sim.set(unit, 'holding', 30, [1])


# --- what clients receive -----------------------------------------------------------

def split(line):
    """(action, specifier, data) of a SECoP line"""
    action, _, rest = line.partition(' ')
    spec, _, data = rest.partition(' ')
    return action, spec, json.loads(data) if data else None


def status_class(code):
    return {1: IDLE, 2: WARN, 3: BUSY, 4: ERROR}.get(code // 100, f'code {code}')


def events(lines, module, parameter, action='update'):
    """(time, data) of the `action` lines of module:parameter"""
    out = []
    for t, line in lines:
        if line.startswith(f'{action} {module}:{parameter} '):
            out.append((t, split(line)[2]))
    return out


def statuses(lines, module):
    """(time, class, code, text) of every status update of `module`"""
    return [(t, status_class(d[0][0]), d[0][0], d[0][1])
            for t, d in events(lines, module, 'status')]


def transitions(classes):
    """the status classes with repeats removed: [IDLE, BUSY, BUSY, IDLE] -> [IDLE, BUSY, IDLE]"""
    out = []
    for c in classes:
        if not out or out[-1] != c:
            out.append(c)
    return out


def describe(client):
    reply = client.ask('describe')
    assert reply.startswith('describing . '), reply
    return json.loads(reply.split(' ', 2)[2])


def datainfo_problem(datainfo, value):
    """why `value` does not fit `datainfo` (a SECoP datainfo), or None"""
    kind = datainfo['type']
    if kind in ('double', 'scaled'):
        if kind == 'scaled':
            if not isinstance(value, int) or isinstance(value, bool):
                return 'not an integer (scaled)'
            value = value * datainfo['scale']
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return 'not a number'
        if 'min' in datainfo and value < datainfo['min'] - 1e-9:
            return f'below min {datainfo["min"]}'
        if 'max' in datainfo and value > datainfo['max'] + 1e-9:
            return f'above max {datainfo["max"]}'
        return None
    if kind == 'int':
        if not isinstance(value, int) or isinstance(value, bool):
            return 'not an integer'
        if not datainfo['min'] <= value <= datainfo['max']:
            return f'outside {datainfo["min"]} .. {datainfo["max"]}'
        return None
    if kind == 'bool':
        return None if isinstance(value, bool) else 'not a bool'
    if kind == 'enum':
        return None if value in datainfo['members'].values() else 'not a member'
    if kind == 'string':
        if not isinstance(value, str):
            return 'not a string'
        if len(value) > datainfo.get('maxchars', len(value)):
            return f'longer than maxchars {datainfo["maxchars"]}'
        if len(value) < datainfo.get('minchars', 0):
            return f'shorter than minchars {datainfo["minchars"]}'
        if not datainfo.get('isUTF8', False) and not value.isascii():
            return 'not ASCII'
        return None
    if kind == 'tuple':
        if not isinstance(value, list) or len(value) != len(datainfo['members']):
            return 'not a tuple of the right length'
        for di, v in zip(datainfo['members'], value):
            problem = datainfo_problem(di, v)
            if problem:
                return problem
        return None
    if kind == 'array':
        if not isinstance(value, list):
            return 'not an array'
        for v in value:
            problem = datainfo_problem(datainfo['members'], v)
            if problem:
                return problem
        return None
    if kind == 'struct':
        if not isinstance(value, dict):
            return 'not a struct'
        for key, v in value.items():
            if key not in datainfo['members']:
                return f'unknown member {key}'
            problem = datainfo_problem(datainfo['members'][key], v)
            if problem:
                return problem
        return None
    return None


def invalid_values(description, lines):
    """every update whose value does not fit its parameter's datainfo"""
    bad = []
    for _, line in lines:
        if not line.startswith(('update ', 'changed ', 'reply ')):
            continue
        action, spec, data = split(line)
        module, _, parameter = spec.partition(':')
        accessible = description['modules'].get(module, {}).get('accessibles', {}) \
            .get(parameter)
        if accessible is None:
            continue
        problem = datainfo_problem(accessible['datainfo'], data[0])
        if problem:
            bad.append(f'{line[:160]} ({problem})')
    return bad


def non_ascii(raw_lines, module=None):
    """the received lines (bytes) with a byte >= 0x80; with `module`, only those about
    it (or about no module)"""
    found = []
    for line in raw_lines:
        if not any(b >= 0x80 for b in line):
            continue
        spec = line.split(b' ')[1] if b' ' in line else b''
        if module is None or b':' not in spec or spec.startswith(module.encode() + b':'):
            found.append(line[:200])
    return found


def wait_until(predicate, timeout, period=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def quiet(counter, quiet_for=1.2, limit=10.0):
    """wait until `counter()` did not change for `quiet_for` s; its value then"""
    deadline = time.monotonic() + limit
    seen, since = counter(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = counter()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return seen
    raise AssertionError(f'traffic did not stop within {limit} s (pollinterval ignored?)')


@pytest.fixture
def pty_sim(tmp_path):
    """a LakeShoreSim on a pty; tests set its faults"""
    started = []

    def start(**kwargs):
        sim = LakeShoreSim(**kwargs)
        sim.label = 'sample A'
        inst = PtyInstrument(sim, str(tmp_path / f'ls{len(started)}.tty')).start()
        started.append(inst)
        return inst

    yield start
    for inst in started:
        inst.stop()


@pytest.fixture
def modbus_tcp():
    started = []

    def start(**kwargs):
        sim = ModbusSim(**kwargs)
        fill_psu(sim)
        sim.start_tcp()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def recorders():
    """recorders(gw) -> Recorder; closed at teardown"""
    made = []

    def make(gw):
        r = Recorder(gw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# --- a) and b): 60 s moves through transient faults -----------------------------------

MOVE_SECONDS = 60.0


class Moves:
    """Both moves, run once for the two tests that check them."""
    gateways = ()


@pytest.fixture(scope='module')
def moves(tmp_path_factory, start_module_gateway):
    """A LakeShore-like Drivable on a pty with 5 % garbled replies and a power supply on
    Modbus TCP with 10 % exception replies, in one gateway, each moving for ~60 s while
    an activated raw client records everything."""
    tmp = tmp_path_factory.mktemp('moves')
    sim = LakeShoreSim(rate=1.0, temperature=295.0, seed=14)
    sim.label = 'sample A'
    pty_inst = PtyInstrument(sim, str(tmp / 'ls.tty')).start()
    mb = ModbusSim(seed=14)
    fill_psu(mb, value=0.0)
    mb.start_tcp()
    mb.ramp(1, rate=1.0)
    recorder = None
    try:
        config = NODE + ascii_link(pty_inst.path, pollinterval=0.3) + lakeshore_module() \
            + modbus_link(f'tcp = "127.0.0.1:{mb.port}"', pollinterval=0.3) + psu_module()
        gw = start_module_gateway(config, 'moves')
        result = Moves()
        result.gateways = [gw]
        recorder = Recorder(gw)
        result.description = describe(recorder)
        assert recorder.ask('activate') == 'active'
        # the faults start once the initial values are in, and after the targets were
        # accepted: the moves and what clients see during them are under test
        t_value = 295.0 - MOVE_SECONDS + 1.0
        p_target = MOVE_SECONDS - 1.0
        result.started = recorder.mark()
        r = recorder.ask(f'change T:target {t_value}')
        assert r.startswith(f'changed T:target [{t_value}'), r
        r = recorder.ask(f'change psu:target {p_target}')
        assert r.startswith(f'changed psu:target [{p_target}'), r
        sim.garble_rate = 0.05
        mb.exception_rate = 0.10
        result.sim, result.mb = sim, mb
        result.targets = {'T': t_value, 'psu': p_target}
        # until both moves ended (IDLE after BUSY), at most MOVE_SECONDS + 40 s
        deadline = time.monotonic() + MOVE_SECONDS + 40
        ended = {}
        while time.monotonic() < deadline and len(ended) < 2:
            time.sleep(0.5)
            lines = recorder.lines(result.started)
            for module in ('T', 'psu'):
                seen = [c for _, c, _, _ in statuses(lines, module)]
                if BUSY in seen and seen[-1] == IDLE:
                    ended.setdefault(module, time.monotonic())
        time.sleep(1.0)
        sim.garble_rate = 0.0
        mb.exception_rate = 0.0
        result.ended = ended
        result.lines = recorder.lines()
        result.move_lines = recorder.lines(result.started)
        result.raw_lines = recorder.raw_lines()
        yield result
    finally:
        if recorder:
            recorder.close()
        pty_inst.stop()
        mb.stop()


def check_move(moves, module, faults_injected):
    problems = []
    lines = moves.move_lines
    classes = [c for _, c, _, _ in statuses(lines, module)]
    went = transitions(classes)
    shown = f'{went[:8]}{" ..." if len(went) > 8 else ""} ({len(went)} changes)'
    errors = [s for s in statuses(lines, module) if s[1] == ERROR]
    if errors:
        problems.append(f'{len(errors)} ERROR status updates during the move, first: '
                        f'{errors[0][2:]}')
    if module not in moves.ended:
        problems.append(f'the move did not end IDLE; status went {shown}')
    elif went != [BUSY, IDLE]:
        problems.append(f'status went {shown}, expected BUSY through the whole move, then IDLE')
    bad = [b for b in invalid_values(moves.description, moves.lines)
           if b.split(' ', 2)[1].startswith(f'{module}:')]
    if bad:
        problems.append(f'{len(bad)} values outside their datainfo, e.g. {bad[:3]}')
    # the drive really arrived, and values kept flowing
    values = [d[0] for _, d in events(lines, module, 'value')]
    if len(values) < 30:
        problems.append(f'only {len(values)} value updates during the move')
    elif abs(values[-1] - moves.targets[module]) > 0.5:
        problems.append(f'last value {values[-1]}, target {moves.targets[module]}')
    # SECoP text is ASCII: no byte >= 0x80 anywhere in the stream
    found = non_ascii(moves.raw_lines, module)
    if found:
        problems.append(f'bytes >= 0x80 reached the client: {found}')
    if not faults_injected:
        problems.append('the simulator injected no faults (test broken)')
    assert not problems, f'{module}:\n  ' + '\n  '.join(problems)


def test_ascii_move_through_garbled_replies(moves):
    """a) 5 % garbled replies (invalid UTF-8, cut-off numbers) during a 60 s move of a
    Drivable over a pty: no ERROR status, BUSY throughout, IDLE at the end, every value
    valid for its datainfo, no byte >= 0x80 to the client."""
    check_move(moves, 'T', moves.sim.garbled_count >= 10)


def test_modbus_move_through_exception_replies(moves):
    """b) 10 % Modbus exception replies (0x04, 0x06) during a 60 s move over Modbus TCP:
    the same."""
    check_move(moves, 'psu', sum(moves.mb.exceptions.values()) >= 10)


# --- c) a 10 s stall ----------------------------------------------------------------

STALL_LINK = dict(timeout=0.3, reconnect_min=0.2, reconnect_max=1.0, pollinterval=0.2)


@pytest.mark.parametrize('kind', ['ascii', 'modbus'])
def test_a_stall_is_one_error_episode(kind, start_gateway, pty_sim, modbus_tcp, recorders):
    """c) the device answers nothing for 10 s: exactly one error_update per polled
    parameter and exactly one ERROR status in that time, the ERROR not before three
    requests went unanswered (error_after_failures 3); after the stall values come
    back within 2 s."""
    if kind == 'ascii':
        inst = pty_sim(rate=0.0)
        config = NODE + ascii_link(inst.path, **STALL_LINK) + lakeshore_module()
        module, polled = 'T', ['value', 'target', '_heater', '_label']

        def stall(on):
            inst.instrument.stall = on

        def unanswered():
            return sum(1 for _, sent in list(inst.instrument.exchanges) if sent is None)
    else:
        mb = modbus_tcp()
        config = NODE + modbus_link(f'tcp = "127.0.0.1:{mb.port}"', **STALL_LINK) \
            + psu_module()
        module, polled = 'psu', ['value', 'target', '_current', '_serial', '_mode']

        def stall(on):
            mb.stall = on

        def unanswered():
            return sum(mb.unanswered.values())
    gw = start_gateway(config, f'stall-{kind}')
    rec = recorders(gw)
    assert rec.ask('activate') == 'active'
    rec.wait_for(f'update {module}:status [[1')
    time.sleep(1.0)
    before = rec.mark()
    unanswered_before = unanswered()
    stall(True)
    stall_started = time.monotonic()
    # ERROR only after error_after_failures (default 3) failed transactions, each at
    # least one request the device left unanswered
    _, _, status = rec.wait_for(f'update {module}:status [[4', since=before, timeout=10)
    unanswered_at_error = unanswered() - unanswered_before
    time.sleep(max(0.0, stall_started + 10.0 - time.monotonic()))
    stall(False)
    stall_ended = time.monotonic()
    # values are back within 2 s
    _, t, line = rec.wait_for(f'update {module}:value ', since=before, timeout=10)
    assert t > stall_ended, f'a value during the stall: {line}'
    assert t - stall_ended <= 2.0, f'first value {t - stall_ended:.2f} s after the stall'
    rec.wait_for(f'update {module}:status [[1', since=before, timeout=5)
    time.sleep(0.5)
    lines = rec.lines(before)
    problems = []
    if unanswered_at_error < 3:
        problems.append(f'ERROR status after {unanswered_at_error} unanswered requests '
                        f'(error_after_failures is 3): {status}')
    for p in polled:
        errs = events(lines, module, p, 'error_update')
        if len(errs) != 1:
            problems.append(f'{module}:{p}: {len(errs)} error_updates (expected 1): '
                            f'{[e[1][:2] for e in errs[:4]]}')
    for p in ('_heater_range',):
        errs = events(lines, module, p, 'error_update')
        if len(errs) > 1:
            problems.append(f'{module}:{p}: {len(errs)} error_updates (at most 1)')
    sts = statuses(lines, module)
    errors = [s for s in sts if s[1] == ERROR]
    if len(errors) != 1:
        problems.append(f'{len(errors)} ERROR status updates (expected 1): '
                        f'{[s[2:] for s in errors[:4]]}')
    elif not stall_started <= errors[0][0] <= stall_ended + 0.5:
        problems.append('the ERROR status came after the stall')
    found = non_ascii(rec.raw_lines())
    if found:
        problems.append(f'bytes >= 0x80 reached the client: {found}')
    assert not problems, '\n'.join(problems)


# --- d) a device that accepts connections and never answers --------------------------

class SilentDevice:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte
    (or, with `answer`, answers every line with it: the wrong instrument);
    `accepted` holds the time.monotonic() of each accepted connection."""

    def __init__(self, answer=None):
        self.answer = answer
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.accepted = []
        self.connections = []
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.listener.settimeout(0.1)
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(time.monotonic())
            self.connections.append(conn)     # kept open, never read, never answered
            if self.answer is not None:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        conn.settimeout(0.1)
        while not self.stopped:
            try:
                data = conn.recv(1024)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            for _ in range(data.count(b'\n')):
                try:
                    conn.sendall(self.answer)
                except OSError:
                    return

    def stop(self):
        self.stopped = True
        self.thread.join(2)
        self.listener.close()
        for c in self.connections:
            c.close()


def backoff_waits(reconnect_min, reconnect_max, n):
    """the waits before attempts 2, 3, ...: min, 2 min, 4 min, ... capped at max"""
    return [min(reconnect_min * 2 ** k, reconnect_max) for k in range(n)]


@pytest.mark.parametrize('protocol', ['ascii', 'modbus', 'wrong_instrument'])
def test_a_silent_device_is_reconnected_with_backoff(protocol, start_gateway):
    """d) every failed session backs off, also when the connection opened but the device
    never answered: over ~8 s with reconnect_min 0.25, reconnect_max 2 and timeout 0.3
    the attempts follow 0.25, 0.5, 1, 2, 2 ... s; the log has a line per state change,
    not per attempt, and no "link connected" (identify never passed)."""
    # The wrong instrument answers, but not what identify_expect wants: a failed session
    # like a silent one.
    device = SilentDevice(b'ACME,OTHER,0,1.0\n' if protocol == 'wrong_instrument' else None)
    try:
        link = dict(timeout=0.3, reconnect_min=0.25, reconnect_max=2.0, pollinterval=0.2)
        if protocol in ('ascii', 'wrong_instrument'):
            config = NODE + f'''
[[link]]
name = "silent"
protocol = "ascii"
tcp = "127.0.0.1:{device.port}"
timeout = {link["timeout"]}
reconnect_min = {link["reconnect_min"]}
reconnect_max = {link["reconnect_max"]}
pollinterval = {link["pollinterval"]}
[link.ascii]
identify = "*IDN?"
identify_expect = "^LSCI,MODEL336"

[[module]]
name = "T"
link = "silent"
class = "Readable"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double" }}
query = "KRDG? A"
'''
        else:
            config = NODE + modbus_link(f'tcp = "127.0.0.1:{device.port}"', name='silent',
                                        **link) + psu_module(link='silent', cls='Readable')
        gw = start_gateway(config, f'silent-{protocol}')
        assert wait_until(lambda: device.accepted, 5), 'the gateway never connected'
        first = device.accepted[0]
        time.sleep(max(0.0, first + 8.0 - time.monotonic()))
        times = [t - first for t in device.accepted if t - first <= 8.0]
        gaps = [b - a for a, b in zip(times, times[1:])]
        log = gw.log_text()
    finally:
        device.stop()
    shown = f'attempts at {[round(t, 2) for t in times]} s (gaps {[round(g, 2) for g in gaps]})'
    # With waits w_k = min(0.25 * 2**k, 2) and a session of one to a few timeouts
    # (0.3 s each, retries included) before each wait, 8 s hold 5 to 7 attempts; a
    # reconnect at once after each failed session gives 15 or more.
    assert 4 <= len(times) <= 7, shown
    waits = backoff_waits(0.25, 2.0, len(gaps))
    slack = 0.1
    for k, (gap, wait) in enumerate(zip(gaps, waits)):
        # at least the wait; at most the wait plus the failed session (a few timeouts)
        assert gap >= wait - slack, f'gap {k + 1} shorter than the backoff {wait} s; {shown}'
        assert gap <= wait + 2.0, f'gap {k + 1} much longer than the backoff {wait} s; {shown}'
    assert all(b >= a - 0.2 for a, b in zip(gaps, gaps[1:])), f'gaps do not grow; {shown}'
    connected = [l for l in log.splitlines() if 'link connected' in l]
    lost = [l for l in log.splitlines() if 'link lost' in l]
    assert len(connected) + len(lost) <= 2, \
        f'{len(connected)} "link connected" and {len(lost)} "link lost" lines:\n' \
        + '\n'.join((connected + lost)[:6])
    if protocol != 'modbus':
        assert not connected, f'"link connected" before identify passed:\n{connected[0]}'
    about_link = [l for l in log.splitlines() if 'link=silent' in l]
    assert len(about_link) <= 3, \
        f'{len(about_link)} log lines about the link for {len(times)} attempts ' \
        f'(one per state change expected):\n' + '\n'.join(about_link[:6])


# --- e) one silent unit on an RS-485 bus --------------------------------------------

@pytest.fixture
def rtu_bus(tmp_path):
    """(gateway end, device end) of a socat pty pair"""
    if shutil.which('socat') is None:
        pytest.skip('socat is not installed')
    bus_gw, bus_dev = str(tmp_path / 'bus-gateway'), str(tmp_path / 'bus-device')
    socat = subprocess.Popen(['socat', f'pty,raw,echo=0,link={bus_gw}',
                              f'pty,raw,echo=0,link={bus_dev}'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: os.path.exists(bus_gw) and os.path.exists(bus_dev), 5)
        yield bus_gw, bus_dev
    finally:
        socat.send_signal(signal.SIGTERM)
        socat.wait(5)


def test_one_silent_unit_leaves_the_other_alone(start_gateway, rtu_bus, recorders):
    """e) two units on one Modbus RTU bus, unit 2 never answers: unit 1's module stays
    IDLE and its values keep coming for ~5 s; unit 2's module is ERROR."""
    bus_gw, bus_dev = rtu_bus
    sim = ModbusSim(units=(1, 2))
    try:
        fill_psu(sim, 1, value=10.0)
        fill_psu(sim, 2, value=20.0)
        sim.set(1, 'holding', 0, f32_words(100.0))
        sim.silent_units.add(2)
        sim.start_rtu(bus_dev)
        sim.ramp(1, rate=2.0)      # unit 1's value keeps changing
        config = NODE + modbus_link(f'serial = "{bus_gw}"\nbaud = 19200', timeout=0.3,
                                    pollinterval=0.2) \
            + psu_module('psu', cls='Readable', unit=1) \
            + psu_module('flow', cls='Readable', unit=2)
        gw = start_gateway(config, 'rtu-silent-unit')
        rec = recorders(gw)
        assert rec.ask('activate') == 'active'
        start = rec.mark()
        time.sleep(5.0)
        lines = rec.lines()
        window = lines[start:]
        # unit 2's module is ERROR by now, or soon
        if not [s for s in statuses(rec.lines(), 'flow') if s[1] == ERROR]:
            rec.wait_for('update flow:status [[4', timeout=5)
    finally:
        sim.stop()
    psu = statuses(lines, 'psu')
    assert psu, 'no status of psu'
    not_ok = [s[1:] for s in psu if s[1] != IDLE]
    assert not not_ok, f'psu (unit 1) left IDLE while unit 2 was silent: {not_ok[:3]}'
    values = [d[0] for _, d in events(window, 'psu', 'value')]
    assert len(values) >= 5, f'only {len(values)} psu values in ~5 s: {values}'
    assert values == sorted(values) and values[-1] > values[0], values
    psu_errors = [l for _, l in lines if l.startswith('error_update psu:')]
    assert not psu_errors, psu_errors[:3]
    flow = statuses(rec.lines(), 'flow')
    assert flow and flow[-1][1] == ERROR, f'flow (unit 2) status: {[s[1:] for s in flow[-3:]]}'
    assert sim.received[2] > 0 and sim.unanswered[2] == sim.received[2]


# --- f) metrics count exchanges on the wire ------------------------------------------

def transactions(expo, device):
    """{outcome: count} of secop_gateway_device_transactions_total for `device`, and the
    name of the label that holds the outcome"""
    counts, label = {}, None
    for labels, value in expo.series(TRANSACTIONS):
        if labels.get('device') != device:
            continue
        rest = [k for k in labels if k != 'device']
        label = rest[0] if rest else None
        key = labels.get(label, '')
        counts[key] = counts.get(key, 0) + value
    return counts, label


def test_metrics_count_exchanges_on_the_wire(start_gateway, pty_sim, modbus_tcp):
    """f) after ~5 s of polls, reads, changes and faults, the transactions of each
    device summed over outcomes equal the exchanges its simulator logged (garbled and
    exception replies by outcome too); a read served from max_age counts as a cache hit
    and not as a transaction."""
    inst = pty_sim(rate=1000.0, seed=7)   # moves end at once: no fast polling after
    sim = inst.instrument
    mb = modbus_tcp(seed=7)
    config = NODE + ascii_link(inst.path, pollinterval=0.5, extra='max_age = 1.0') \
        + lakeshore_module() \
        + modbus_link(f'tcp = "127.0.0.1:{mb.port}"', pollinterval=0.5, extra='max_age = 1.0') \
        + psu_module(cls='Writable')
    gw = start_gateway(config, 'metrics')
    c = Line(gw)
    assert c.ask('read T:value').startswith('reply T:value [295.0')
    sim.garble_rate = 0.2
    mb.exception_rate = 0.2
    deadline = time.monotonic() + 5.0
    i = 0
    while time.monotonic() < deadline:
        i += 1
        for request in ('read T:value', 'read T:target', 'read psu:value', 'read psu:_mode',
                        f'change T:target {200 + i}', f'change psu:target {i}',
                        'read T:_heater_range'):
            c.ask(request)
        time.sleep(0.2)
    sim.garble_rate = 0.0
    mb.exception_rate = 0.0
    assert c.ask('change T:pollinterval 1000').startswith('changed T:pollinterval [1000')
    assert c.ask('change psu:pollinterval 1000').startswith('changed psu:pollinterval [1000')
    quiet(lambda: (len(sim.exchanges), mb.total_received()))
    expo = scrape(gw.host, gw.port)
    problems = []
    ls, ls_label = transactions(expo, 'ls')
    plc, plc_label = transactions(expo, 'plc')
    garbled = sim.garbled_count
    exceptions = sum(mb.exceptions.values())
    if sum(ls.values()) != len(sim.exchanges):
        problems.append(f'ls: {sum(ls.values()):.0f} transactions {ls}, the pty saw '
                        f'{len(sim.exchanges)} exchanges ({garbled} garbled)')
    elif ls.get('garbled', 0) != garbled:
        problems.append(f'ls: outcome garbled {ls.get("garbled", 0)}, garbled replies sent '
                        f'{garbled}: {ls}')
    if sum(plc.values()) != mb.total_received():
        problems.append(f'plc: {sum(plc.values()):.0f} transactions {plc}, the server saw '
                        f'{mb.total_received()} requests ({exceptions} exceptions)')
    elif plc.get('error', 0) != exceptions:
        problems.append(f'plc: outcome error {plc.get("error", 0)}, exception replies '
                        f'{exceptions}: {plc}')
    # The label keeps its established name `result` (dashboards and alerts use it).
    for label in (ls_label, plc_label):
        if label != 'result':
            problems.append(f'the outcome label of {TRANSACTIONS} is {label!r}, not "result"')
            break
    unknown = (set(ls) | set(plc)) - OUTCOMES
    if unknown:
        problems.append(f'outcomes outside {sorted(OUTCOMES)}: {sorted(unknown)}')
    if garbled < 3 or exceptions < 3:
        problems.append(f'too few faults injected ({garbled}, {exceptions}): test broken')

    # a read from the cache (max_age 1 s) is no transaction
    for module, device, count in (('T', 'ls', lambda: len(sim.exchanges)),
                                  ('psu', 'plc', mb.total_received)):
        before = scrape(gw.host, gw.port)
        wire = count()
        assert c.ask(f'read {module}:value').startswith(f'reply {module}:value ')
        assert c.ask(f'read {module}:value').startswith(f'reply {module}:value ')
        time.sleep(0.2)
        after = scrape(gw.host, gw.port)
        on_wire = count() - wire
        counted = sum(transactions(after, device)[0].values()) \
            - sum(transactions(before, device)[0].values())
        hits = after.count(CACHE_HITS, device=device) - before.count(CACHE_HITS, device=device)
        if on_wire != 1:
            problems.append(f'{device}: two reads within max_age made {on_wire} exchanges, '
                            f'expected 1 (the second from the cache)')
        if counted != on_wire:
            problems.append(f'{device}: {counted:.0f} transactions counted for {on_wire} '
                            f'exchanges of two reads')
        if hits != 1:
            problems.append(f'{device}: {CACHE_HITS} moved by {hits:.0f}, expected 1')
    c.close()
    assert not problems, '\n'.join(problems)


# --- g) device values outside their datainfo ----------------------------------------

def test_values_outside_the_datainfo_are_errors_naming_the_reply(start_gateway, pty_sim,
                                                                 modbus_tcp, recorders):
    """g) a string with maxchars 4 that reads "PFC-100 SIM", doubles with max 100 that
    read 480.96 (ASCII and Modbus f32): clients get an error_update (on ASCII naming the
    raw reply), never the value."""
    inst = pty_sim(rate=0.0, replies={'MODEL?': 'PFC-100 SIM', 'KRDG? B': '+480.96'})
    mb = modbus_tcp()
    mb.set(1, 'input', 40, f32_words(480.96))
    config = NODE + ascii_link(inst.path, pollinterval=0.2) + '''
[[module]]
name = "X"
link = "ls"
class = "Readable"
[[module.parameter]]
name = "value"
datainfo = { type = "double", min = 0, max = 500, unit = "K" }
query = "KRDG? A"
[[module.parameter]]
name = "_model"
datainfo = { type = "string", maxchars = 4 }
query = "MODEL?"
[[module.parameter]]
name = "_sensor_b"
datainfo = { type = "double", max = 100, unit = "K" }
query = "KRDG? B"
''' + modbus_link(f'tcp = "127.0.0.1:{mb.port}"', pollinterval=0.2) \
        + psu_module(cls='Readable') + '''[[module.parameter]]
name = "_temperature"
datainfo = { type = "double", max = 100, unit = "degC" }
table = "input"
address = 40
type = "f32"
'''
    gw = start_gateway(config, 'out-of-range')
    rec = recorders(gw)
    description = describe(rec)
    assert rec.ask('activate') == 'active'
    time.sleep(1.5)
    problems = []
    # Modbus has no reply text: the error may name the value or the registers
    for module, parameter, raw in (('X', '_model', 'PFC-100 SIM'), ('X', '_sensor_b', '480.96'),
                                   ('psu', '_temperature', '')):
        reply = rec.ask(f'read {module}:{parameter}')
        if not reply.startswith(f'error_read {module}:{parameter} ') or raw not in reply:
            problems.append(f'read {module}:{parameter} -> {reply}')
        lines = rec.lines()
        updates = events(lines, module, parameter)
        if updates:
            problems.append(f'{module}:{parameter}: value sent: {updates[0][1][:1]}')
        errs = events(lines, module, parameter, 'error_update')
        if not errs or raw not in errs[0][1][1]:
            problems.append(f'{module}:{parameter}: error_updates {[e[1][:2] for e in errs]}, '
                            f'expected one naming {raw!r}')
    values = events(rec.lines(), 'X', 'value')
    if not values or values[-1][1][0] != 295.0:
        problems.append(f'X:value (in range) did not arrive: {values[-1:]}')
    bad = invalid_values(description, rec.lines())
    if bad:
        problems.append(f'values outside their datainfo: {bad[:3]}')
    assert not problems, '\n'.join(problems)


# --- the new keys --------------------------------------------------------------------

def check_config(tmp_path, text):
    path = tmp_path / 'gateway.toml'
    path.write_text(text)
    return subprocess.run([str(gateway_binary()), '--config', str(path), 'check-config'],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize('key, value, valid', [
    ('retries', 0, True), ('retries', 10, True), ('retries', 11, False),
    ('retries', -1, False),
    ('error_after_failures', 1, True), ('error_after_failures', 1000, True),
    ('error_after_failures', 0, False), ('error_after_failures', 1001, False),
    ('error_after_seconds', 0, True), ('error_after_seconds', 3600, True),
    ('error_after_seconds', 2.5, True), ('error_after_seconds', 86401, False),
    ('error_after_seconds', -1, False),
])
def test_fault_policy_keys_and_their_ranges(tmp_path, key, value, valid):
    text = NODE + ascii_link('/dev/null-not-used', extra=f'{key} = {value}') \
        + lakeshore_module()
    out = check_config(tmp_path, text)
    if valid:
        assert out.returncode == 0, out.stderr
    else:
        assert out.returncode == 2, out
        # a range check names `link[0] ("ls"): key`, a type error `link[0] ("ls").key`
        assert re.search(rf'link\[0\] \("ls"\)(: |\.){key}\b', out.stderr) \
            and 'unknown field' not in out.stderr, out.stderr


def test_module_pollinterval_key(tmp_path):
    text = NODE + ascii_link('/dev/null-not-used') \
        + lakeshore_module().replace('description = "sample temperature"',
                                     'description = "sample temperature"\npollinterval = 5')
    out = check_config(tmp_path, text)
    assert out.returncode == 0, out.stderr
    bad = text.replace('pollinterval = 5', 'pollinterval = 0.01')
    out = check_config(tmp_path, bad)
    assert out.returncode == 2, out
    assert 'pollinterval' in out.stderr and '"T"' in out.stderr, out.stderr


# --- pollinterval per module ---------------------------------------------------------

TWO_SENSORS = '''
[[module]]
name = "A"
link = "ls"
class = "Readable"
{extra}
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", unit = "K" }}
query = "KRDG? A"

[[module]]
name = "B"
link = "ls"
class = "Readable"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", unit = "K" }}
query = "KRDG? B"
'''


def polls_per_sensor(sim, seconds):
    start = len(sim.requests)
    time.sleep(seconds)
    seen = sim.requests[start:]
    return seen.count('KRDG? A'), seen.count('KRDG? B')


def test_client_changes_one_modules_pollinterval(start_gateway, pty_sim):
    """`change A:pollinterval` changes A's polling only: B on the same link goes on."""
    inst = pty_sim(rate=0.0)
    gw = start_gateway(NODE + ascii_link(inst.path, pollinterval=0.2)
                       + TWO_SENSORS.format(extra=''), 'pollinterval-change')
    c = Line(gw)
    assert value_of(c.ask('read B:pollinterval')) == 0.2
    assert c.ask('change A:pollinterval 1000').startswith('changed A:pollinterval [1000')
    assert value_of(c.ask('read A:pollinterval')) == 1000
    assert value_of(c.ask('read B:pollinterval')) == 0.2
    time.sleep(0.5)
    a, b = polls_per_sensor(inst.instrument, 2.0)
    assert a == 0 and b >= 4, f'in 2 s: A polled {a} times (pollinterval 1000), B {b} (0.2)'
    c.close()


def test_module_pollinterval_from_config(start_gateway, pty_sim):
    """`pollinterval` in a [[module]] overrides its link's for that module only."""
    inst = pty_sim(rate=0.0)
    gw = start_gateway(NODE + ascii_link(inst.path, pollinterval=0.2)
                       + TWO_SENSORS.format(extra='pollinterval = 1000'), 'pollinterval-key')
    c = Line(gw)
    assert value_of(c.ask('read A:pollinterval')) == 1000
    assert value_of(c.ask('read B:pollinterval')) == 0.2
    time.sleep(0.5)
    a, b = polls_per_sensor(inst.instrument, 2.0)
    assert a == 0 and b >= 4, f'in 2 s: A polled {a} times (pollinterval 1000), B {b} (0.2)'
    c.close()


# --- error_after_failures, error_after_seconds ---------------------------------------

def test_error_after_failures_counts_failed_transactions(start_gateway, pty_sim, recorders):
    """retries 0, error_after_failures 5: the first failed read gives an error_update at
    once, the ERROR status only after at least 5 failed transactions."""
    inst = pty_sim(rate=0.0)
    sim = inst.instrument
    config = NODE + ascii_link(inst.path, pollinterval=0.2, reconnect_max=0.5,
                               extra='retries = 0\nerror_after_failures = 5') \
        + lakeshore_module()
    gw = start_gateway(config, 'error-after-failures')
    rec = recorders(gw)
    assert rec.ask('activate') == 'active'
    rec.wait_for('update T:status [[1')
    time.sleep(0.5)
    before = rec.mark()
    sim.stall = True
    stall_from = len(sim.exchanges)
    _, t_err, _ = rec.wait_for('error_update T:', since=before, timeout=5)
    unanswered_at_first_error = sum(1 for _, sent in sim.exchanges[stall_from:] if sent is None)
    _, t_status, line = rec.wait_for('update T:status [[4', since=before, timeout=15)
    unanswered = sum(1 for _, sent in sim.exchanges[stall_from:] if sent is None)
    sim.stall = False
    assert unanswered_at_first_error <= 3, 'the first failure was not reported at once'
    assert unanswered >= 5, f'ERROR after {unanswered} unanswered exchanges: {line}'
    rec.wait_for('update T:status [[1', since=before, timeout=5)


def test_error_after_seconds_waits_for_a_lasting_fault(start_gateway, pty_sim, recorders):
    """error_after_failures 1, error_after_seconds 3: a stall gives the error_update at
    once and the ERROR status only after the fault lasted 3 s."""
    inst = pty_sim(rate=0.0)
    config = NODE + ascii_link(inst.path, pollinterval=0.2, reconnect_max=0.5,
                               extra='retries = 0\nerror_after_failures = 1\n'
                                     'error_after_seconds = 3') \
        + lakeshore_module()
    gw = start_gateway(config, 'error-after-seconds')
    rec = recorders(gw)
    assert rec.ask('activate') == 'active'
    rec.wait_for('update T:status [[1')
    time.sleep(0.5)
    before = rec.mark()
    inst.instrument.stall = True
    stalled = time.monotonic()
    _, t_err, _ = rec.wait_for('error_update T:', since=before, timeout=5)
    _, t_status, line = rec.wait_for('update T:status [[4', since=before, timeout=10)
    inst.instrument.stall = False
    assert t_err - stalled < 1.5, 'the failed read was not reported at once'
    assert t_status - t_err >= 2.5, \
        f'ERROR {t_status - t_err:.2f} s after the first failure (error_after_seconds 3)'
    rec.wait_for('update T:status [[1', since=before, timeout=5)


def test_a_section_of_another_protocol_is_refused(tmp_path):
    """`protocol` is a tagged choice: `[link.modbus]` on an ASCII link is an error."""
    text = NODE + ascii_link('/dev/null-not-used') + '[link.modbus]\nunit_id = 3\n' \
        + lakeshore_module()
    out = check_config(tmp_path, text)
    assert out.returncode == 2, out
    assert '[link.modbus] belongs to protocol = "modbus", but this link has protocol = ' \
        '"ascii"' in out.stderr, out.stderr


def test_a_failed_read_back_does_not_fail_a_write_the_device_took(start_gateway, pty_sim):
    """point 9: the device took the setpoint, only the read-back reply is garbled: the
    client gets `changed` with the written value, not an error, and the device has it."""
    inst = pty_sim(rate=0.0)
    sim = inst.instrument
    gw = start_gateway(NODE + ascii_link(inst.path) + lakeshore_module(), 'readback')
    c = Line(gw)
    sim.replies['SETP? 1'] = '#garbage'
    reply = c.ask('change T:target 250')
    assert reply.startswith('changed T:target [250'), reply
    with sim.lock:
        assert sim.setpoint == 250.0
    c.close()


def test_status_is_not_ok_before_a_value_was_read_after_a_reconnect(start_gateway, pty_sim,
                                                                     recorders):
    """point 9: after the device comes back, the status leaves ERROR only together with
    or after the first value read in the new session, never before it."""
    inst = pty_sim(rate=0.0)
    sim = inst.instrument
    gw = start_gateway(NODE + ascii_link(inst.path) + lakeshore_module(), 'ok-after-read')
    rec = recorders(gw)
    assert rec.ask('activate') == 'active'
    stalled = rec.mark()
    sim.stall = True
    rec.wait_for('update T:status [[4', since=stalled, timeout=10)
    start = rec.mark()
    sim.stall = False
    rec.wait_for('update T:status [[1', since=start, timeout=10)
    lines = [l for _, l in rec.lines(start)]
    first_ok = next(i for i, l in enumerate(lines) if l.startswith('update T:status [[1'))
    first_value = next((i for i, l in enumerate(lines) if l.startswith('update T:value [')),
                       None)
    assert first_value is not None and first_value < first_ok, lines[:first_ok + 1]


def test_a_steady_value_is_sent_with_a_recent_timestamp(start_gateway, pty_sim, recorders):
    """a value that does not change is still polled: a client that activates later gets
    it with the time it was last confirmed (within the 1 s refresh and a poll), not the
    time it was first read; clients still get no update while it stays the same"""
    inst = pty_sim(rate=0.0, temperature=77.0)
    gw = start_gateway(NODE + ascii_link(inst.path) + lakeshore_module(), 'steady')
    early = Line(gw)
    assert early.ask('read T:value').startswith('reply T:value [77.0,')
    time.sleep(4.0)   # many polls of the same value
    rec = recorders(gw)
    assert rec.ask('activate') == 'active'
    (t, data), = events(rec.lines(), 'T', 'value')[:1]
    assert data[0] == 77.0
    age = time.time() - data[1]['t']
    assert age < 1.0 + 0.3 + 0.5, f'activate gave a value {age:.1f} s old'
    start = rec.mark()
    time.sleep(2.5)
    again = events(rec.lines(start), 'T', 'value')
    assert not again, f'unchanged value sent again: {again[:3]}'
    # and the refreshes do not fill the history: a steady run is its first and last
    # point (a poll that failed on a loaded machine adds a gap and a new run)
    with urllib.request.urlopen(
            f'http://{gw.host}:{gw.port}/history?parameter=T:value', timeout=5) as r:
        points = json.load(r)['parameters']['T:value']
    gaps = sum(1 for _, v in points if v is None)
    assert all(v in (77.0, None) for _, v in points), points
    assert len(points) <= 2 + 3 * gaps, points
    values = [p for p in points if p[1] is not None]
    assert values and time.time() - values[-1][0] < 2.0, points
    early.close()
