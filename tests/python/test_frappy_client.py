"""Interoperability: frappy's own SECoP client (frappy-core, frappy.client.SecopClient)
against secop-gateway.

Most tests use the gateway with its embedded default configuration (modules T, p, ps, io,
see config/gateway.toml); tests that need other settings start their own gateway from a
TOML config. Every test that changes the shared gateway restores what it changed.

frappy keys parameters by their *internal* name: '_sensor' -> 'sensor', '_fault' -> 'fault',
'_limits' -> 'limits' (SecopClient.internalize_name).
"""

import math
import threading
import time

import pytest
from frappy.datatypes import BoolType, CommandType, EnumType, FloatRange, StringType, \
    StructOf, TupleOf
from frappy.errors import HardwareError, RangeError, ReadOnlyError

pytestmark = pytest.mark.timeout(120)   # safety net only; every wait below is bounded

IDLE, BUSY, ERROR = 100, 300, 400   # SECoP status codes

SECOP2_IDN = 'ISSE,SECoP,,v2.0'                       # the gateway's default *IDN? reply
SECOP1_IDN = 'ISSE&SINE2020,SECoP,V2019-09-16,v1.0'   # what frappy's own server answers
SIMULATED_INSTRUMENT_IDN = 'SIMULATED,SCPI-INSTRUMENT,0,1.0'   # io settings.identification

# module -> (SECoP base interface class, parameters, commands), internal names (frappy
# drops the leading "_" of custom names: _heater_power -> heater_power, _current -> current)
EXPECTED_MODULES = {
    'T': ('Drivable', {'value', 'status', 'target', 'target_limits', 'ramp', 'setpoint',
                       'heater_power', 'pollinterval', 'sensor'}, {'stop'}),
    'p': ('Readable', {'value', 'status', 'pollinterval', 'fault'}, set()),
    'ps': ('Writable', {'value', 'status', 'target', 'mode', 'current', 'limits',
                        'pollinterval'}, set()),
    'io': ('Communicator', set(), {'communicate'}),
}

UPDATE_WAIT = 5.0     # s to wait for an event the gateway pushes (pollinterval is 1 s)
SETTLE_WAIT = 10.0    # s for the fast temperature loop to get BUSY -> IDLE

# A fast temperature loop: 10 K/s ramp, 0.2 s time constant.
FAST_T_CONFIG = '''
[node]
equipment_id = "secop_gateway_test_fast_T"
description = "fast simulated cryostat for the frappy interoperability tests"

[[module]]
name = "T"
driver = "sim_temperature"
[module.settings]
initial = 295.0
ramp = 600.0
time_constant = 0.2
tolerance = 0.5
pollinterval = 0.2
'''
FAST_T_TOLERANCE = 0.5

# Nothing is polled: the connection stays silent until the client pings.
IO_ONLY_CONFIG = f'''
[node]
equipment_id = "secop_gateway_test_io_only"
description = "a communicator only, no parameters"

[[module]]
name = "io"
driver = "sim_communicator"
[module.settings]
identification = "{SIMULATED_INSTRUMENT_IDN}"
'''
HEARTBEAT_WAIT = 8.0   # s; frappy pings after 5 s without a received line

# The four default modules, but *IDN? answered with the SECoP 1.0 identification.
V1_IDENTIFICATION_CONFIG = f'''
[node]
equipment_id = "secop_gateway_test_v1_idn"
description = "simulated node identifying itself with the SECoP 1.0 string"
identification = "{SECOP1_IDN}"

[[module]]
name = "T"
driver = "sim_temperature"
[module.properties]
group = "cryostat"
meaning = {{ function = "temperature_regulation", importance = 20, belongs_to = "sample" }}

[[module]]
name = "p"
driver = "sim_pressure"
[module.properties]
group = "cryostat"

[[module]]
name = "ps"
driver = "sim_power_supply"

[[module]]
name = "io"
driver = "sim_communicator"
[module.properties]
visibility = "w--"
[module.settings]
identification = "{SIMULATED_INSTRUMENT_IDN}"
'''


