"""The status page and SECoP over WebSocket in a real browser: headless Chromium (Debian's
`chromium`, /usr/bin/chromium) driven by playwright-core from npm (tests/browser).

tests/browser/status_page.mjs does the browser work and prints a JSON result (see there for
every check); these tests start the gateway, run it and assert on the result.
tests/browser/attack_page.mjs has a page of another local origin attack the gateway (POSTs
carrying SECoP lines, img/script GETs, WebSockets); test_attack_page_from_other_origin then
checks over raw SECoP that nothing changed and that the audit trail recorded the refusals.

Needs: `apt-get install -y --no-install-recommends chromium` and `npm ci` in tests/browser
(tests/run.sh does both). Set CHROMIUM_BIN for another Chromium, or SECOP_SKIP_BROWSER=1 to
skip these tests on a machine without a browser.
"""

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from rawsecop import Line, value_of

BROWSER_DIR = Path(__file__).resolve().parents[1] / 'browser'
SCRIPT = BROWSER_DIR / 'status_page.mjs'
ATTACK_SCRIPT = BROWSER_DIR / 'attack_page.mjs'
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / 'config' / 'gateway.toml'
ATTACK_SCREENSHOT = REPO_ROOT / 'target' / 'browser-attack.png'
AUDIT_TIMEOUT = 10.0       # s for the audit records of the attack to be written
CHROMIUM = os.environ.get('CHROMIUM_BIN', '/usr/bin/chromium')
PAGE_TIMEOUT = 15          # s for each wait inside the browser script
RUN_TIMEOUT = 120          # s for the whole script (Chromium start included)

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 60)   # safety net only


@pytest.fixture(scope='module')
def browser_tools():
    if os.environ.get('SECOP_SKIP_BROWSER') == '1':
        pytest.skip('SECOP_SKIP_BROWSER=1')
    problems = []
    node = shutil.which('node')
    if not node:
        problems.append('node (Node.js >= 20) not found')
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        problems.append(f'{CHROMIUM} not found: apt-get install -y --no-install-recommends chromium')
    if not (BROWSER_DIR / 'node_modules' / 'playwright-core' / 'package.json').is_file():
        problems.append(f'playwright-core not installed: (cd {BROWSER_DIR} && npm ci)')
    if problems:
        pytest.fail('browser test prerequisites missing:\n  ' + '\n  '.join(problems), pytrace=False)
    return node


def free_loopback_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_browser(node, gw, *options):
    return run_script(node, SCRIPT, f'http://{gw.host}:{gw.port}/', *options)


def run_script(node, script, *arguments):
    """run a script of tests/browser; (exit code, its JSON result, everything for a report)"""
    cmd = [node, str(script), *arguments, '--timeout', str(PAGE_TIMEOUT)]
    env = dict(os.environ, CHROMIUM_BIN=CHROMIUM)
    try:
        done = subprocess.run(cmd, cwd=BROWSER_DIR, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f'browser script did not finish within {RUN_TIMEOUT} s\n'
                    f'{e.stdout}\n{e.stderr}', pytrace=False)
    output = f'$ {" ".join(cmd)}\nexit {done.returncode}\nstdout:\n{done.stdout}\n' \
             f'stderr:\n{done.stderr}'
    try:
        result = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f'browser script printed no JSON result\n{output}', pytrace=False)
    return done.returncode, result, output


def passed(result, name):
    return result.get('checks', {}).get(name, {}).get('passed') is True


