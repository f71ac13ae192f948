"""The built-in web client (GET /, web/) in a real browser: headless Chromium driven by
playwright-core (tests/browser/web_client.mjs does the browser work and prints a JSON
result; see there for every check). Screenshots of each state go to target/web-client/.

Needs what test_browser.py needs: Debian's chromium and `npm ci` in tests/browser.
"""

import base64
import gzip
import json
import os
import select
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import Gateway
from instruments import LakeShoreSim, TcpInstrument
from rawsecop import Line, value_of
from test_faults import ascii_link
from test_browser import (BROWSER_DIR, CHROMIUM, DEFAULT_CONFIG, REPO_ROOT, browser_tools,  # noqa: F401
                          free_loopback_port)

SCRIPT = BROWSER_DIR / 'web_client.mjs'
SHOTS = REPO_ROOT / 'target' / 'web-client'
PAGE_TIMEOUT = 20          # s for each wait inside the browser script
RUN_TIMEOUT = 240          # s for a whole scenario

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 60)


def run_scenario(node, url, scenario, *options, driver=None):
    """run one scenario of web_client.mjs; `driver(request) -> None` answers its "@@ <request>"
    lines (kill, restart) before the script goes on. Returns (exit code, result, log)."""
    shots = SHOTS / scenario
    cmd = [node, str(SCRIPT), url, '--scenario', scenario, '--shots', str(shots),
           '--timeout', str(PAGE_TIMEOUT), *options]
    env = dict(os.environ, CHROMIUM_BIN=CHROMIUM)
    proc = subprocess.Popen(cmd, cwd=BROWSER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    out = b''
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(cmd, RUN_TIMEOUT)
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
            while b'@@ ' in out:
                before, _, rest = out.partition(b'@@ ')
                if b'\n' not in rest:
                    break
                request, _, out = rest.partition(b'\n')
                out = before + out
                assert driver is not None, f'unexpected request {request!r}'
                driver(request.decode().strip())
                proc.stdin.write(b'ok\n')
                proc.stdin.flush()
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f'browser script did not finish within {RUN_TIMEOUT} s\n{out.decode()}',
                    pytrace=False)
    err = proc.stderr.read().decode()
    log = f'$ {" ".join(cmd)}\nexit {proc.returncode}\nstdout:\n{out.decode()}\nstderr:\n{err}'
    try:
        result = json.loads(out)
    except ValueError:
        pytest.fail(f'browser script printed no JSON result\n{log}', pytrace=False)
    return proc.returncode, result, log


def assert_passed(code, result, log, *names):
    assert result.get('failures') == [], log
    for name in names + ('page loads', 'page has a CSP', 'page goes live', 'same origin only',
                         'WebSocket used', 'no CSP violation', 'no script errors'):
        assert result['checks'].get(name, {}).get('passed') is True, f'{name}\n{log}'
    assert code == 0, log
    for shot in result['screenshots']:
        assert Path(shot).stat().st_size > 0, shot


def url_of(gw):
    return f'http://{gw.host}:{gw.port}/'


def test_assets_served_compressed_with_policy(gateway):
    """GET / names the node and carries the CSP; the assets are gzipped, typed, cached by
    version and revalidated by ETag"""
    with urllib.request.urlopen(url_of(gateway)) as r:
        page = r.read().decode()
        assert r.headers['Content-Security-Policy'].startswith("default-src 'none'; script-src 'self'")
        assert "frame-ancestors 'none'" in r.headers['Content-Security-Policy']
        assert r.headers['Content-Type'] == 'text/html; charset=utf-8'
    assert 'secop_gateway_simulation' in page
    total = len(page.encode())
    for name, kind in (('app.js', 'text/javascript'), ('app.css', 'text/css'), ('icon.svg', 'image/svg+xml')):
        start = page.index(f'/assets/{name}?v=')
        path = page[start:page.index('"', start)]
        req = urllib.request.Request(url_of(gateway).rstrip('/') + path, headers={'Accept-Encoding': 'gzip'})
        with urllib.request.urlopen(req) as r:
            body = r.read()
            assert r.headers['Content-Encoding'] == 'gzip', name
            assert r.headers['Content-Type'].startswith(kind), name
            assert 'immutable' in r.headers['Cache-Control'], name
            assert r.headers['Vary'] == 'Accept-Encoding'
            etag = r.headers['ETag']
        total += len(body)
        assert gzip.decompress(body)
        plain = urllib.request.Request(url_of(gateway).rstrip('/') + f'/assets/{name}')
        with urllib.request.urlopen(plain) as r:
            assert r.headers.get('Content-Encoding') is None
            assert r.headers['Cache-Control'] == 'no-cache'
        again = urllib.request.Request(plain.full_url, headers={'If-None-Match': etag})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(again)
        assert e.value.code == 304
    assert total < 150_000, total
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url_of(gateway) + 'assets/nothing.js')
    assert e.value.code == 404