class UpdateRecorder:
    """collects updateItem callbacks (called from the client's RX thread)"""

    def __init__(self):
        self.items = []   # (module, parameter, CacheItem)
        self._cond = threading.Condition()

    def updateItem(self, module, parameter, item):   # pylint: disable=invalid-name
        with self._cond:
            self.items.append((module, parameter, item))
            self._cond.notify_all()

    def mark(self):
        with self._cond:
            return len(self.items)

    def wait_for(self, predicate, timeout, start=0):
        """index and entry of the first entry at/after start matching predicate, or None"""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index in range(start, len(self.items)):
                    if predicate(*self.items[index]):
                        return index, self.items[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def of(self, module, parameter, start=0):
        with self._cond:
            return [item for m, p, item in self.items[start:] if (m, p) == (module, parameter)]


def status_is(module, code_range):
    low, high = code_range

    def predicate(m, p, item):
        return (m, p) == (module, 'status') and item.readerror is None \
            and low <= item.value[0] < high
    return predicate


IS_BUSY = (BUSY, BUSY + 100)
IS_IDLE = (IDLE, IDLE + 100)


def read(client, module, parameter):
    """forced read over the connection; fails the test on a readerror"""
    item = client.getParameter(module, parameter, trycache=False)
    assert item.readerror is None, f'read {module}:{parameter} failed: {item.readerror!r}'
    return item.value


def parameter_problems(client):
    """read every parameter of every module; list of (ident, problem)"""
    problems = []
    for mname, module in client.modules.items():
        for pname, entry in module['parameters'].items():
            ident = client.identifier[mname, pname]
            item = client.getParameter(mname, pname, trycache=False)
            if item.readerror is not None:
                problems.append((ident, f'readerror {item.readerror!r}'))
                continue
            try:
                entry['datatype'].validate(item.value)
            except Exception as e:   # frappy's RangeError/WrongTypeError
                problems.append((ident, f'{item.value!r} violates {entry["datatype"]!r}: {e!r}'))
            if item.timestamp is None or not math.isfinite(item.timestamp):
                problems.append((ident, f'bad timestamp {item.timestamp!r}'))
            if 'constant' in entry and item.value != entry['constant']:
                problems.append((ident, f'{item.value!r} != constant {entry["constant"]!r}'))
    return problems


# ------------------------------------------------------------------------------------------
# 1. connect + description
# ------------------------------------------------------------------------------------------

def test_connect_and_description(client_session):
    client = client_session.client
    assert client.online and client.state == 'connected'
    assert client.secop_version == SECOP2_IDN
    # the client sent describe and activate (and nothing else) while connecting
    assert client_session.sent_lines()[:2] == ['describe', 'activate']

    props = client.properties
    assert props['equipment_id'] == 'secop_gateway_simulation'
    assert props['description'].splitlines()[0] == \
        'Simulated sample environment served by secop-gateway'
    assert isinstance(props['firmware'], str) and props['firmware'].startswith('secop-gateway')

    assert set(client.modules) == set(EXPECTED_MODULES)
    for mname, (base_class, parameters, commands) in EXPECTED_MODULES.items():
        module = client.modules[mname]
        classes = module['properties']['interface_classes']
        assert isinstance(classes, list) and all(isinstance(c, str) for c in classes)
        assert base_class in classes, f'{mname}: {classes}'
        assert isinstance(module['properties']['description'], str)
        assert set(module['parameters']) == parameters, mname
        assert set(module['commands']) == commands, mname

    T = client.modules['T']
    assert client.identifier['T', 'sensor'] == 'T:_sensor'
    assert isinstance(T['parameters']['value']['datatype'], FloatRange)
    assert T['parameters']['value']['datatype'].unit == 'K'
    target = T['parameters']['target']
    assert isinstance(target['datatype'], FloatRange)
    assert (target['datatype'].min, target['datatype'].max) == (1.5, 400.0)
    assert target['readonly'] is False and T['parameters']['value']['readonly'] is True
    status = T['parameters']['status']['datatype']
    assert isinstance(status, TupleOf) and len(status.members) == 2
    assert isinstance(status.members[0], EnumType) and isinstance(status.members[1], StringType)
    codes = status.members[0].export_datatype()['members']
    assert codes['IDLE'] == IDLE and codes['BUSY'] == BUSY and codes['ERROR'] == ERROR
    sensor = T['parameters']['sensor']
    assert isinstance(sensor['datatype'], StringType) and sensor['readonly'] is True
    assert sensor['constant'] == 'Pt100 (simulated)'
    stop = T['commands']['stop']['datatype']
    assert isinstance(stop, CommandType) and stop.argument is None and stop.result is None

    assert isinstance(client.modules['p']['parameters']['fault']['datatype'], BoolType)
    assert client.modules['p']['parameters']['fault']['readonly'] is False

    ps = client.modules['ps']['parameters']
    assert ps['mode']['datatype'].export_datatype()['members'] == \
        {'off': 0, 'constant_voltage': 1, 'constant_current': 2}
    limits = ps['limits']['datatype']
    assert isinstance(limits, StructOf) and set(limits.members) == {'voltage', 'current'}
    assert set(limits.optional) == {'voltage', 'current'}

    communicate = client.modules['io']['commands']['communicate']['datatype']
    assert isinstance(communicate, CommandType)
    assert isinstance(communicate.argument, StringType)
    assert isinstance(communicate.result, StringType)


# ------------------------------------------------------------------------------------------
# 2. read every parameter
# ------------------------------------------------------------------------------------------

def test_read_every_parameter(client_session):
    client = client_session.client
    sent_before = len(client_session.sent_lines())
    problems = parameter_problems(client)
    assert problems == []
    # trycache=False really went over the wire, once per parameter
    sent = client_session.sent_lines()[sent_before:]
    expected = [f'read {client.identifier[m, p]}'
                for m, module in client.modules.items() for p in module['parameters']]
    assert sorted(sent) == sorted(expected)
    assert len(expected) == sum(len(p) for _, p, _ in EXPECTED_MODULES.values())


# ------------------------------------------------------------------------------------------
# 3. updates after activation
# ------------------------------------------------------------------------------------------

def test_activation_fills_cache(client_session):
    """the initial updates of 'activate' cover every (non-constant) parameter"""
    client = client_session.client
    immediate = UpdateRecorder()
    client.register_callback(None, updateItem=immediate.updateItem)   # callimmediately=True
    client.unregister_callback(None, updateItem=immediate.updateItem)
    got = {(m, p) for m, p, _ in immediate.items}
    for mname, module in client.modules.items():
        for pname, entry in module['parameters'].items():
            if 'constant' in entry:
                continue   # a constant is given in the description
            assert (mname, pname) in got, f'no initial update for {mname}:{pname}'
    errors = [(m, p, item.readerror) for m, p, item in immediate.items if item.readerror]
    assert errors == []


def test_updates_after_activation(client_session):
    client = client_session.client
    recorder = UpdateRecorder()
    events = []

    def updateEvent(module, parameter, value, timestamp, readerror):   # pylint: disable=invalid-name
        events.append((module, parameter, value, timestamp, readerror))

    sent_before = len(client_session.sent_lines())
    client.register_callback(None, updateItem=recorder.updateItem, callimmediately=False)
    client.register_callback(('T', 'value'), updateEvent=updateEvent, callimmediately=False)
    try:
        second = recorder.wait_for(lambda m, p, item: (m, p) == ('T', 'value')
                                   and len(recorder.of('T', 'value')) >= 2, UPDATE_WAIT)
        assert second is not None, f'less than 2 T:value updates in {UPDATE_WAIT} s'
        assert recorder.wait_for(lambda m, p, item: (m, p) == ('p', 'value'), UPDATE_WAIT), \
            f'no p:value update in {UPDATE_WAIT} s'
    finally:
        client.unregister_callback(None, updateItem=recorder.updateItem)
        client.unregister_callback(('T', 'value'), updateEvent=updateEvent)

    # pushed by the gateway, not replies to our requests
    requests = [line for line in client_session.sent_lines()[sent_before:]
                if not line.startswith('ping ')]
    assert requests == []
    items = recorder.of('T', 'value')
    assert all(item.readerror is None and isinstance(item.value, float) for item in items)
    stamps = [item.timestamp for item in items]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1]
    T_events = [e for e in events if e[:2] == ('T', 'value')]
    assert len(T_events) >= 2 and all(e[4] is None for e in T_events)
    assert all(isinstance(item.value, float) for item in recorder.of('p', 'value'))


