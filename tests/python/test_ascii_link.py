"""ASCII instruments defined in config, over a real pseudo-terminal and over TCP,
with the instrument simulator of instruments.py on the other end: the full path
client -> node -> link -> pty/socket -> simulator and back, and the faults."""

import json
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
name = "_heater_range"
datainfo = {{ type = "enum", members = {{ off = 0, low = 1, medium = 2, high = 3 }} }}
query = "RANGE? 1"
write = "RANGE 1,{{value:d}}"
poll = "slow"
[[module.parameter]]
name = "_heater"
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
    assert c.ask('read T_A:_heater_range').startswith('reply T_A:_heater_range [0,')
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
    assert c.ask('change T_A:_heater_range "high"').startswith('changed T_A:_heater_range [3,')
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
    (('timeout = 0.5', 'timeout = -1'),
     'link[0] ("ls336"): timeout: -1 s is outside the valid range 0.001 ..= 86400 s'),
    (('tolerance = 0.5', 'tolerance = 0.5\nspeed = 3'), 'unknown field `speed`'),
    # constant text that could never be sent as one line (TOML decodes the escapes)
    (('write = "SETP 1,{value:.3f}"', 'write = "SETP\\t{value:.3f}"'),
     'link[0] ("ls336"): module "T_A": parameter[1] ("target").write: template '
     '"SETP\\t{value:.3f}": character 0x09 (TAB) cannot be sent to the instrument'),
    (('write = "SETP 1,{value:.3f}"', 'write = "SETP 1,{value:.3f} \u00b0"'),
     'parameter[1] ("target").write: template "SETP 1,{value:.3f} \u00b0": '
     "character U+00B0 ('\u00b0') cannot be sent to the instrument"),
    (('query = "KRDG? A"', 'query = "KRDG? A\\r\\nSETP 1,0"'),
     'module "T_A": parameter[0] ("value").query: "KRDG? A\\r\\nSETP 1,0": '
     'character 0x0D (CR) cannot be sent to the instrument (it would end the line on this link)'),
    (('send = "*IDN?"', 'send = "*IDN?\\u0000"'),
     'module "T_A": command[0] ("_identify").send: template "*IDN?\\0": '
     'character 0x00 (NUL) cannot be sent to the instrument'),
    (('stop = "STOP"', 'stop = "STOP\\u001b"'),
     'module "T_A": drive.stop: "STOP\\u{1b}": character 0x1B (ESC) cannot be sent'),
    (('identify = "*IDN?"', 'identify = "*IDN?"\ninit = ["MODE 1", "MODE\\n2"]'),
     'link[0] ("ls336"): ascii.init[1]: "MODE\\n2": character 0x0A (LF) cannot be sent'),
    (('read_terminator = "\\r\\n"', 'read_terminator = ","'),
     'parameter[1] ("target").write: template "SETP 1,{value:.3f}": '
     "character 0x2C (',') cannot be sent to the instrument (it would end the line on this link)"),
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


# --- no value can inject a second command into an instrument -----------------------

INJECTION_CONFIG = '''
[node]
equipment_id = "ascii_injection_test"
description = "string parameters and Communicators on ASCII links"

[[link]]
name = "crlf"
protocol = "ascii"
serial = "{crlf}"
timeout = 0.5
pollinterval = 600
[link.ascii]
write_terminator = "\\r\\n"
read_terminator = "\\r\\n"

[[module]]
name = "X"
link = "crlf"
class = "Writable"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", unit = "K" }}
query = "KRDG? A"
[[module.parameter]]
name = "target"
datainfo = {{ type = "double", min = 0, max = 400, unit = "K" }}
query = "SETP? 1"
write = "SETP 1,{{value:.3f}}"
[[module.parameter]]
name = "_label"
datainfo = {{ type = "string", isUTF8 = true }}
query = "LABEL?"
write = "LABEL {{value}}"

[[module]]
name = "X_io"
link = "crlf"
class = "Communicator"
[[module.command]]
name = "communicate"
send = "{{value}}"
reply = "^(.*)$"
argument = {{ type = "string", isUTF8 = true }}
result = {{ type = "string" }}

[[link]]
name = "custom"
protocol = "ascii"
serial = "{custom}"
timeout = 0.5
pollinterval = 600
[link.ascii]
write_terminator = ";"
read_terminator = "#"

[[module]]
name = "Y"
link = "custom"
class = "Writable"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", unit = "K" }}
query = "KRDG? A"
[[module.parameter]]
name = "target"
datainfo = {{ type = "double", min = 0, max = 400, unit = "K" }}
query = "SETP? 1"
write = "SETP 1,{{value:.3f}}"
[[module.parameter]]
name = "_label"
datainfo = {{ type = "string", isUTF8 = true }}
query = "LABEL?"
write = "LABEL {{value}}"
'''

