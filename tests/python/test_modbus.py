"""Modbus devices defined in config against a real Modbus server (pymodbus): Modbus
TCP on loopback and Modbus RTU over a socat pty pair, every data type and word
order, coalesced block reads, writes, exception replies, a silent unit, a server
that goes away and comes back."""

import json
import os
import shutil
import signal
import struct
import subprocess
import time

import pytest

from modbus_sim import ModbusSim
from rawsecop import Line

WAIT = 5.0


def words(fmt, value, word_order='big', byte_order='big'):
    raw = struct.pack('>' + fmt, value)
    regs = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if byte_order == 'little':
        regs = [r[::-1] for r in regs]
    if word_order == 'little':
        regs = regs[::-1]
    return [int.from_bytes(r, 'big') for r in regs]


MODULES = '''
[[module]]
name = "psu"
link = "plc"
class = "Writable"
description = "power supply on Modbus"
[[module.parameter]]
name = "value"
datainfo = { type = "double", unit = "V" }
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
datainfo = { type = "double", unit = "A" }
table = "input"
address = 2
type = "i16"
scale = 0.01
[[module.parameter]]
name = "_energy"
datainfo = { type = "int", min = 0, max = 9007199254740991 }
table = "input"
address = 4
type = "u64"
[[module.parameter]]
name = "_count"
datainfo = { type = "int", min = 0, max = 4294967295 }
table = "input"
address = 8
type = "u32"
word_order = "little"
[[module.parameter]]
name = "_temperature"
datainfo = { type = "double", unit = "degC" }
table = "input"
address = 12
type = "f64"
word_order = "little"
byte_order = "little"
[[module.parameter]]
name = "_offset"
datainfo = { type = "int", min = -2147483648, max = 2147483647 }
table = "input"
address = 16
type = "i32"
[[module.parameter]]
name = "_big"
datainfo = { type = "int", min = -9007199254740991, max = 9007199254740991 }
table = "input"
address = 24
type = "i64"
[[module.parameter]]
name = "_status_word"
datainfo = { type = "int", min = 0, max = 65535 }
table = "input"
address = 20
type = "u16"
[[module.parameter]]
name = "_overtemp"
datainfo = { type = "bool" }
table = "input"
address = 20
type = "u16"
bit = 3
[[module.parameter]]
name = "_serial"
datainfo = { type = "string", maxchars = 8 }
table = "holding"
address = 10
type = "string"
length = 4
[[module.parameter]]
name = "_output"
datainfo = { type = "bool" }
table = "coil"
address = 0
type = "bool"
writable = true
[[module.parameter]]
name = "_interlock"
datainfo = { type = "bool" }
table = "discrete"
address = 1
type = "bool"
[[module.parameter]]
name = "_mode"
datainfo = { type = "enum", members = { off = 0, cv = 1, cc = 2 } }
table = "holding"
address = 30
writable = true
[[module.parameter]]
name = "_limit"
datainfo = { type = "int", min = -100000, max = 100000 }
table = "holding"
address = 32
type = "i32"
writable = true

[[module]]
name = "broken"
link = "plc"
class = "Readable"
[[module.parameter]]
name = "value"
datainfo = { type = "int", min = 0, max = 4294967295 }
table = "input"
address = 299
type = "u32"
'''


def config(transport, modules=MODULES, unit_id=1, timeout=0.5):
    return f'''
[node]
equipment_id = "modbus_test"
description = "Modbus devices"

[[link]]
name = "plc"
protocol = "modbus"
{transport}
timeout = {timeout}
reconnect_min = 0.1
reconnect_max = 0.5
pollinterval = 0.2
[link.modbus]
unit_id = {unit_id}
''' + modules