# ------------------------------------------------------------------------------------------
# 4. change targets, commands
# ------------------------------------------------------------------------------------------

def test_drive_temperature_busy_then_idle(start_gateway, client_factory):
    gw = start_gateway(FAST_T_CONFIG, name='fast_T')
    client = client_factory(gw).client
    recorder = UpdateRecorder()
    client.register_callback('T', updateItem=recorder.updateItem, callimmediately=False)
    assert read(client, 'T', 'status')[0] == IDLE

    start = recorder.mark()
    changed = client.setParameter('T', 'target', 300.0)
    assert changed.readerror is None and changed.value == 300.0
    assert read(client, 'T', 'target') == 300.0

    busy = recorder.wait_for(status_is('T', IS_BUSY), UPDATE_WAIT, start)
    assert busy is not None, 'no BUSY status update after changing the target'
    idle = recorder.wait_for(status_is('T', IS_IDLE), SETTLE_WAIT, busy[0] + 1)
    assert idle is not None, f'T not IDLE again within {SETTLE_WAIT} s'
    assert abs(read(client, 'T', 'value') - 300.0) <= FAST_T_TOLERANCE + 0.05
    assert read(client, 'T', 'setpoint') == pytest.approx(300.0)
    assert {item.value for item in recorder.of('T', 'target', start)} == {300.0}

    # stop a long ramp (200 K at 10 K/s) on its way: IDLE at once, target = where it stopped
    start = recorder.mark()
    client.setParameter('T', 'target', 100.0)
    busy = recorder.wait_for(status_is('T', IS_BUSY), UPDATE_WAIT, start)
    assert busy is not None
    on_the_way = recorder.wait_for(lambda m, p, item: (m, p) == ('T', 'setpoint')
                                   and item.value < 295.0, UPDATE_WAIT, start)
    assert on_the_way is not None, 'setpoint does not ramp down'
    stop_mark = recorder.mark()
    result, qualifiers = client.execCommand('T', 'stop')
    assert result is None and 't' in qualifiers
    assert recorder.wait_for(status_is('T', IS_IDLE), UPDATE_WAIT, stop_mark) is not None
    targets = recorder.of('T', 'target', stop_mark)
    assert targets, 'no target update after stop'
    assert 100.0 < targets[-1].value < 300.0
    assert read(client, 'T', 'target') == targets[-1].value
    assert read(client, 'T', 'status')[0] == IDLE