def test_status_page_live_and_foreign_origin_refused(gateway, browser_tools, tmp_path):
    """the default gateway's status page goes live in Chromium, a script of the page talks
    SECoP over its own WebSocket, and a page from another origin is refused"""
    screenshot = tmp_path / 'status.png'
    code, result, output = run_browser(browser_tools, gateway, '--screenshot', str(screenshot))
    assert result.get('failures') == [], output
    for name in ('status page loads', 'state live', 'updates counted', 'page shows IDN',
                 'value cells present', 'a value cell changes', 'page socket open',
                 'page socket opens', 'page socket IDN', 'page socket describing',
                 'page socket updates and active', 'no LF in WebSocket messages',
                 'other origin refused', 'status page socket still open'):
        assert passed(result, name), f'{name}\n{output}'
    assert result['pageSocket']['describing']['equipment_id'] == 'secop_gateway_simulation'
    assert set(result['pageSocket']['describing']['modules']) >= {'T', 'p', 'ps', 'io'}
    other = result['otherOrigin']['result']
    assert not other['opened'] and other['done'], output
    assert code == 0, output
    assert screenshot.stat().st_size > 0
    # the refusal is the gateway's (HTTP 403 on the handshake), not something the browser
    # decided on its own (Chromium logs the status; the gateway logs the refusal)
    browser_saw_403 = any(line.startswith('other origin') and '403' in line
                          for line in result.get('console', []))
    assert browser_saw_403 or 'refused origin' in gateway.log_text(), \
        f'{output}\n{gateway.log_section()}'


def test_listed_foreign_origin_allowed(start_gateway, make_config, browser_tools):
    """with the other page's origin in allowed_origins, its WebSocket works"""
    other_port = free_loopback_port()
    gw = start_gateway(make_config(websocket={
        'allowed_origins': [f'http://127.0.0.1:{other_port}']}), name='browser_origin')
    code, result, output = run_browser(browser_tools, gw, '--other-origin-port', str(other_port),
                                       '--other-origin', 'allowed')
    assert result.get('failures') == [], output
    assert passed(result, 'other origin allowed'), output
    assert passed(result, 'state live'), output
    assert code == 0, output


def node_state(line):
    """what a cross-origin page must not be able to change, read over raw SECoP: the
    describing reply, the value of every writable parameter (every parameter is read, but
    read-only ones such as T:value drift on their own) and the io instrument's register"""
    describing = line.ask('describe')
    assert describing.startswith('describing . '), describing
    modules = json.loads(describing.split(' ', 2)[2])['modules']
    writable = {}
    for module, description in modules.items():
        for name, accessible in description['accessibles'].items():
            if accessible['datainfo']['type'] == 'command':
                continue
            reply = line.ask(f'read {module}:{name}')
            assert reply.startswith(f'reply {module}:{name} '), reply
            if accessible['readonly'] is False:
                writable[f'{module}:{name}'] = value_of(reply)
    register = line.ask('do io:communicate "VAL?"')
    assert register.startswith('done io:communicate '), register
    return {'describing': describing, 'writable': writable, 'io register': value_of(register)}


def local_address(line):
    host, port = line.sock.getsockname()[:2]
    return f'{host}:{port}'


def read_audit(path):
    if not path.exists():
        return []
    return [json.loads(text) for text in path.read_text().splitlines() if text.strip()]