CONTROL_NAMES = ['NUL', 'SOH', 'STX', 'ETX', 'EOT', 'ENQ', 'ACK', 'BEL', 'BS', 'TAB', 'LF', 'VT',
                 'FF', 'CR', 'SO', 'SI', 'DLE', 'DC1', 'DC2', 'DC3', 'DC4', 'NAK', 'SYN', 'ETB',
                 'CAN', 'EM', 'SUB', 'ESC', 'FS', 'GS', 'RS', 'US']

# (character, how the error names it)
FORBIDDEN = [(chr(b), f'0x{b:02X} ({name})') for b, name in enumerate(CONTROL_NAMES)]
FORBIDDEN += [('\x7f', '0x7F (DEL)'), ('\u00e9', "U+00E9 ('\u00e9')"),
              ('\u20ac', "U+20AC ('\u20ac')"), ('\u0085', 'U+0085'), ('\u2028', 'U+2028'),
              ('\U0001F600', "U+1F600 ('\U0001F600')")]


class Injection:
    """The gateway of INJECTION_CONFIG, its two pty instruments, and a raw client."""

    def __init__(self, gw, crlf, custom):
        self.gw, self.crlf, self.custom = gw, crlf, custom
        self.client = Line(gw)

    @staticmethod
    def settle(inst, quiet=0.3, limit=5.0):
        """Wait until `inst` received nothing for `quiet` s (the start-up polls are
        over; pollinterval is 600 s); return everything it received."""
        deadline = time.monotonic() + limit
        seen, since = bytes(inst.received), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = bytes(inst.received)
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return seen

    def refused(self, request, named):
        """`request` is answered with a RangeError naming the character."""
        reply = self.client.ask(request)
        action, _, rest = reply.partition(' ')
        assert action.startswith('error_'), f'{request!r} was not refused: {reply}'
        _, _, data = rest.partition(' ')
        cls, text, _ = json.loads(data)
        assert cls == 'RangeError', reply
        assert f'character {named}' in text, reply
        assert 'cannot be sent to the instrument' in text, reply


@pytest.fixture(scope='module')
def injection(tmp_path_factory, start_module_gateway):
    tmp = tmp_path_factory.mktemp('injection')
    crlf = PtyInstrument(LakeShoreSim(rate=0.0, temperature=10.0), str(tmp / 'crlf.tty')).start()
    custom = PtyInstrument(LakeShoreSim(rate=0.0, temperature=20.0), str(tmp / 'custom.tty'),
                           terminator=b';', reply_terminator=b'#').start()
    try:
        gw = start_module_gateway(INJECTION_CONFIG.format(crlf=crlf.path, custom=custom.path),
                                  'injection')
        setup = Injection(gw, crlf, custom)
        # both links work: values are read and a clean write arrives as one line
        assert value_of(setup.client.ask('read X:value')) == 10.0
        assert value_of(setup.client.ask('read Y:value')) == 20.0
        r = setup.client.ask('change Y:_label "clean label"')
        assert r.startswith('changed Y:_label ["clean label",'), r
        assert b'LABEL clean label;' in bytes(custom.received)
        yield setup
        setup.client.close()
    finally:
        crlf.stop()
        custom.stop()