def fill(sim, unit=1):
    sim.set(unit, 'input', 0, words('f', 12.25))
    sim.set(unit, 'input', 2, words('h', -150))
    sim.set(unit, 'input', 4, words('Q', 123456789012))
    sim.set(unit, 'input', 8, words('I', 3000000000, word_order='little'))
    sim.set(unit, 'input', 12, words('d', -40.125, word_order='little', byte_order='little'))
    sim.set(unit, 'input', 16, words('i', -123456))
    sim.set(unit, 'input', 24, words('q', -9876543210))
    sim.set(unit, 'input', 20, [0b1000])
    sim.set(unit, 'holding', 10, [0x5053, 0x552D, 0x3432, 0])   # "PSU-42"
    sim.set(unit, 'holding', 0, words('f', 5.0))
    sim.set(unit, 'holding', 30, [2])
    sim.set(unit, 'discrete', 1, [1])


def value(line):
    assert line.startswith(('reply ', 'changed ', 'update ')), line
    return json.loads(line.split(' ', 2)[2])[0]


@pytest.fixture
def tcp_sim():
    sim = ModbusSim(units=(1,))
    fill(sim)
    sim.start_tcp()
    yield sim
    sim.stop()


def test_every_type_and_order_over_modbus_tcp(start_gateway, tcp_sim):
    gw = start_gateway(config(f'tcp = "127.0.0.1:{tcp_sim.port}"'), 'tcp')
    c = Line(gw)
    expected = {
        'value': 12.25, '_current': -1.5, '_energy': 123456789012, '_count': 3000000000,
        '_temperature': -40.125, '_offset': -123456, '_big': -9876543210,
        '_status_word': 8, '_overtemp': True, '_serial': 'PSU-42', '_output': False,
        '_interlock': True, '_mode': 2, 'target': 5.0,
    }
    for name, want in expected.items():
        got = value(c.ask(f'read psu:{name}'))
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (name, got)


def test_reads_are_coalesced_into_blocks(start_gateway, tcp_sim):
    start_gateway(config(f'tcp = "127.0.0.1:{tcp_sim.port}"'), 'blocks')
    time.sleep(1.0)   # several poll cycles
    reads = [r for r in tcp_sim.requests if r[1] == 4 and r[0] == 1]
    assert reads, tcp_sim.requests[:10]
    # input registers 0..27 (value .. _big) come in one request, not eleven
    assert any(address == 0 and count >= 28 for (_, _, address, count) in reads), reads[:10]
    per_cycle = [r for r in reads if r[2] == 0]
    assert len(per_cycle) >= 3, 'polled every 0.2 s'


def test_writes_use_the_right_function_codes(start_gateway, tcp_sim):
    gw = start_gateway(config(f'tcp = "127.0.0.1:{tcp_sim.port}"'), 'writes')
    c = Line(gw)
    r = c.ask('change psu:target 42.5')
    assert value(r) == 42.5, r
    assert tcp_sim.get(1, 'holding', 0, 2) == words('f', 42.5)
    assert value(c.ask('change psu:_output true')) is True
    assert tcp_sim.get(1, 'coil', 0, 1) == [1]
    assert value(c.ask('change psu:_mode "cv"')) == 1
    assert tcp_sim.get(1, 'holding', 30, 1) == [1]
    assert value(c.ask('change psu:_limit -70000')) == -70000
    assert tcp_sim.get(1, 'holding', 32, 2) == words('i', -70000)
    r = c.ask('change psu:value 3')
    assert r.startswith('error_change psu:value ["ReadOnly"'), r
    r = c.ask('change psu:target 500')
    assert r.startswith('error_change psu:target ["RangeError"'), r


def test_exception_replies_map_to_errors_with_the_code(start_gateway, tcp_sim):
    gw = start_gateway(config(f'tcp = "127.0.0.1:{tcp_sim.port}"'), 'exception')
    c = Line(gw)
    r = c.ask('read broken:value')
    assert r.startswith('error_read broken:value ["HardwareError","Modbus exception 0x02'), r
    # The exception persists: after error_after_failures (3) polls the status is ERROR,
    # with the episode's first text.
    deadline = time.monotonic() + 5
    while (status := value(c.ask('read broken:status')))[0] != 400:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert 'Modbus exception 0x02' in status[1], status
    # the other module on the link is fine
    assert value(c.ask('read psu:value')) == pytest.approx(12.25)
    assert value(c.ask('read psu:status'))[0] == 100


