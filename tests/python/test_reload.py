"""Live reload (SIGHUP): the difference is applied, unaffected nodes and devices are not
touched, a broken file changes nothing (issue 16)."""

import json
import signal
import socket
import threading
import time

import pytest

from modbus_sim import ModbusSim
from conftest import Gateway
from instruments import LakeShoreSim, PtyInstrument
from rawsecop import Line, Recorder
from test_faults import ERROR, ascii_link, lakeshore_module, statuses
from test_modbus import fill
from test_prometheus import free_port, http_get, scrape, wait_for

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


DISCOVERY = """
[discovery]
enabled = true
address = "127.0.0.1:0"
announce = ["127.0.0.1:{announce}"]
"""

NEW_NODE = """
[[extra_node]]
equipment_id = "reload_new"
description = "added by a reload"
listen = "127.0.0.1:0"
modules = ["T"]
"""


def discover(gw, source):
    """the nodes that answer a discovery request sent from loopback address `source`
    (one source per question: answers to one source are at least 1 s apart)"""
    udp = json.loads(gw.ready_file.read_text())['udp'][0]
    host, _, port = udp.rpartition(':')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(0.3)
        s.sendto(b'{"SECoP":"discover"}', (host, int(port)))
        return received(s)


def received(s, wait=1.0):
    """the node datagrams arriving on `s` within `wait`, by equipment id"""
    nodes = {}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            data, _ = s.recvfrom(2048)
        except TimeoutError:
            continue
        v = json.loads(data)
        nodes[v['equipment_id']] = v
    return nodes


def node_series(exposition, **match):
    """every series of the gateway's per-device and per-node families with these labels"""
    return [(n, l) for n, l, _ in exposition.samples
            if all(l.get(k) == v for k, v in match.items())]


def test_readiness_discovery_and_metrics_follow_a_reload(start_gateway):
    """a reload that adds a node and a required device and removes a module: /readyz
    waits for the new required device, discovery answers for (and announces) the new
    node, the removed module's and device's series go; a second reload takes them back"""
    metrics = free_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(('127.0.0.1', 0))
    listener.settimeout(0.3)
    base = BASE.format(metrics=metrics) + DISCOVERY.format(announce=listener.getsockname()[1])
    gw = start_gateway(base, 'follow')
    try:
        assert set(received(listener)) == {'reload_main', 'reload_view'}
        status, _, body = http_get(f'http://127.0.0.1:{metrics}/readyz')
        assert status == 200 and json.loads(body)['required_devices'] == [], body
        before = scrape('127.0.0.1', metrics)
        assert node_series(before, device='p') and node_series(before, module='p')
        found = discover(gw, '127.0.0.2')
        assert set(found) == {'reload_main', 'reload_view'}, found
        assert found['reload_view']['description'] == 'a view with T only'

        # p goes; a required Modbus module on a port nobody listens on and a node come
        without_p = base.replace(base[base.index('[[module]]\nname = "p"'):base.index('[discovery]')], '')
        plc = MODBUS.format(port=free_port()).replace(
            'name = "flow"\n', 'name = "flow"\nrequired = true\n')
        gw.config.write_text(without_p + NEW_NODE + plc)
        reload(gw, metrics)
        status, _, body = http_get(f'http://127.0.0.1:{metrics}/readyz')
        assert status == 503 and json.loads(body)['down'] == ['plc'], (status, body)
        after = scrape('127.0.0.1', metrics)
        assert not node_series(after, device='p'), node_series(after, device='p')
        assert not node_series(after, module='p'), node_series(after, module='p')
        assert after.get('secop_gateway_module_status', node='reload_main', module='T') is not None
        announced = received(listener)
        assert set(announced) == {'reload_new'}, announced
        new_port = int(json.loads(gw.ready_file.read_text())['tcp'][2].rpartition(':')[2])
        found = discover(gw, '127.0.0.3')
        assert set(found) == {'reload_main', 'reload_view', 'reload_new'}, found
        assert found['reload_new']['port'] == new_port
        assert found['reload_new']['description'] == 'added by a reload'

        # and back: the node and the link go, with their series; ready again
        gw.config.write_text(without_p)
        reload(gw, metrics)
        status, _, body = http_get(f'http://127.0.0.1:{metrics}/readyz')
        assert status == 200, (status, body)
        last = scrape('127.0.0.1', metrics)
        assert not node_series(last, device='plc'), node_series(last, device='plc')
        assert not node_series(last, node='reload_new'), node_series(last, node='reload_new')
        assert node_series(last, node='reload_view')
        found = discover(gw, '127.0.0.4')
        assert set(found) == {'reload_main', 'reload_view'}, found
        # the removed node's actor is gone, not left taking the devices' updates
        wait_for(lambda: 'node=reload_new' in ' '.join(
            l for l in gw.log_text().splitlines() if 'node actor ended' in l), 5,
            'the removed node actor ended')
    finally:
        listener.close()


