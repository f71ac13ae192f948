"""Live reload (SIGHUP): the difference is applied, unaffected nodes and devices are not
touched, a broken file changes nothing (issue 16)."""

import json
import signal
import threading
import time

import pytest

from modbus_sim import ModbusSim
from rawsecop import Line
from test_modbus import fill
from test_prometheus import free_port, scrape, wait_for

POLL = 0.2   # s, the poll interval of T

BASE = '''
[node]
equipment_id = "reload_main"
description = "main node"

[metrics]
address = "127.0.0.1:{metrics}"

[[extra_node]]
equipment_id = "reload_view"
description = "a view with T only"
listen = "127.0.0.1:0"
modules = ["T"]

[[module]]
name = "T"
driver = "sim_temperature"
[module.settings]
initial = 10.0
time_constant = 0.1
pollinterval = 0.2

[[module]]
name = "p"
driver = "sim_pressure"
[module.settings]
pollinterval = 0.2
'''

MODBUS = '''
[[link]]
name = "plc"
protocol = "modbus"
tcp = "127.0.0.1:{port}"
timeout = 0.5
reconnect_min = 0.1
reconnect_max = 0.5
pollinterval = 0.2
[link.modbus]
unit_id = 1

[[module]]
name = "flow"
link = "plc"
class = "Readable"
[[module.parameter]]
name = "value"
datainfo = {{ type = "double" }}
table = "input"
address = 0
type = "f32"
'''


class Node:
    """one node of a gateway, as conftest's clients want it"""

    def __init__(self, gw, index):
        ready = json.loads(gw.ready_file.read_text())
        host, _, port = ready['tcp'][index].rpartition(':')
        self.host, self.port, self.name = host, int(port), f'{gw.name}[{index}]'

    @property
    def uri(self):
        return f'{self.host}:{self.port}'


def reload(gw, metrics_port, result='ok'):
    """SIGHUP, and wait until the reload is counted with `result`"""
    before = scrape('127.0.0.1', metrics_port).count(
        'secop_gateway_config_reloads_total', result=result)
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: scrape('127.0.0.1', metrics_port).count(
        'secop_gateway_config_reloads_total', result=result) > before, 5, f'reload {result}')


def closed(line, timeout=3.0):
    """whether the server closes this raw connection within `timeout`"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line.sock.settimeout(0.2)
            if line.sock.recv(65536) == b'':
                return True
        except TimeoutError:
            pass
        except OSError:
            return True
    return False


@pytest.fixture
def sim():
    s = ModbusSim(units=(1,))
    fill(s)
    s.start_tcp()
    yield s
    s.stop()


def test_adding_a_modbus_device_while_another_node_reads(start_gateway, client_factory, sim):
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics), 'add')
    view = client_factory(Node(gw, 1))
    updates, errors, stop = [], [], threading.Event()
    view.client.register_callback(
        ('T', 'value'), updateEvent=lambda *a: updates.append(time.monotonic()),
        callimmediately=False)

    def read():
        while not stop.is_set():
            try:
                view.client.getParameter('T', 'value', trycache=False)
            except Exception as e:   # pylint: disable=broad-except
                errors.append(e)
            time.sleep(0.02)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        time.sleep(1.0)
        gw.config.write_text(BASE.format(metrics=metrics) + MODBUS.format(port=sim.port))
        reload(gw, metrics)
        main = client_factory(gw)
        wait_for(lambda: main.client.getParameter('flow', 'value', trycache=False)[0] == 12.25,
                 5, 'the new Modbus module read')
        time.sleep(1.0)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:3]
    gaps = [b - a for a, b in zip(updates, updates[1:])]
    assert len(updates) > 10 and max(gaps) <= 2 * POLL + 0.1, (len(updates), max(gaps))
    assert 'reload_view' not in ' '.join(
        l for l in gw.log_text().splitlines() if 'description changed' in l)


def test_removing_a_module_closes_only_its_nodes_clients(start_gateway):
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics), 'remove')
    main, view = Line(gw), Line(Node(gw, 1))
    for line in (main, view):
        assert line.ask('describe').startswith('describing')
        assert line.ask('activate').startswith('active')
    gw.config.write_text(BASE.format(metrics=metrics).split('[[module]]\nname = "p"')[0])
    reload(gw, metrics)
    assert closed(main), 'the main node (description changed) kept its client'
    view.wait_for('update T:value')
    view.wait_for('update T:value')
    again = Line(gw)
    description = json.loads(again.ask('describe').split(' ', 2)[2])
    assert set(description['modules']) == {'T'}
    for line in (view, again):
        line.close()


def test_a_broken_file_changes_nothing(start_gateway):
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics), 'broken')
    main = Line(gw)
    assert main.ask('activate').startswith('active')
    gw.config.write_text(BASE.format(metrics=metrics).replace(
        'pollinterval = 0.2\n\n[[module]]', 'pollinterval = "fast"\n\n[[module]]'))
    reload(gw, metrics, result='refused')
    main.wait_for('update T:value')
    assert main.ask('read p:value').startswith('reply p:value')
    text = gw.log_text()
    assert 'reload refused' in text and 'pollinterval' in text, text[-2000:]
    exposition = scrape('127.0.0.1', metrics)
    assert exposition.count('secop_gateway_config_reloads_total', result='ok') == 0
    assert exposition.get('secop_gateway_config_last_reload_success_timestamp_seconds') == 0
    # a setting that cannot change at run time is named in the refusal
    gw.config.write_text(BASE.format(metrics=free_port()))
    reload(gw, metrics, result='refused')
    assert '[metrics]' in gw.log_text()
    main.wait_for('update T:value')
    main.close()


def test_reloading_an_unchanged_file_touches_nothing(start_gateway, sim):
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics) + MODBUS.format(port=sim.port), 'same')
    main = Line(gw)
    assert main.ask('activate').startswith('active')
    before = scrape('127.0.0.1', metrics)
    received = sim.total_received()
    reload(gw, metrics)
    main.wait_for('update T:value')
    after = scrape('127.0.0.1', metrics)
    for name in ('secop_gateway_device_reconnects_total', 'secop_gateway_connections_total'):
        assert after.series(name) == before.series(name), name
    assert after.get('secop_gateway_config_last_reload_success_timestamp_seconds') > 0
    # the link kept polling (its next poll may be up to a poll interval away)
    deadline = time.monotonic() + 3
    while sim.total_received() <= received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.total_received() > received
    assert 'devices_started=[]' in gw.log_text()
    main.close()