def test_a_silent_unit_times_out_without_hanging(start_gateway, tcp_sim):
    modules = MODULES.split('[[module]]\nname = "broken"')[0]
    gw = start_gateway(config(f'tcp = "127.0.0.1:{tcp_sim.port}"', modules=modules, unit_id=9,
                              timeout=0.4), 'ghost')
    c = Line(gw)
    started = time.monotonic()
    r = c.ask('read psu:value', timeout=5)
    assert r.startswith('error_read psu:value ["'), r
    assert '"TimeoutError"' in r or '"CommunicationFailed"' in r, r
    assert time.monotonic() - started < 3
    assert c.ask('ping').startswith('pong')


def test_server_going_away_and_coming_back(start_gateway, tcp_sim, client_factory):
    gw = start_gateway(config(f'tcp = "127.0.0.1:{tcp_sim.port}"'), 'restart')
    c = Line(gw)
    assert c.ask('activate psu') == 'active psu'
    # a frappy client sees Modbus values change
    client = client_factory(gw)
    seen = []
    client.client.register_callback(('psu', 'value'), updateEvent=lambda *a: seen.append(a[2]))
    tcp_sim.set(1, 'input', 0, words('f', 13.5))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and 13.5 not in seen:
        time.sleep(0.05)
    assert 13.5 in seen, seen[-5:]
    client.close()
    port = tcp_sim.port
    tcp_sim.stop()
    # The link cannot be opened: the status goes ERROR at once (before or after the
    # values' error_updates, which come block by block).
    seen = c.wait_for_all(['error_update psu:value', 'update psu:status [[400'], timeout=5)
    err = seen['error_update psu:value']
    assert '"CommunicationFailed"' in err or '"TimeoutError"' in err, err
    again = ModbusSim(units=(1,))
    fill(again)
    again.set(1, 'input', 0, words('f', 7.0))
    again.start_tcp(port)
    try:
        # values and the status come back (the status with the first block read)
        c.wait_for_all(['update psu:value [7.0', 'update psu:status [[100'], timeout=10)
    finally:
        again.stop()


@pytest.mark.skipif(shutil.which('socat') is None, reason='socat is not installed')
def test_modbus_rtu_two_units_on_one_bus_over_a_pty_pair(start_gateway, tmp_path):
    bus_gw, bus_dev = str(tmp_path / 'bus-gateway'), str(tmp_path / 'bus-device')
    socat = subprocess.Popen(['socat', f'pty,raw,echo=0,link={bus_gw}', f'pty,raw,echo=0,link={bus_dev}'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim = ModbusSim(units=(1, 2))
    try:
        deadline = time.monotonic() + 5
        while not (os.path.exists(bus_gw) and os.path.exists(bus_dev)) and time.monotonic() < deadline:
            time.sleep(0.05)
        fill(sim, 1)
        sim.set(2, 'input', 0, words('f', 3.75))
        sim.start_rtu(bus_dev)
        flow = '''
[[module]]
name = "flow"
link = "plc"
class = "Readable"
unit_id = 2
[[module.parameter]]
name = "value"
datainfo = { type = "double", unit = "ml/min" }
table = "input"
address = 0
type = "f32"
'''
        modules = MODULES.split('[[module]]\nname = "broken"')[0] + flow
        gw = start_gateway(config(f'serial = "{bus_gw}"\nbaud = 19200', modules=modules, timeout=1.0), 'rtu')
        c = Line(gw)
        assert value(c.ask('read psu:value')) == pytest.approx(12.25)
        assert value(c.ask('read flow:value')) == pytest.approx(3.75)
        assert value(c.ask('change psu:target 9.5')) == 9.5
        assert sim.get(1, 'holding', 0, 2) == words('f', 9.5)
    finally:
        sim.stop()
        socat.send_signal(signal.SIGTERM)
        socat.wait(5)