def test_web_client_shows_and_drives_the_default_node(gateway, browser_tools):
    """every module with units and formatted values; T:target changed (BUSY, then IDLE);
    out-of-range refused by the page, and by the gateway (inline) with the page's limit
    removed; io:communicate; stop on the Drivable; same origin only"""
    code, result, log = run_scenario(browser_tools, url_of(gateway), 'main')
    assert_passed(code, result, log, 'every module listed', 'double with fmtstr %.3f and unit',
                  'double with fmtstr %.3e and unit', 'enum by member name', 'struct with units',
                  'status by name and text', 'target changed', 'status BUSY after the change',
                  'status IDLE again', 'page refuses out of range', 'nothing sent for a refused value',
                  'gateway RangeError inline', 'refused value changed nothing',
                  'io:communicate answers', 'stop button on the Drivable', 'stop ended the ramp',
                  'error value shown', 'bool switch', 'Tab reaches the set button',
                  'every input has a label')


EDITED = ('ps:mode', 'ps:_limits', 'T:target_limits')   # what the 'editors' scenario changes


def test_web_client_editors_and_keyboard(gateway, browser_tools):
    """the editors of enum (ps:mode), struct (ps:_limits) and tuple (T:target_limits) and
    io:communicate's argument form: changes sent as SECoP wants them and shown; members out
    of range refused by the page (nothing sent), an empty optional struct member not sent,
    min above max refused by the gateway inline; the command, the enum and the tuple driven
    with the keyboard only. Afterwards the gateway holds what the page showed; the values
    are put back for the other tests of this module."""
    checker = Line(gateway)
    try:
        before = {}
        for key in EDITED:
            reply = checker.ask(f'read {key}')
            assert reply.startswith(f'reply {key} '), reply
            before[key] = value_of(reply)
        try:
            code, result, log = run_scenario(browser_tools, url_of(gateway), 'editors')
            assert_passed(
                code, result, log, 'Tab reaches the expert switch', 'expert switch with Space',
                'command has an argument form', 'Tab reaches the command argument',
                'command result shown', 'command sent with its argument',
                'enum select shows the current member', 'enum select lists every member by name',
                'Tab reaches the enum select', 'keyboard focus visible',
                'arrow key picks another member', 'Tab from the select reaches its set button',
                'enum change sent as the member number', 'enum shows the new member name',
                'enum change confirmed', 'enum changed with the mouse',
                'enum select shows the new member',
                'struct has a field per member', 'struct fields show the current values',
                'struct shows the new values', 'struct change sent',
                'struct member above its max refused by the page', 'nothing sent for a refused voltage',
                'refused voltage changed nothing',
                'struct member below its min refused by the page', 'nothing sent for a refused current',
                'refused current changed nothing',
                'only the given member sent', 'struct with an empty optional member',
                'struct message cleared after success',
                'struct fields show the node value after the change',
                'tuple fields show the current values', 'Shift+Tab reaches the tuple fields',
                'Tab moves to the second tuple member', 'tuple shows the new values',
                'tuple change sent', 'target field narrowed to the new limits',
                'tuple member out of range refused by the page', 'nothing sent for a refused tuple',
                'gateway refuses min above max inline', 'min above max was sent',
                'refused tuple changed nothing', 'every input has a label',
                'no label inside another', 'message stays inside the card')
            # the gateway's own values: what the page showed at the end
            final = result['final']
            members = {'off': 0, 'constant_voltage': 1, 'constant_current': 2}
            held = {key: value_of(checker.ask(f'read {key}')) for key in EDITED}
            assert held['ps:mode'] == members[final['ps:mode']], (held, final)
            assert held['ps:mode'] != before['ps:mode'], (held, before)
            assert held['ps:_limits'] == pytest.approx(final['ps:_limits']), (held, final)
            assert held['T:target_limits'] == pytest.approx(final['T:target_limits']), (held, final)
        finally:
            for key in EDITED:
                reply = checker.ask(f'change {key} {json.dumps(before[key])}')
                assert reply.startswith(f'changed {key} '), reply
    finally:
        checker.close()


