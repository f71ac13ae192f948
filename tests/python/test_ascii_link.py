"""ASCII instruments defined in config, over a real pseudo-terminal and over TCP,
with the instrument simulator of instruments.py on the other end: the full path
client -> node -> link -> pty/socket -> simulator and back, and the faults."""

import subprocess
import time

import pytest

from conftest import gateway_binary
from instruments import LakeShoreSim, PtyInstrument, TcpInstrument
from rawsecop import Line, value_of

WAIT = 5.0


def link_config(transport, timeout=0.5, extra_module=True):
    text = f'''
[node]
equipment_id = "ascii_test"
description = "LakeShore-like controller on an ASCII link"

[[link]]
name = "ls336"
protocol = "ascii"
{transport}
timeout = {timeout}
reconnect_min = 0.1
reconnect_max = 0.5
pollinterval = 0.2
[link.ascii]
write_terminator = "\\r\\n"
read_terminator = "\\r\\n"
identify = "*IDN?"
identify_expect = "^LSCI,MODEL336"

[[module]]
name = "T_A"
link = "ls336"
class = "Drivable"
description = "sample temperature"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", unit = "K" }}
query = "KRDG? A"
reply = '^\\+?(?P<value>[-0-9.]+)$'
[[module.parameter]]
name = "target"
datainfo = {{ type = "double", min = 0, max = 400, unit = "K" }}
query = "SETP? 1"
write = "SETP 1,{{value:.3f}}"
[[module.parameter]]
name = "heater_range"
datainfo = {{ type = "enum", members = {{ off = 0, low = 1, medium = 2, high = 3 }} }}
query = "RANGE? 1"
write = "RANGE 1,{{value:d}}"
poll = "slow"
[[module.parameter]]
name = "heater"
datainfo = {{ type = "double", unit = "%" }}
query = "HTR? 1"
[[module.command]]
name = "_identify"
send = "*IDN?"
reply = "^(.*)$"
result = {{ type = "string" }}
[module.drive]
tolerance = 0.5
settle = 0.2
timeout = 60
stop = "STOP"
'''
    if extra_module:
        text += '''
[[module]]
name = "p"
driver = "sim_pressure"
[module.settings]
pollinterval = 0.1
'''
    return text


@pytest.fixture
def pty_instrument(tmp_path):
    sim = LakeShoreSim(rate=100.0)
    inst = PtyInstrument(sim, str(tmp_path / 'ls336.tty')).start()
    yield inst
    inst.stop()