def test_change_power_supply(client_session):
    session, client = client_session, client_session.client
    original = {p: read(client, 'ps', p) for p in ('target', 'mode', 'limits')}
    try:
        assert client.setParameter('ps', 'target', 12.5).value == 12.5
        assert read(client, 'ps', 'target') == 12.5

        # enum by name and by number (frappy sends the number)
        mode = client.setParameter('ps', 'mode', 'constant_voltage').value
        assert mode == 1 and mode.name == 'constant_voltage'
        assert 'change ps:mode 1' in session.sent_lines()
        assert read(client, 'ps', 'mode').name == 'constant_voltage'
        assert read(client, 'ps', 'value') == pytest.approx(12.5)   # output follows target
        mode = client.setParameter('ps', 'mode', 2).value
        assert mode.name == 'constant_current'
        assert read(client, 'ps', 'mode') == 2

        # struct with optional members: a change may give only one of them
        voltage = original['limits']['voltage']
        limits = client.setParameter('ps', 'limits', {'current': 2.0}).value
        assert 'change ps:_limits {"current": 2.0}' in session.sent_lines()
        assert limits == {'voltage': voltage, 'current': 2.0}
        limits = client.setParameter('ps', 'limits', {'voltage': 20.0}).value
        assert limits == {'voltage': 20.0, 'current': 2.0}
        assert read(client, 'ps', 'limits') == {'voltage': 20.0, 'current': 2.0}
    finally:
        client.setParameter('ps', 'limits', original['limits'])
        client.setParameter('ps', 'mode', original['mode'])
        client.setParameter('ps', 'target', original['target'])
    assert read(client, 'ps', 'limits') == original['limits']
    assert read(client, 'ps', 'mode') == original['mode']


def test_commands(client_session):
    client = client_session.client
    target = read(client, 'T', 'target')
    try:
        result, qualifiers = client.execCommand('T', 'stop')
        assert result is None and isinstance(qualifiers.get('t'), float)
        assert read(client, 'T', 'status')[0] == IDLE
    finally:
        client.setParameter('T', 'target', target)   # stop set it to the current temperature

    result, qualifiers = client.execCommand('io', 'communicate', '*IDN?')
    assert result == SIMULATED_INSTRUMENT_IDN and 't' in qualifiers
    assert client.execCommand('io', 'communicate', 'VAL 3')[0] == 'OK'
    assert client.execCommand('io', 'communicate', 'VAL?')[0] == '3'
    assert client.execCommand('io', 'communicate', 'ECHO hello SECoP')[0] == 'hello SECoP'
    assert 'do io:communicate "*IDN?"' in client_session.sent_lines()


# ------------------------------------------------------------------------------------------
# 5. error mapping
# ------------------------------------------------------------------------------------------

def test_out_of_range_raises_range_error(client_session):
    client = client_session.client
    before = read(client, 'T', 'target')
    with pytest.raises(RangeError) as excinfo:
        client.setParameter('T', 'target', 1000.0)
    assert type(excinfo.value) is RangeError and excinfo.value.name == 'RangeError'
    assert read(client, 'T', 'target') == before

    with pytest.raises(RangeError):
        client.setParameter('ps', 'target', 31.0)
    limits = read(client, 'ps', 'limits')
    with pytest.raises(RangeError):
        client.setParameter('ps', 'limits', {'current': 6.0})   # member out of range
    assert read(client, 'ps', 'limits') == limits