def test_web_client_reconnects_after_a_restart(tmp_path, browser_tools):
    """the gateway killed: the page shows disconnected and greys its values; restarted on
    the same port: it reconnects by itself and shows live values again"""
    port = free_loopback_port()
    listen = f'127.0.0.1:{port}'
    config = tmp_path / 'gateway.toml'
    config.write_text(DEFAULT_CONFIG.read_text())
    gateways = [Gateway(tmp_path / 'first', config=config, name='gateway[reconnect 1]', listen=listen)]
    gateways[0].start()

    def driver(request):
        if request == 'kill':
            gateways[-1].process.kill()
            gateways[-1].process.wait(5)
            gateways[-1].stop()
        elif request == 'restart':
            gw = Gateway(tmp_path / 'second', config=config, name='gateway[reconnect 2]', listen=listen)
            gateways.append(gw)
            gw.start()
            assert gw.port == port
        else:
            raise AssertionError(request)

    try:
        code, result, log = run_scenario(browser_tools, f'http://{listen}/', 'reconnect', driver=driver)
    finally:
        for gw in gateways:
            gw.stop()
    assert len(gateways) == 2, log
    assert_passed(code, result, log, 'gateway killed', 'page shows disconnected',
                  'values greyed while disconnected', 'gateway restarted', 'live again',
                  'reconnected by itself', 'fresh values after reconnect')


def test_read_only_view_shows_no_controls(start_gateway, browser_tools):
    """a [[extra_node]] with read_only = true: values, no control anywhere"""
    view_port = free_loopback_port()
    config = DEFAULT_CONFIG.read_text() + f'''
[[extra_node]]
equipment_id = "secop_gateway_view"
description = "read-only view of the simulation"
listen = "127.0.0.1:{view_port}"
read_only = true
'''
    start_gateway(config, name='web_read_only')
    code, result, log = run_scenario(browser_tools, f'http://127.0.0.1:{view_port}/', 'readonly')
    assert_passed(code, result, log, 'no controls', 'read-only banner', 'values still shown')


def test_read_only_client_shows_no_controls(start_gateway, browser_tools):
    """loopback with read_only access gets a read-only description: no controls either"""
    config = DEFAULT_CONFIG.read_text().replace(
        '[[node.access]]\nnetworks = ["127.0.0.0/8", "::1"]\naccess = "full"',
        '[[node.access]]\nnetworks = ["127.0.0.0/8", "::1"]\naccess = "read_only"', 1)
    assert 'access = "read_only"\n[[node.access]]' in config
    gw = start_gateway(config, name='web_read_only_client')
    code, result, log = run_scenario(browser_tools, url_of(gw), 'readonly')
    assert_passed(code, result, log, 'no controls', 'read-only banner', 'values still shown')


def test_custom_identification_goes_live(start_gateway, browser_tools):
    """a node.identification that does not start with ISSE: the page still goes live"""
    idn = 'MLZ_ISSE,SECoP,custom-gateway,v2.0'
    config = DEFAULT_CONFIG.read_text().replace('identification = "ISSE,SECoP,,v2.0"',
                                                f'identification = "{idn}"', 1)
    assert idn in config
    gw = start_gateway(config, name='web_custom_idn')
    code, result, log = run_scenario(browser_tools, url_of(gw), 'live', '--idn', idn)
    assert_passed(code, result, log, 'identification shown', 'values update', 'history plotted')


