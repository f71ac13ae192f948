"""Re-exporting a real frappy server (frappy-core, on 127.0.0.1 without UDP discovery,
started by scripts/bench/frappy_server.py): our clients see its modules, read, change
and get updates through us; killing it turns values into errors; restarting it
restores them; restarting it with another config changes our description and
disconnects the clients of the affected node only."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rawsecop import Line, value_of

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / 'scripts' / 'bench' / 'frappy_server.py'
BASE_CFG = ROOT / 'scripts' / 'bench' / 'frappy_bench_cfg.py'


class Frappy:
    def __init__(self, cfg, port=0):
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), '--cfg', str(cfg), '--port', str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 20
        self.port = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            m = re.match(r'LISTENING 127\.0\.0\.1:(\d+)', line or '')
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError('frappy server did not start')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def frappy():
    servers = []

    def start(cfg=BASE_CFG, port=0):
        s = Frappy(cfg, port)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def config(port):
    return f'''
[node]
equipment_id = "gateway_with_remote"
description = "re-exports a frappy node"
[discovery]
enabled = false

[[module]]
name = "local"
driver = "sim_pressure"

[[remote]]
name = "frappy1"
address = "127.0.0.1:{port}"
prefix = "fr_"
timeout = 3
reconnect_min = 0.2
reconnect_max = 0.5

[[extra_node]]
equipment_id = "local_only"
description = "only the local module"
listen = "127.0.0.1:0"
modules = ["local"]
'''


def test_frappy_client_through_the_gateway(frappy, start_gateway, client_factory):
    server = frappy()
    gw = start_gateway(config(server.port), 'remote')
    client = client_factory(gw)
    mods = client.client.modules
    assert {'fr_T', 'fr_p', 'fr_ps', 'local'} <= set(mods), sorted(mods)
    props = mods['fr_T']['properties']
    assert props.get('_remote_equipment_id') == 'frappy_bench', props
    assert client.client.getParameter('fr_T', 'value', trycache=False).readerror is None
    seen = []
    client.client.register_callback(('fr_T', 'value'), updateEvent=lambda *a: seen.append(a[2]))
    client.client.setParameter('fr_T', 'target', 296.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (seen and abs(seen[-1] - 296.0) < 0.01):
        time.sleep(0.05)
    assert seen and abs(seen[-1] - 296.0) < 0.01, seen[-5:]
    result, _ = client.client.execCommand('fr_T', 'stop')
    assert result is None
    # remote error classes come through unchanged
    c = Line(gw)
    r = c.ask('change fr_ps:target "x"')
    assert r.startswith('error_change fr_ps:target ["WrongType"'), r
    assert c.ask('ping 1').startswith('pong 1 ')
    assert c.ask('activate fr_p') == 'active fr_p'


def test_remote_going_away_coming_back_and_changing(frappy, start_gateway, tmp_path):
    server = frappy()
    port = server.port
    gw = start_gateway(config(port), 'remote-restart')
    main = Line(gw)
    assert main.ask('activate fr_T') == 'active fr_T'
    ready = json.loads((gw.workdir / 'ready.json').read_text())
    gw_view_port = int(ready['tcp'][1].rsplit(':', 1)[1])

    class Addr:
        host = '127.0.0.1'
        port = gw_view_port
    view = Line(Addr)
    assert view.ask('describe').startswith('describing . ')

    server.stop()
    err = main.wait_for('error_update fr_T:value', timeout=10)
    assert '"CommunicationFailed"' in err, err
    r = main.ask('read fr_T:value')
    assert r.startswith('error_read fr_T:value ["CommunicationFailed"'), r

    # the same config again: values flow, nobody is disconnected
    again = frappy(BASE_CFG, port)
    main.wait_for('update fr_T:value [', timeout=15)
    assert main.ask('read fr_T:value').startswith('reply fr_T:value [')

    # another config: our description changes, the affected node's clients are dropped
    changed = tmp_path / 'changed_cfg.py'
    changed.write_text(BASE_CFG.read_text() + '''
Mod('extra',
    'frappy.simulation.SimReadable',
    'a module that was not there before',
    value=1.0,
)
''')
    main_sock = main.sock
    again.stop()
    frappy(changed, port)
    deadline = time.monotonic() + 15
    closed = False
    while time.monotonic() < deadline:
        line = main.line(0.5)
        if line is None:
            try:
                main_sock.sendall(b'ping\n')
            except OSError:
                closed = True
                break
            if main.line(0.5) is None:
                closed = True
                break
    assert closed, 'clients of the changed node are disconnected'
    fresh = Line(gw)
    desc = fresh.ask('describe')
    assert '"fr_extra"' in desc
    # the local-only view did not change and kept its client
    assert view.ask('ping still').startswith('pong still')