def test_change_readonly_raises_readonly(client_session):
    client = client_session.client
    for module, parameter, value in [('T', 'value', 3.0), ('ps', 'current', 1.0),
                                     ('T', 'sensor', 'other')]:
        with pytest.raises(ReadOnlyError) as excinfo:
            client.setParameter(module, parameter, value)
        assert type(excinfo.value) is ReadOnlyError and excinfo.value.name == 'ReadOnly', \
            f'{module}:{parameter}'


def test_read_with_fault_gives_hardware_error(client_session):
    client = client_session.client
    recorder = UpdateRecorder()
    client.register_callback('p', updateItem=recorder.updateItem, callimmediately=False)
    try:
        assert client.setParameter('p', 'fault', True).value is True
        item = client.getParameter('p', 'value', trycache=False)
        assert item.value is None
        assert type(item.readerror) is HardwareError
        assert item.readerror.name == 'HardwareError'
        assert read(client, 'p', 'status')[0] == ERROR
        # the fault is also pushed as error_update
        pushed = recorder.wait_for(lambda m, p, it: (m, p) == ('p', 'value') and it.readerror,
                                   UPDATE_WAIT)
        assert pushed is not None and type(pushed[1][2].readerror) is HardwareError
    finally:
        client.setParameter('p', 'fault', False)
        client.unregister_callback('p', updateItem=recorder.updateItem)
    assert read(client, 'p', 'value') >= 0
    assert read(client, 'p', 'status')[0] == IDLE


def test_heartbeat_on_idle_connection(start_gateway, client_factory):
    """with nothing to update, frappy pings after 5 s; the pong must match the ping"""
    gw = start_gateway(IO_ONLY_CONFIG, name='io_only')
    session = client_factory(gw)
    deadline = time.monotonic() + HEARTBEAT_WAIT
    while time.monotonic() < deadline and not any(
            line.startswith('pong ') for line in session.received_lines()):
        time.sleep(0.1)
    pings = [line for line in session.sent_lines() if line.startswith('ping ')]
    pongs = [line for line in session.received_lines() if line.startswith('pong ')]
    assert pings and pings[0] == 'ping 5', session.sent_lines()
    assert pongs and pongs[0].split(' ', 2)[:2] == ['pong', '5'], session.received_lines()
    # the connection is still fine
    assert session.client.execCommand('io', 'communicate', 'ECHO ok')[0] == 'ok'


# ------------------------------------------------------------------------------------------
# 6. the client logs nothing at WARNING+ (except frappy's legacy-identification warning)
# ------------------------------------------------------------------------------------------

def exercise(client):
    """read, watch, change, run commands and provoke errors; restores what it changes"""
    assert parameter_problems(client) == []
    recorder = UpdateRecorder()
    client.register_callback(None, updateItem=recorder.updateItem, callimmediately=False)
    try:
        assert recorder.wait_for(lambda m, p, item: (m, p) == ('T', 'value'), UPDATE_WAIT)
        target = read(client, 'T', 'target')
        client.execCommand('T', 'stop')
        client.setParameter('T', 'target', target)
        limits = read(client, 'ps', 'limits')
        client.setParameter('ps', 'limits', {'current': 1.0})
        client.setParameter('ps', 'limits', limits)
        client.setParameter('ps', 'mode', 'off')
        assert client.execCommand('io', 'communicate', '*IDN?')[0] == SIMULATED_INSTRUMENT_IDN
        with pytest.raises(RangeError):
            client.setParameter('T', 'target', 1000.0)
        with pytest.raises(ReadOnlyError):
            client.setParameter('T', 'value', 1.0)
        client.setParameter('p', 'fault', True)
        try:
            assert client.getParameter('p', 'value', trycache=False).readerror is not None
        finally:
            client.setParameter('p', 'fault', False)
    finally:
        client.unregister_callback(None, updateItem=recorder.updateItem)


def test_secop2_identification_gives_only_legacy_warning(client_session):
    exercise(client_session.client)
    client_session.disconnect()
    legacy = client_session.legacy_idn_warnings()
    assert [r.getMessage() for r in legacy] == \
        [f'SEC-Node replied with legacy identify reply: {SECOP2_IDN}']
    assert client_session.problems() == legacy


def test_secop1_identification_gives_no_warning(start_gateway, client_factory):
    gw = start_gateway(V1_IDENTIFICATION_CONFIG, name='v1_idn')
    session = client_factory(gw)
    assert session.client.secop_version == SECOP1_IDN
    assert set(session.client.modules) == set(EXPECTED_MODULES)
    exercise(session.client)
    session.disconnect()
    assert [f'{r.levelname}: {r.getMessage()}' for r in session.problems()] == []