def test_a_new_main_equipment_id_is_refused_by_name(start_gateway):
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics), 'renamed')
    gw.config.write_text(BASE.format(metrics=metrics).replace(
        'equipment_id = "reload_main"', 'equipment_id = "reload_renamed"'))
    reload(gw, metrics, result='refused')
    assert 'node.equipment_id' in gw.log_text()
    line = Line(gw)
    assert json.loads(line.ask('describe').split(' ', 2)[2])['equipment_id'] == 'reload_main'
    line.close()


def test_a_changed_serial_link_takes_over_its_port_without_an_error(start_gateway, tmp_path):
    """the old actor of a changed link lets go of its serial port (opened exclusively)
    before the new one opens it — also when the link is renamed: no failed open, no
    ERROR status, values go on"""
    metrics = free_port()
    inst = PtyInstrument(LakeShoreSim(rate=0.0, temperature=10.0),
                         str(tmp_path / 'ls.tty')).start()
    try:
        def config(timeout, name='ls'):
            return BASE.format(metrics=metrics) \
                + ascii_link(inst.path, name=name, timeout=timeout) \
                + lakeshore_module('ls_T', link=name)
        gw = start_gateway(config(0.3), 'serial-change')
        rec = Recorder(gw)
        assert rec.ask('activate') == 'active'
        rec.wait_for('update ls_T:value')
        start = rec.mark()
        for timeout, name in ((0.4, 'ls'), (0.5, 'ls'), (0.5, 'ls336')):
            gw.config.write_text(config(timeout, name))
            reload(gw, metrics)
            reply = rec.ask('read ls_T:value')
            assert reply.startswith('reply ls_T:value [10.0,'), reply
        assert gw.log_text().count('devices_started=["ls"]') == 2, gw.log_text()[-3000:]
        assert gw.log_text().count('devices_started=["ls336"]') == 1, gw.log_text()[-3000:]
        time.sleep(1.0)
        errors = [s for s in statuses(rec.lines(start), 'ls_T') if s[1] == ERROR]
        assert not errors, errors[:3]
        log = gw.log_text()
        assert log.count('link connected') >= 4, log[-3000:]
        assert 'cannot open' not in log and 'Resource busy' not in log \
            and 'temporarily unavailable' not in log, log[-3000:]
        rec.close()
    finally:
        inst.stop()


def test_a_changed_simulated_module_is_replaced_and_its_old_actor_stops(start_gateway):
    """a changed simulated module (no port to hand over) starts its successor first and
    the old actor stops once the node has switched: reads never fail, nothing leaks"""
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics), 'sim-change')
    line = Line(gw)
    for version in (1, 2):
        gw.config.write_text(BASE.format(metrics=metrics).replace(
            'driver = "sim_pressure"', f'driver = "sim_pressure"\ndescription = "v{version}"'))
        reload(gw, metrics)
        reply = line.ask('read p:value') if not closed(line, 0.2) else None
        if reply is None:   # the description changed: the node closed this client
            line = Line(gw)
            reply = line.ask('read p:value')
        assert reply.startswith('reply p:value'), reply
    log = gw.log_text()
    assert log.count('devices_started=["p"]') == 2, log[-3000:]
    wait_for(lambda: gw.log_text().count('device stopped') >= 2, 5, 'both old actors of p stopped')
    stopped = [l for l in gw.log_text().splitlines() if 'device stopped' in l]
    assert all('device=p' in l for l in stopped), stopped
    line.close()


def test_two_nodes_swap_their_addresses(start_gateway):
    """listeners that move stop before any is bound: two nodes that swap their ports
    both listen afterwards, each on the other's old port"""
    metrics = free_port()
    first, second = free_port(), free_port()

    def config(a, b):
        return BASE.format(metrics=metrics) + ''.join(f'''
[[extra_node]]
equipment_id = "{name}"
description = "node {name}"
listen = "127.0.0.1:{port}"
modules = ["T"]
''' for name, port in (('swap_a', a), ('swap_b', b)))

    def node_on(port):
        with socket.create_connection(('127.0.0.1', port), timeout=3) as s:
            s.sendall(b'describe\n')
            data = b''
            while not data.endswith(b'\n'):
                chunk = s.recv(65536)
                assert chunk, 'closed'
                data += chunk
        return json.loads(data.split(b' ', 2)[2])['equipment_id']

    gw = start_gateway(config(first, second), 'swap')
    assert (node_on(first), node_on(second)) == ('swap_a', 'swap_b')
    gw.config.write_text(config(second, first))
    reload(gw, metrics)
    assert (node_on(first), node_on(second)) == ('swap_b', 'swap_a')
    assert 'some steps failed' not in gw.log_text(), gw.log_text()[-2000:]


def test_a_refused_reload_leaves_no_trace_of_what_it_started(start_gateway):
    """a reload refused late (a port in use) stops the devices it had started, and their
    series do not stay in /metrics"""
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics), 'undo')
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        gw.config.write_text(BASE.format(metrics=metrics) + f'''
[[module]]
name = "q"
driver = "sim_pressure"

[[extra_node]]
equipment_id = "reload_blocked"
description = "on a port in use"
listen = "127.0.0.1:{busy.getsockname()[1]}"
modules = ["q"]
''')
        reload(gw, metrics, result='refused')
    assert 'Address already in use' in gw.log_text() or 'cannot listen' in gw.log_text()
    wait_for(lambda: not node_series(scrape('127.0.0.1', metrics), device='q'), 5,
             "the refused reload's device q gone from /metrics")
    line = Line(gw)
    assert line.ask('read p:value').startswith('reply p:value')
    line.close()