def test_attack_page_from_other_origin(start_gateway, browser_tools, tmp_path):
    """a page served from another local port tries fetch POSTs (no-cors, text/plain, cors)
    and a text/plain form POST whose bodies carry `change T:target 123` and
    `do io:communicate "VAL 7"`, img/script GETs of / and /metrics, and WebSockets that
    would send those lines, against 127.0.0.1 and localhost; afterwards no parameter of the
    node has changed and the audit trail has the refusals and no accepted change or do.

    A gateway that took a connection starting with "POST /" for raw SECoP (the behaviour
    before the request policy) executed the body's lines: T:target became 123 and the io
    register "7", with "ok" records in the audit trail, so this test fails there."""
    audit_file = tmp_path / 'audit.jsonl'
    # the embedded default has an [audit] section already: give it a file
    config = DEFAULT_CONFIG.read_text().replace(
        '[audit]\n', f'[audit]\nfile = {json.dumps(str(audit_file))}\n', 1)
    assert str(audit_file) in config
    gw = start_gateway(config, name='browser_attack')

    checker = Line(gw)
    own_clients = {local_address(checker)}
    try:
        before = node_state(checker)
    finally:
        checker.close()
    assert before['writable']['T:target'] != 123, before
    assert before['io register'] != '7', before

    ATTACK_SCREENSHOT.parent.mkdir(exist_ok=True)
    ATTACK_SCREENSHOT.unlink(missing_ok=True)
    code, result, output = run_script(browser_tools, ATTACK_SCRIPT, str(gw.port),
                                      '--screenshot', str(ATTACK_SCREENSHOT))
    assert code == 0 and result.get('failures') == [] and result.get('done'), output
    origin = result['origin']
    assert origin.startswith('http://127.0.0.1:') and origin != f'http://127.0.0.1:{gw.port}'

    # the page's view: every attempt ended, nothing got through to the page
    attempts = result['attempts']
    hosts = {f'127.0.0.1:{gw.port}', f'localhost:{gw.port}'}
    assert {a['host'] for a in attempts} == hosts, output
    assert len(attempts) == 2 * 9, output
    for a in attempts:
        assert a['outcome'] not in ('pending', 'timeout') and \
            not a['outcome'].startswith('threw'), f'{a}\n{output}'
        assert not a.get('readable'), f'the page read a reply: {a}\n{output}'
        if a['kind'].startswith('WebSocket'):
            assert a['opened'] is False and a['sent'] == [] and a['messages'] == [], \
                f'{a}\n{output}'
            assert a['outcome'] == 'closed without opening', f'{a}\n{output}'
        if a['kind'] == 'fetch POST cors':
            assert a['outcome'] == 'rejected', f'{a}\n{output}'
    # the browser's view: the gateway answered POSTs with 405 and the handshakes with 403
    posts = [n for n in result['network'] if n['method'] == 'POST']
    answered = [n for n in posts if 'status' in n]
    assert answered and all(n['status'] == 405 for n in answered), output
    assert len(result['websockets']) == 2, output
    for ws in result['websockets']:
        assert ws['sent'] == [] and ws['received'] == [], output
        assert '403' in (ws['error'] or ''), output
    assert ATTACK_SCREENSHOT.stat().st_size > 0

    # the node's view, from a raw SECoP client: nothing changed
    checker = Line(gw)
    own_clients.add(local_address(checker))
    try:
        after = node_state(checker)
    finally:
        checker.close()
    assert after['writable']['T:target'] != 123, after
    assert after['io register'] != '7', after
    assert after == before, f'before: {before}\nafter: {after}'

    # the audit trail: 2 hosts x (3 fetches + 1 form) POSTs refused for their method, the
    # 2 WebSockets for their origin; no change, and no accepted do but the checker's VAL?
    def post_refusals(records):
        return [r for r in records if r['outcome'] == 'refused' and r['reason'] == 'method'
                and r['transport'] == 'http' and r['specifier'] == 'POST /'
                and r['request'] == {'origin': origin}]

    def websocket_refusals(records):
        return [r for r in records if r['outcome'] == 'refused' and r['reason'] == 'origin'
                and r['transport'] == 'websocket' and r['request'] == {'origin': origin}]

    def own_requests(records):
        return [r for r in records if r['client'] in own_clients and r['action'] == 'do'
                and r['specifier'] == 'io:communicate' and r['request'] == 'VAL?']

    # The audit writer is a thread behind a queue: wait for every expected record (the
    # checker's last request included) before judging the trail.
    deadline = time.monotonic() + AUDIT_TIMEOUT
    records = read_audit(audit_file)
    while (len(post_refusals(records)) < 8 or len(websocket_refusals(records)) < 2
           or len(own_requests(records)) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
        records = read_audit(audit_file)
    trail = '\n'.join(json.dumps(r) for r in records)
    assert len(post_refusals(records)) >= 8, trail
    assert len(websocket_refusals(records)) >= 2, trail
    assert not [r for r in records if r['action'] == 'change'], trail
    own = own_requests(records)
    assert len(own) == 2, trail
    assert not [r for r in records if r['outcome'] == 'ok' and r not in own], trail
    assert not [r for r in records if r['outcome'] != 'refused' and r not in own], trail