def test_serial_over_a_real_pty_full_path(start_gateway, pty_instrument, client_factory):
    gw = start_gateway(link_config(f'serial = "{pty_instrument.path}"\nbaud = 57600\nparity = "odd"\ndata_bits = 7'), 'pty')
    c = Line(gw)
    reply = c.ask('read T_A:value')
    assert reply.startswith('reply T_A:value [295.0,'), reply
    assert c.ask('read T_A:heater_range').startswith('reply T_A:heater_range [0,')
    r = c.ask('do T_A:_identify')
    assert value_of(r) == 'LSCI,MODEL336,SIM0001,1.0'
    assert c.ask('activate T_A') == 'active T_A'
    c.send('change T_A:target 250')
    busy = c.wait_for('update T_A:status [[300')
    changed = c.wait_for('changed T_A:target')
    assert value_of(changed) == 250.0
    assert busy
    c.wait_for('update T_A:status [[100', timeout=10)
    assert abs(value_of(c.ask('read T_A:value')) - 250.0) <= 0.5
    assert pty_instrument.instrument.setpoint == 250.0
    # enum by name goes out as its number
    assert c.ask('change T_A:heater_range "high"').startswith('changed T_A:heater_range [3,')
    assert pty_instrument.instrument.range == 3, 'read back after the write, so it was written'

    # stop sends the configured command
    c.ask('change T_A:target 100')
    r = c.ask('do T_A:stop')
    assert r.startswith('done T_A:stop [null,'), r
    deadline = time.monotonic() + 2
    while 'STOP' not in pty_instrument.instrument.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert 'STOP' in pty_instrument.instrument.requests
    # frappy's client sees values change on the serial module
    client = client_factory(gw)
    seen = []
    client.client.register_callback(('T_A', 'value'), updateEvent=lambda *a: seen.append(a[2]))
    client.client.setParameter('T_A', 'target', 200.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (seen and abs(seen[-1] - 200.0) < 0.5):
        time.sleep(0.05)
    assert seen and abs(seen[-1] - 200.0) < 0.5, seen[-5:]
    c.close()


def test_tcp_link(start_gateway):
    inst = TcpInstrument(LakeShoreSim(rate=0.0, temperature=77.0)).start()
    try:
        gw = start_gateway(link_config(f'tcp = "127.0.0.1:{inst.port}"'), 'tcp')
        c = Line(gw)
        assert value_of(c.ask('read T_A:value')) == 77.0
        assert c.ask('change T_A:target 80').startswith('changed T_A:target [80.0,')
        assert inst.instrument.setpoint == 80.0
        c.close()
    finally:
        inst.stop()


def test_pulled_cable_errors_once_and_recovers(start_gateway, pty_instrument):
    gw = start_gateway(link_config(f'serial = "{pty_instrument.path}"'), 'pull')
    c = Line(gw)
    assert c.ask('activate') == 'active'
    c.wait_for('update p:value')
    pty_instrument.stop()
    err = c.wait_for('error_update T_A:value')
    assert '"CommunicationFailed"' in err, err
    status = c.wait_for('update T_A:status [[400')
    assert 'link down' in status
    r = c.ask('read T_A:value')
    assert r.startswith('error_read T_A:value ["CommunicationFailed"'), r
    # other devices keep updating, and the error is not repeated in a flood
    lines = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        line = c.line(0.2)
        if line:
            lines.append(line)
    assert any(l.startswith('update p:value') for l in lines), lines[-5:]
    assert sum(l.startswith('error_update T_A:value') for l in lines) == 0, lines
    # the instrument comes back at the same path: values flow again, no restart
    pty_instrument.start()
    c.wait_for('update T_A:value [', timeout=10)
    c.wait_for('update T_A:status [[100', timeout=10)
    assert c.ask('read T_A:value').startswith('reply T_A:value [')
    c.close()


def test_stalled_device_times_out_without_hanging_anyone(start_gateway, pty_instrument):
    gw = start_gateway(link_config(f'serial = "{pty_instrument.path}"', timeout=0.5), 'stall')
    c = Line(gw)
    other = Line(gw)
    assert c.ask('read T_A:value').startswith('reply')
    pty_instrument.instrument.stall = True
    started = time.monotonic()
    c.send('read T_A:value')
    # meanwhile another client is served at once
    assert other.ask('ping x', timeout=1.0).startswith('pong x')
    assert other.ask('read p:value', timeout=1.0).startswith('reply p:value')
    r = c.wait_for('error_read T_A:value', timeout=5)
    assert '"TimeoutError"' in r or '"CommunicationFailed"' in r, r
    assert time.monotonic() - started < 4.0
    pty_instrument.instrument.stall = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = c.ask('read T_A:value')
        if r.startswith('reply'):
            break
        time.sleep(0.2)
    assert r.startswith('reply T_A:value'), r
    c.close()
    other.close()


def test_garbled_reply_is_a_clear_error(start_gateway, pty_instrument):
    gw = start_gateway(link_config(f'serial = "{pty_instrument.path}"'), 'garble')
    c = Line(gw)
    pty_instrument.instrument.garble = True
    r = c.ask('read T_A:value')
    assert r.startswith('error_read T_A:value ["HardwareError"'), r
    assert 'does not match' in r and '#?!ERR' in r, r
    pty_instrument.instrument.garble = False
    assert c.ask('read T_A:value').startswith('reply T_A:value [295.0')
    c.close()


def test_late_reply_does_not_shift_later_answers(start_gateway, pty_instrument):
    sim = pty_instrument.instrument
    sim.rate = 0.0
    sim.setpoint = 100.0
    gw = start_gateway(link_config(f'serial = "{pty_instrument.path}"', timeout=0.4), 'late')
    c = Line(gw)
    sim.late = True
    sim.late_delay = 0.8
    r = c.ask('read T_A:value')
    assert r.startswith('error_read T_A:value ["TimeoutError"'), r
    sim.late = False
    time.sleep(1.0)   # the late answer (295) arrives now, after the timeout
    for _ in range(5):
        r = c.ask('read T_A:target')
        if r.startswith('reply'):
            break
        time.sleep(0.2)
    assert value_of(r) == 100.0, f'a late KRDG answer was taken for SETP?: {r}'
    assert value_of(c.ask('read T_A:value')) == 295.0
    c.close()


@pytest.mark.parametrize('change, expected', [
    (('write = "SETP 1,{value:.3f}"', 'write = "SETP 1,{val}"'),
     'link[0] ("ls336"): module "T_A": parameter[1] ("target").write: template "SETP 1,{val}": unknown placeholder {val}'),
    (("(?P<value>[-0-9.]+)$'", "(?P<value>[-0-9.'"),
     'link[0] ("ls336"): module "T_A": parameter[0] ("value").reply: invalid regular expression'),
    (('link = "ls336"', 'link = "ls999"'), 'module[0] ("T_A").link: no [[link]] is named "ls999"'),
    (('timeout = 0.5', 'timeout = -1'), 'link[0] ("ls336"): timeout: must be a positive number'),
    (('tolerance = 0.5', 'tolerance = 0.5\nspeed = 3'), 'unknown field `speed`'),
])
def test_check_config_names_file_link_module_and_key(tmp_path, change, expected):
    text = link_config('serial = "/dev/null-not-used"')
    old, new = change
    assert old in text, old
    path = tmp_path / 'broken.toml'
    path.write_text(text.replace(old, new, 1))
    out = subprocess.run([str(gateway_binary()), '--config', str(path), 'check-config'],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert str(path) in out.stderr, out.stderr
    assert expected in out.stderr, out.stderr


def test_node_timeout_answers_queued_requests_without_the_link(start_gateway, pty_instrument):
    """The node gives up on a slow device after `device_timeout` and answers the client;
    requests still queued for the link by then are not sent to the instrument at all."""
    sim = pty_instrument.instrument
    config = link_config(f'serial = "{pty_instrument.path}"', timeout=3.0)
    config = config.replace('pollinterval = 0.2', 'pollinterval = 600')
    config = config.replace('description = "LakeShore-like controller on an ASCII link"',
                            'description = "LakeShore-like controller on an ASCII link"\n'
                            'device_timeout = 0.3', 1)
    gw = start_gateway(config, 'node-timeout')
    c = Line(gw)
    assert c.ask('read T_A:value').startswith('reply T_A:value [295.0')
    sim.late_delay = 1.5
    sim.late = True
    before = sim.requests.count('KRDG? A')
    sent = time.monotonic()
    c.send('read T_A:value\nread T_A:value\nread T_A:value\nread T_A:value')
    for _ in range(4):
        r = c.line(timeout=WAIT)
        # the node's timeout, not the link's (3 s)
        assert r.startswith('error_read T_A:value ["TimeoutError","the device did not answer'), r
    # not before the node's 0.3 s, and before the device's late answer (1.5 s) arrived
    took = time.monotonic() - sent
    assert 0.3 <= took < 1.5, took
    time.sleep(2.0)   # the one transaction under way ends (late answer after 1.5 s)
    sim.late = False
    assert sim.requests.count('KRDG? A') - before == 1, sim.requests[-6:]
    r = c.ask('read T_A:value')
    assert r.startswith('reply T_A:value [295.0'), r
    c.close()