@pytest.mark.parametrize('char, named', FORBIDDEN, ids=[n.split(' ')[0] for _, n in FORBIDDEN])
def test_no_value_injects_a_command_over_a_real_pty(injection, char, named):
    """`change X:_label "x<char>SETP 9999.000"` with `write = "LABEL {value}"` would be
    a second command past the target limit (max 400); `communicate` likewise. Both are
    refused with a RangeError and the instrument receives nothing at all."""
    sim = injection.crlf.instrument
    before = injection.settle(injection.crlf)
    value = json.dumps(f'x{char}SETP 9999.000')
    injection.refused(f'change X:_label {value}', named)
    injection.refused(f'do X_io:communicate {json.dumps(f"VAL 7{char}SETP 1,9999")}', named)
    # a character at the start or the end of the line is refused just as well
    injection.refused(f'change X:_label {json.dumps(char + "SETP 1,9999")}', named)
    injection.refused(f'do X_io:communicate {json.dumps("SETP 1,9999" + char)}', named)
    time.sleep(0.2)
    assert bytes(injection.crlf.received) == before, \
        f'the instrument received {bytes(injection.crlf.received)[len(before):]!r}'
    assert sim.setpoint == 10.0 and sim.label != 'x'


def test_communicate_with_embedded_line_ends_is_refused(injection):
    sim = injection.crlf.instrument
    before = injection.settle(injection.crlf)
    injection.refused('do X_io:communicate "VAL 7\\r\\nSETP 1"', '0x0D (CR)')
    injection.refused('change X:_label "x\\nSETP 9999.000"', '0x0A (LF)')
    time.sleep(0.2)
    assert bytes(injection.crlf.received) == before
    assert sim.setpoint == 10.0
    # the same module still works: a clean line is sent as one line and answered
    r = injection.client.ask('do X_io:communicate "*IDN?"')
    assert value_of(r) == 'LSCI,MODEL336,SIM0001,1.0', r
    r = injection.client.ask('change X:_label "x SETP 9999.000"')
    assert r.startswith('changed X:_label ["x SETP 9999.000",'), r
    assert bytes(injection.crlf.received).endswith(b'LABEL x SETP 9999.000\r\nLABEL?\r\n')
    assert sim.setpoint == 10.0 and sim.label == 'x SETP 9999.000'


@pytest.mark.parametrize('value, named', [
    ('a;SETP 1,9999', "0x3B (';')"),     # the write terminator
    ('a#SETP 1,9999', "0x23 ('#')"),     # the read terminator
    ('a\nSETP 1,9999', '0x0A (LF)'),     # control characters whatever the terminators
    ('a\rSETP 1,9999', '0x0D (CR)'),
])
def test_custom_terminators_are_refused_in_values(injection, value, named):
    sim = injection.custom.instrument
    before = injection.settle(injection.custom)
    injection.refused(f'change Y:_label {json.dumps(value)}', named)
    time.sleep(0.2)
    assert bytes(injection.custom.received) == before
    assert sim.setpoint == 20.0 and sim.label == 'clean label'


@pytest.mark.parametrize('char', ['\r\n', '\n', '\r', '\t', '\x00', '\x03', '\x1b', '\x7f'])
def test_simulated_communicator_of_the_default_config_refuses_line_ends(gateway, char):
    """`io` of the embedded default config (driver sim_communicator): a second command
    hidden behind a line end is refused and not executed."""
    c = Line(gateway)
    try:
        assert value_of(c.ask('do io:communicate "VAL 5"')) == 'OK'
        r = c.ask(f'do io:communicate {json.dumps("VAL 7" + char + "SETP 1")}')
        assert r.startswith('error_do io:communicate ["RangeError","character 0x'), r
        assert 'cannot be sent to the instrument' in r, r
        assert value_of(c.ask('do io:communicate "VAL?"')) == '5', 'the line was executed'
    finally:
        c.close()