def test_history_loaded_and_plotted(gateway, browser_tools):
    """GET /history answered (in the browser, as the gateway answers it when history is
    on): the page plots the past hour of T:value, with live values appended"""
    code, result, log = run_scenario(browser_tools, url_of(gateway), 'live', '--fake-history',
                                     '--idn', 'ISSE,SECoP,,v2.0')
    assert_passed(code, result, log, 'history plotted', 'values update')
    assert any(u.endswith('/history') for u in result['requests']), log


def test_a_page_opened_later_shows_the_gateways_history(start_gateway, browser_tools):
    """the real GET /history (no stub): a page opened 4 s after the start plots points of
    T:value from before it was opened, which live updates cannot give it"""
    gw = start_gateway(DEFAULT_CONFIG.read_text(), name='web_real_history')
    time.sleep(4.0)
    code, result, log = run_scenario(browser_tools, url_of(gw), 'live',
                                     '--idn', 'ISSE,SECoP,,v2.0', '--history-before', '2.5')
    assert_passed(code, result, log, 'history plotted', 'history from before the page')
    assert any(u.endswith('/history') for u in result['requests']), log


# --- the 'display' scenario: a node of its own, on an ASCII instrument over TCP --------

DISPLAY_LONG_TEXT = (
    'Sample stick 3 in the orange cryostat: Cernox CX-1050 on the cold finger, RuOx on the '
    'sample holder; helium level checked 2024-03-12 by the local contact, refill due '
    '\u00b12 days, gap 25 \u00b5m')
DISPLAY_BLOB = bytes(range(16))
DISPLAY_MATRIX = {'len': [2, 3], 'blob': 'AACAPwAAAEAAAEBAAACAQAAAoEAAAMBA'}   # <f4 1..6
DISPLAY_DESCRIPTION = ('sample temperature', 'Cernox sensor on the sample stick,\n'
                                             'calibrated 2024-03 (curve 21)')
# the instrument's fixed answers (LakeShoreSim answers KRDG? A itself: 295 K)
DISPLAY_REPLIES = {
    'SHIELD?': '40.5,41.25,39',
    'NOTE?': DISPLAY_LONG_TEXT,
    'FIELD?': '1.234',
    'RAMP?': '0.35',
    'CURR?': '480.96',          # above max 100: an error, never a value
    'COUNT?': '12345',
    'RAW?': base64.b64encode(DISPLAY_BLOB).decode(),
    'IMG?': json.dumps(DISPLAY_MATRIX),
    'SERIAL?': 'CX-1050-SD X123456',
}


def display_config(port):
    """modules on one ASCII link: groups "magnet" (field 45, psu_current 5) and "cryo"
    (T_sample 40, T_shield 10, cryo_note without importance), and without a group counter
    (importance 50), image and raw"""
    first, rest = DISPLAY_DESCRIPTION
    return f'''
[node]
equipment_id = "display_test"
description = "values that the default node does not have"

[discovery]
enabled = false
{ascii_link(None, name='dev', tcp=f'127.0.0.1:{port}', timeout=0.5, reconnect_min=0.1,
            reconnect_max=0.5)}

[[module]]
name = "T_sample"
link = "dev"
class = "Readable"
description = {json.dumps(first + chr(10) + rest)}
[module.properties]
group = "cryo"
meaning = {{ function = "temperature", importance = 40 }}
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", unit = "K", fmtstr = "%.3f" }}
query = "KRDG? A"
reply = '^\\+?(?P<value>[-0-9.]+)$'
[[module.parameter]]
name = "_serial"
datainfo = {{ type = "string", maxchars = 32 }}
query = "SERIAL?"

[[module]]
name = "T_shield"
link = "dev"
class = "Readable"
description = "radiation shield temperatures"
[module.properties]
group = "cryo"
meaning = {{ function = "temperature", importance = 10 }}
[[module.parameter]]
name = "value"
datainfo = {{ type = "array", maxlen = 8, members = {{ type = "double", unit = "K", fmtstr = "%.2f" }} }}
query = "SHIELD?"

[[module]]
name = "cryo_note"
link = "dev"
class = "Readable"
description = "what the local contact wrote"
[module.properties]
group = "cryo"
[[module.parameter]]
name = "value"
datainfo = {{ type = "string", maxchars = 400, isUTF8 = true }}
query = "NOTE?"

[[module]]
name = "field"
link = "dev"
class = "Readable"
description = "magnetic field"
[module.properties]
group = "magnet"
meaning = {{ function = "magneticfield", importance = 45 }}
[[module.parameter]]
name = "value"
datainfo = {{ type = "scaled", scale = 0.001, min = -9000, max = 9000, unit = "T" }}
query = "FIELD?"
[[module.parameter]]
name = "ramp"
datainfo = {{ type = "scaled", scale = 0.01, min = 0, max = 100, unit = "T/min", fmtstr = "%.3f" }}
query = "RAMP?"

[[module]]
name = "psu_current"
link = "dev"
class = "Readable"
description = "magnet power supply current"
[module.properties]
group = "magnet"
meaning = {{ function = "current", importance = 5 }}
[[module.parameter]]
name = "value"
datainfo = {{ type = "double", min = 0, max = 100, unit = "A" }}
query = "CURR?"

[[module]]
name = "counter"
link = "dev"
class = "Readable"
description = "neutron monitor"
[module.properties]
meaning = {{ function = "counts", importance = 50 }}
[[module.parameter]]
name = "value"
datainfo = {{ type = "int", min = 0, max = 1000000, unit = "cts" }}
query = "COUNT?"

[[module]]
name = "raw"
link = "dev"
class = "Readable"
description = "raw detector frame header"
[[module.parameter]]
name = "value"
datainfo = {{ type = "blob", maxbytes = 64 }}
query = "RAW?"

[[module]]
name = "image"
link = "dev"
class = "Readable"
description = "detector image"
[[module.parameter]]
name = "value"
datainfo = {{ type = "matrix", names = ["x", "y"], maxlen = [16, 16], elementtype = "<f4" }}
query = "IMG?"
'''


