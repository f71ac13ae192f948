"""The status page and SECoP over WebSocket in a real browser: headless Chromium (Debian's
`chromium`, /usr/bin/chromium) driven by playwright-core from npm (tests/browser).

tests/browser/status_page.mjs does the browser work and prints a JSON result (see there for
every check); these tests start the gateway, run it and assert on the result.

Needs: `apt-get install -y --no-install-recommends chromium` and `npm ci` in tests/browser
(tests/run.sh does both). Set CHROMIUM_BIN for another Chromium, or SECOP_SKIP_BROWSER=1 to
skip these tests on a machine without a browser.
"""

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).resolve().parents[1] / 'browser'
SCRIPT = BROWSER_DIR / 'status_page.mjs'
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
    cmd = [node, str(SCRIPT), f'http://{gw.host}:{gw.port}/', '--timeout', str(PAGE_TIMEOUT),
           *options]
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