def test_a_remote_whose_modules_collide_is_refused_before_anything_changes(start_gateway):
    """a remote's modules are known only once it is connected: a reload adding one whose
    module names collide with local ones is refused as a whole, and a simulated module
    changed in the same file keeps running as it was (it was stopped, and the node kept
    its stopped handle)"""
    upstream = start_gateway(BASE.format(metrics=free_port()), 'upstream')
    metrics = free_port()
    gw = start_gateway(BASE.format(metrics=metrics), 'collide')
    colliding = BASE.format(metrics=metrics).replace(
        'driver = "sim_pressure"', 'driver = "sim_pressure"\ndescription = "changed"') + f'''
[[remote]]
name = "up"
address = "{upstream.host}:{upstream.port}"
timeout = 2
'''
    gw.config.write_text(colliding)
    reload(gw, metrics, result='refused')
    refusal = gw.log_text().split('reload refused')[-1]
    assert 'module "T": another module has the same name' in refusal, refusal[:2000]
    line = Line(gw)
    for _ in range(3):
        assert line.ask('read p:value').startswith('reply p:value'), 'p stopped'
        time.sleep(0.3)
    description = json.loads(line.ask('describe').split(' ', 2)[2])
    assert description['modules']['p']['description'] != 'changed'
    line.close()


def described_modules(gw):
    line = Line(gw)
    try:
        return set(json.loads(line.ask('describe').split(' ', 2)[2])['modules'])
    finally:
        line.close()


# a remote on a port where its upstream may not listen yet (fast reconnects)
REMOTE = '''
[[remote]]
name = "up"
address = "127.0.0.1:{port}"
prefix = "up_"
timeout = 2
reconnect_min = 0.1
reconnect_max = 0.3
'''


def start_upstream(tmp_path, port, extra=''):
    """a gateway (BASE plus `extra`) on 127.0.0.1:`port`, for a [[remote]] to reach"""
    workdir = tmp_path / f'upstream-{port}-{len(extra)}'
    workdir.mkdir()
    (workdir / 'gateway.toml').write_text(BASE.format(metrics=free_port()) + extra)
    return Gateway(workdir, config=workdir / 'gateway.toml', name='gateway[upstream]',
                   listen=f'127.0.0.1:{port}').start()


def test_a_remote_that_connected_later_keeps_its_modules_through_a_reload(start_gateway,
                                                                         tmp_path):
    """a remote that was down at start brings its modules when it connects; a later
    reload of an unrelated change keeps them (it handed the nodes the remote's module
    list from its start: none)"""
    port, metrics = free_port(), free_port()
    config = BASE.format(metrics=metrics) + REMOTE.format(port=port)
    gw = start_gateway(config, 'late-remote')
    assert 'up_T' not in described_modules(gw)
    upstream = start_upstream(tmp_path, port)
    try:
        wait_for(lambda: 'up_T' in described_modules(gw), 10, "the remote's modules")
        gw.config.write_text(config.replace('description = "main node"',
                                            'description = "main node, edited"'))
        reload(gw, metrics)
        assert {'up_T', 'up_p', 'T', 'p'} <= described_modules(gw)
    finally:
        upstream.stop()


def test_a_remote_changing_its_modules_leaves_other_nodes_values_alone(start_gateway,
                                                                       tmp_path):
    """a remote whose description changed makes every node reassemble; a node that does
    not export it keeps its cached values (they were all reset to "no value read yet"
    until the next poll, here 100 s away)"""
    port, metrics = free_port(), free_port()
    config = BASE.format(metrics=metrics) + f'''
[[module]]
name = "slow"
driver = "sim_temperature"
[module.settings]
pollinterval = 100

[[extra_node]]
equipment_id = "slow_view"
description = "the slow module only"
listen = "127.0.0.1:0"
modules = ["slow"]
''' + REMOTE.format(port=port)
    gw = start_gateway(config, 'remote-change')
    first = start_upstream(tmp_path, port)
    second = None
    try:
        wait_for(lambda: 'up_T' in described_modules(gw), 10, "the remote's modules")
        view = Node(gw, 2)
        line = Line(view)
        assert line.ask('activate') == 'active'
        line.close()
        first.stop()
        second = start_upstream(tmp_path, port,
                                '\n[[module]]\nname = "q"\ndriver = "sim_pressure"\n')
        wait_for(lambda: 'up_q' in described_modules(gw), 10, "the remote's new module")
        line = Line(view)
        line.send('activate')
        seen = []   # every cached value comes before `active`
        while not seen or seen[-1] != 'active':
            got = line.line()
            assert got is not None, seen
            seen.append(got)
        line.close()
        assert any(l.startswith('update slow:value') for l in seen), seen
        assert not any(l.startswith('error_update slow:value') for l in seen), seen
    finally:
        if second:
            second.stop()