# what the gateway must send for DISPLAY_REPLIES (wire values)
DISPLAY_WIRE = {
    'T_sample:value': 295.0,
    'T_sample:_serial': 'CX-1050-SD X123456',
    'T_shield:value': [40.5, 41.25, 39.0],
    'cryo_note:value': DISPLAY_LONG_TEXT,
    'field:value': 1234,
    'field:ramp': 35,
    'counter:value': 12345,
    'raw:value': base64.b64encode(DISPLAY_BLOB).decode(),
    'image:value': DISPLAY_MATRIX,
}
DISPLAY_ERROR = ('psu_current:value', 'OutOfRange', 'value: reply "480.96" is above max 100')


def gateway_display_lines(gw):
    """describe and activate over raw TCP: (description, {spec: (action, data)}), the
    last update or error_update of each parameter, after psu_current's status is ERROR"""
    c = Line(gw)
    try:
        reply = c.ask('describe')
        assert reply.startswith('describing . '), reply
        description = json.loads(reply.split(' ', 2)[2])
        c.send('activate')
        seen = {}
        deadline = time.monotonic() + 10
        active = False
        while time.monotonic() < deadline:
            line = c.line(max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            assert line.isascii(), f'non-ASCII on the wire: {line!r}'   # the note's ± and µ escaped
            action, _, rest = line.partition(' ')
            if action == 'active':
                active = True
            elif action in ('update', 'error_update'):
                spec, _, data = rest.partition(' ')
                seen[spec] = (action, json.loads(data))
            status = seen.get('psu_current:status')
            if active and status and status[1][0][0] == 400:
                break
        return description, seen
    finally:
        c.close()


def display_expectation(error, status):
    """what the 'display' scenario must find (its --expect), for the gateway's
    error_update data `error` of DISPLAY_ERROR and status value `status` of its module"""
    return {
        'order': ['field', 'psu_current', 'T_sample', 'T_shield', 'cryo_note',
                  'counter', 'image', 'raw'],
        'groups': [['magnet', 'magnet', ['field', 'psu_current']],
                   ['cryo', 'cryo', ['T_sample', 'T_shield', 'cryo_note']],
                   ['', 'other modules', ['counter', 'image', 'raw']]],
        'values': {
            'T_sample:value': '295.000 K',
            'T_sample:pollinterval': '0.3 s',
            'T_shield:value': '[40.50, 41.25, 39.00] K',
            'cryo_note:value': DISPLAY_LONG_TEXT,
            'field:value': '1.234 T',
            'field:ramp': '0.350 T/min',
            'counter:value': '12345 cts',
            'raw:value': '16 bytes: 00 01 02 03 04 05 06 07 08 09 0a 0b \u2026',
        },
        'matrix': {'key': 'image:value', 'dims': '2\u00d73', 'elementtype': '<f4', 'bytes': 24},
        'long': {'key': 'cryo_note:value'},
        'error': {'key': DISPLAY_ERROR[0], 'text': f'{error[0]}: {error[1]}', 'notShown': '480.96 A',
                  'status': f'ERROR: {status[1]}'},
        'description': {'module': 'T_sample', 'first': DISPLAY_DESCRIPTION[0],
                        'rest': DISPLAY_DESCRIPTION[1],
                        'single': {'module': 'T_shield', 'text': 'radiation shield temperatures'}},
        'expert': {'key': 'T_sample:_serial', 'text': DISPLAY_WIRE['T_sample:_serial']},
    }


def test_web_client_displays_other_types(start_gateway, browser_tools):
    """a node of its own (an ASCII instrument over TCP with fixed answers): an array with
    unit and fmtstr, a blob, a matrix, a long UTF-8 string, scaled values, an int with
    unit, each shown with its exact text; a reply above max shown as the error class and
    text, never as a value; the modules by group and importance, ungrouped last; a
    description of several lines folded to its first; a "_" parameter with the expert
    switch only. What the gateway sends is checked over raw TCP first, and what the page
    must show is derived from that."""
    inst = TcpInstrument(LakeShoreSim(rate=0.0, replies=DISPLAY_REPLIES)).start()
    try:
        gw = start_gateway(display_config(inst.port), name='web_display')
        description, seen = gateway_display_lines(gw)
        problems = []   # gateway problems, reported together with the page's

        # --- what the gateway sends
        modules = description['modules']
        props = {name: (m.get('group'), (m.get('meaning') or {}).get('importance'))
                 for name, m in modules.items()}
        assert props == {'T_sample': ('cryo', 40), 'T_shield': ('cryo', 10),
                         'cryo_note': ('cryo', None), 'field': ('magnet', 45),
                         'psu_current': ('magnet', 5), 'counter': (None, 50),
                         'raw': (None, None), 'image': (None, None)}, props
        assert modules['T_sample']['description'] == '\n'.join(DISPLAY_DESCRIPTION)
        for spec, wire in DISPLAY_WIRE.items():
            got = seen.get(spec)
            assert got is not None and got[0] == 'update' and got[1][0] == wire, (spec, got, wire)
        key, cls, text = DISPLAY_ERROR
        action, data = seen[key]
        assert action == 'error_update' and data[0] == cls and data[1] == text, seen[key]
        status = seen['psu_current:status'][1][0]
        assert status[0] == 400, status
        # the ERROR status names the parameter and the error (docs/configuration.md), once
        if status[1] != text:
            problems.append(f'gateway: psu_current:status is {status!r}; expected the text '
                            f'{text!r} (the parameter named once)')

        # --- what the page must show
        expect = display_expectation(data, status)
        code, result, log = run_scenario(browser_tools, url_of(gw), 'display',
                                         '--expect', json.dumps(expect))
    finally:
        inst.stop()
    page_failures = result.get('failures') or []
    assert not problems, '\n'.join(problems + [f'page: {f}' for f in page_failures]) + f'\n{log}'
    assert_passed(code, result, log, 'modules in order', 'groups in order, headed by their names',
                  'groups stacked in order on screen', 'cards read in the same order on screen',
                  *(f'shown: {k}' for k in expect['values']),
                  'matrix shows its dimensions', 'matrix shows its element type',
                  'matrix shows its size', 'matrix not shown as raw JSON',
                  'long string wraps inside its card', 'long string uses the width of its row',
                  'error value shown as class and text', 'error value marked as an error',
                  'error value not shown as a number', 'psu_current status ERROR',
                  'error value stays',
                  'description shows its first line', 'rest of the description hidden at first',
                  'rest of the description on a click', 'description folds again',
                  'one-line description shown as it is',
                  'expert parameter hidden without the switch',
                  'other parameters of its module shown',
                  'expert parameter shown with the switch', 'expert parameter hidden again')
