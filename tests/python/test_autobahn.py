"""The Autobahn WebSocket conformance cases (run by kosoku, a native implementation of the
Autobahn TestSuite's fuzzing client) against the gateway's echo endpoint.

The echo endpoint (`[listen.websocket] echo_endpoint = true`, path /echo) uses the very same
frame reader as the SECoP WebSocket endpoint, so these cases test the code that SECoP
clients use. Cases 12.* and 13.* need permessage-deflate, which the gateway does not
implement, and are left out.

Acceptable per case: OK, NON-STRICT, INFORMATIONAL. The summary line (counts by behaviour,
and every case that is not OK) is printed to the terminal in any case.
"""

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KOSOKU_TIMEOUT = 300.0                 # s for the whole suite (it takes ~10 s here)
pytestmark = pytest.mark.timeout(KOSOKU_TIMEOUT + 60)   # safety net only

EXCLUDED = ['12.*', '13.*']           # permessage-deflate
ACCEPTABLE = {'OK', 'NON-STRICT', 'INFORMATIONAL'}
MIN_CASES = 250                        # kosoku 0.1.0 runs 301 cases without 12.* and 13.*


def kosoku_command():
    """the kosoku console script, or the same entry point through this Python"""
    found = shutil.which('kosoku')
    if found:
        return [found]
    beside = Path(sys.executable).with_name('kosoku')
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    try:
        import kosoku._cli  # noqa: F401   (kosoku has no __main__, so no `python -m kosoku`)
    except ImportError:
        pytest.fail('kosoku is not installed: python3 -m pip install -r tests/requirements.txt',
                    pytrace=False)
    return [sys.executable, '-c', 'from kosoku._cli import main; main()']


def test_autobahn_cases_on_echo_endpoint(start_gateway, make_config, tmp_path, capsys):
    gw = start_gateway(make_config(websocket={'echo_endpoint': True}), name='autobahn')
    reports = tmp_path / 'reports'
    cmd = kosoku_command() + [f'{gw.host}:{gw.port}/echo', '-p', '2', '-o', str(reports)]
    for pattern in EXCLUDED:
        cmd += ['-x', pattern]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=KOSOKU_TIMEOUT,
                              stdin=subprocess.DEVNULL, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f'kosoku did not finish within {KOSOKU_TIMEOUT} s\n{e.stdout}\n{e.stderr}',
                    pytrace=False)
    output = f'$ {" ".join(cmd)}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}'
    index_file = reports / 'index.json'
    assert index_file.is_file(), f'no {index_file}\n{output}'
    index = json.loads(index_file.read_text())
    assert len(index) == 1, f'one agent expected in index.json: {list(index)}'
    cases = next(iter(index.values()))

    def case_key(case_id):
        return tuple(int(p) for p in case_id.split('.'))

    by_behavior = collections.Counter(c['behavior'] for c in cases.values())
    not_ok = sorted((cid for cid, c in cases.items() if c['behavior'] != 'OK'
                     or c['behaviorClose'] not in ('OK', 'INFORMATIONAL')), key=case_key)
    counts = ', '.join(f'{n} {b}' for b, n in by_behavior.most_common())
    details = ', '.join(f'{cid} {cases[cid]["behavior"]}/{cases[cid]["behaviorClose"]} '
                        f'(close {cases[cid].get("remoteCloseCode")})' for cid in not_ok)
    summary = (f'Autobahn (kosoku) on /echo: {len(cases)} cases: {counts}; '
               f'not OK: {details or "none"}')
    with capsys.disabled():
        print(f'\n{summary}')

    failed = sorted((cid for cid, c in cases.items()
                     if c['behavior'] not in ACCEPTABLE or c['behaviorClose'] not in ACCEPTABLE),
                    key=case_key)
    assert not failed, f'{summary}\nfailed cases: {failed}\n{output}'
    assert not [cid for cid in cases if cid.split('.')[0] in ('12', '13')], 'exclusion ignored'
    assert len(cases) >= MIN_CASES, f'only {len(cases)} cases ran\n{output}'
    assert done.returncode == 0, output
    assert gw.running, 'gateway died during the Autobahn cases'
