"""pytest fixtures: run secop-gateway as a subprocess on loopback, connect frappy clients.

Fixtures
    gateway         module scope: the gateway with its embedded default config
                    (modules T, p, ps, io); has .host, .port, .process
    start_gateway   function scope: start_gateway(toml_text) -> Gateway running that config
                    (the file is written into tmp_path); stopped at teardown
    client_factory  function scope: client_factory(gateway) -> ClientSession, a connected
                    frappy.client.SecopClient whose log records are collected; disconnected
                    at teardown, *before* any gateway is stopped; the teardown fails if the
                    client logged anything at WARNING or above other than the (single)
                    legacy-identification warning (see ClientSession.unexpected_problems)
    client_session  function scope: client_factory(gateway) for the default gateway
    make_config     session scope: make_config(websocket={...}, listen={...}) -> TOML text of
                    a small fast node (modules T, p, ps; see node_config)
    start_module_gateway  module scope: like start_gateway, for gateways that several tests
                    of one module share; stopped when the module is done

The binary is $SECOP_GATEWAY_BIN, else <repo>/target/debug/secop-gateway (run `cargo build`).
On a test failure the gateway's log (stdout+stderr) is attached to the report.
"""

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from frappy.client import SecopClient

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO_ROOT / 'target' / 'debug' / 'secop-gateway'

LISTEN_ADDRESS = '127.0.0.1:0'   # loopback only, ephemeral port
READY_TIMEOUT = 10.0             # s until the ready file must appear
STOP_TIMEOUT = 5.0               # s between SIGTERM and SIGKILL
CONNECT_TRY_PERIOD = 5           # s SecopClient.connect() keeps retrying

# frappy-core 0.20.9 (frappy/client/__init__.py, SecopClient.connect) logs this for every
# *IDN? reply not starting with 'ISSE&SINE2020,SECoP,' - i.e. also for a correct SECoP 2.0
# reply 'ISSE,SECoP,...'.
LEGACY_IDN_MSG = 'SEC-Node replied with legacy identify reply: %s'

_ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def gateway_binary():
    """path of the gateway executable; fails the test with a clear message if missing"""
    configured = os.environ.get('SECOP_GATEWAY_BIN')
    path = Path(configured) if configured else DEFAULT_BINARY
    if not path.is_file() or not os.access(path, os.X_OK):
        origin = 'SECOP_GATEWAY_BIN' if configured else 'default location'
        pytest.fail(f'secop-gateway binary not found or not executable at {path} ({origin}); '
                    f'run `cargo build` in {REPO_ROOT} or set SECOP_GATEWAY_BIN', pytrace=False)
    return path


class Gateway:
    """one secop-gateway process listening on 127.0.0.1:<ephemeral port>"""

    def __init__(self, workdir, config=None, name='gateway', listen=LISTEN_ADDRESS):
        self.workdir = Path(workdir)
        self.listen = listen
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = Path(config) if config else None
        self.name = name
        self.ready_file = self.workdir / 'ready.json'
        self.log_file = self.workdir / 'gateway.log'
        self.process = None
        self.host = None
        self.port = None
        self.exit_code = None
        self._log_handle = None

    @property
    def uri(self):
        return f'{self.host}:{self.port}'

    def start(self):
        cmd = [str(gateway_binary()), '--listen', self.listen,
               '--ready-file', str(self.ready_file)]
        if self.config:
            cmd += ['--config', str(self.config)]
        # no config or listen overrides from the caller's environment
        env = {k: v for k, v in os.environ.items() if not k.startswith('SECOP_GATEWAY')}
        self.ready_file.unlink(missing_ok=True)
        self._log_handle = open(self.log_file, 'wb')
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        try:
            self.host, self.port = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        last_problem = 'ready file not written'
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                pytest.fail(f'{self.name}: secop-gateway exited with code {code} before it was '
                            f'ready\ncommand: {self.process.args}\n{self.log_section()}',
                            pytrace=False)
            if self.ready_file.exists():
                try:
                    ready = json.loads(self.ready_file.read_text())
                    address = ready['tcp'][0]
                    host, _, port = address.rpartition(':')
                    if host != '127.0.0.1':
                        pytest.fail(f'{self.name}: gateway listens on {address}, '
                                    f'expected loopback 127.0.0.1', pytrace=False)
                    return host, int(port)
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    last_problem = f'ready file incomplete: {e!r}'   # maybe partially written
            time.sleep(0.05)
        pytest.fail(f'{self.name}: secop-gateway not ready within {READY_TIMEOUT} s '
                    f'({last_problem})\n{self.log_section()}', pytrace=False)

    def stop(self):
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; idempotent"""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if proc is not None:
            self.exit_code = proc.returncode
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def log_text(self):
        try:
            raw = self.log_file.read_bytes()
        except OSError as e:
            return f'<no log: {e}>'
        return _ANSI_ESCAPE.sub('', raw.decode('utf-8', 'replace'))

    def log_section(self):
        code = self.process.poll() if self.process is not None else None
        state = 'not started' if self.process is None else \
            'running' if code is None else f'exit code {code}'
        return (f'--- {self.name} log ({self.log_file}, {state}) ---\n'
                f'{self.log_text()}--- end of {self.name} log ---')


class RecordCollector(logging.Handler):
    """keeps every log record (all levels)"""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.records = []

    def emit(self, record):
        self.records.append(record)


class ClientSession:
    """a frappy SecopClient plus everything it logged"""

    _ids = itertools.count()

    def __init__(self, gateway):
        self.gateway = gateway
        self.logger = logging.getLogger(f'frappy_client.{gateway.name}.{next(self._ids)}')
        self.logger.setLevel(logging.DEBUG)   # DEBUG: the client logs 'TX: ...' / 'RX: ...'
        self.logger.propagate = False
        self.collector = RecordCollector()
        self.logger.addHandler(self.collector)
        self.client = SecopClient(gateway.uri, log=self.logger)

    def connect(self, try_period=CONNECT_TRY_PERIOD):
        self.client.connect(try_period=try_period)
        return self

    def disconnect(self):
        self.client.disconnect()

    def close(self):
        self.disconnect()
        self.logger.removeHandler(self.collector)

    @property
    def records(self):
        return list(self.collector.records)

    def problems(self):
        """records at WARNING or above"""
        return [r for r in self.records if r.levelno >= logging.WARNING]

    def legacy_idn_warnings(self):
        return [r for r in self.problems()
                if r.levelno == logging.WARNING and r.msg == LEGACY_IDN_MSG]

    def unexpected_problems(self):
        """WARNING+ records except one legacy-identification warning"""
        legacy = self.legacy_idn_warnings()[:1]
        return [r for r in self.problems() if r not in legacy]

    def _traffic(self, fmt):
        lines = []
        for r in self.records:
            if r.msg == fmt and r.args:
                line = r.args[0]
                if isinstance(line, bytes):
                    line = line.decode('utf-8', 'replace')
                lines.append(line.rstrip('\n'))
        return lines

    def sent_lines(self):
        """request lines sent by the client (from its 'TX: %r' debug records; the initial
        *IDN? is not logged by frappy)"""
        return self._traffic('TX: %r')

    def received_lines(self):
        """lines received by the client after the *IDN? reply ('RX: %r' debug records)"""
        return self._traffic('RX: %r')


def format_records(records):
    return '\n'.join(f'  {r.levelname} {r.name}: {r.getMessage()}' for r in records) or '  (none)'


class GatewayStarter:
    """callable fixture value: start_gateway(toml_text, name=...) -> Gateway"""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.gateways = []

    def __call__(self, config_text, name='custom'):
        workdir = self.tmp_path / f'{name}-{len(self.gateways)}'
        workdir.mkdir(parents=True)
        config = workdir / 'gateway.toml'
        config.write_text(config_text)
        gw = Gateway(workdir, config=config, name=f'gateway[{name}]')
        self.gateways.append(gw)
        return gw.start()

    def stop_all(self):
        for gw in reversed(self.gateways):
            gw.stop()


class ClientFactory:
    """callable fixture value: client_factory(gateway, connect=True) -> ClientSession"""

    def __init__(self):
        self.sessions = []

    def __call__(self, gateway, connect=True):
        session = ClientSession(gateway)
        self.sessions.append(session)
        if connect:
            session.connect()
        return session

    @property
    def gateways(self):
        return [s.gateway for s in self.sessions]


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    """the gateway with its embedded default configuration"""
    gw = Gateway(tmp_path_factory.mktemp('gateway-default'), name='gateway[default]')
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def start_gateway(tmp_path):
    starter = GatewayStarter(tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.fixture
def client_factory(start_gateway):
    # depends on start_gateway so that clients are disconnected before those gateways stop
    # (module-scoped gateways are torn down after every function-scoped fixture anyway)
    factory = ClientFactory()
    yield factory
    for session in factory.sessions:
        session.close()
    complaints = []
    for session in factory.sessions:
        unexpected = session.unexpected_problems()
        if unexpected:
            complaints.append(f'client of {session.gateway.name} logged:\n'
                              f'{format_records(unexpected)}')
    if complaints:
        pytest.fail('frappy client logged unexpected records at WARNING or above '
                    '(only the legacy-identification warning is tolerated):\n'
                    + '\n'.join(complaints), pytrace=False)


@pytest.fixture
def client_session(gateway, client_factory):
    """a frappy client connected (and activated) to the default gateway"""
    return client_factory(gateway)


# A small node with fast simulated devices, for tests that need their own [listen] or
# [listen.websocket] settings (WebSocket, browser and Autobahn tests).
NODE_CONFIG_MODULES = '''
[[module]]
name = "T"
driver = "sim_temperature"
[module.settings]
initial = 10.0
ramp = 600.0
time_constant = 0.1
tolerance = 0.5
pollinterval = 0.2

[[module]]
name = "p"
driver = "sim_pressure"
[module.settings]
pollinterval = 0.2

[[module]]
name = "ps"
driver = "sim_power_supply"
[module.settings]
pollinterval = 0.5
'''


def toml_value(value):
    """a Python value as TOML (str, bool, int, float, lists of those)"""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(toml_value(v) for v in value) + ']'
    raise TypeError(f'no TOML for {value!r}')


def node_config(equipment_id='ws_test_node', listen=None, websocket=None):
    """TOML text: node `equipment_id` with modules T, p, ps (fast simulations) and the given
    [listen] and [listen.websocket] keys"""
    lines = ['[node]', f'equipment_id = {toml_value(equipment_id)}',
             'description = "secop-gateway test node"', '', '[listen]']
    lines += [f'{k} = {toml_value(v)}' for k, v in (listen or {}).items()]
    lines += ['', '[listen.websocket]']
    lines += [f'{k} = {toml_value(v)}' for k, v in (websocket or {}).items()]
    return '\n'.join(lines) + '\n' + NODE_CONFIG_MODULES


@pytest.fixture(scope='session')
def make_config():
    return node_config


@pytest.fixture(scope='module')
def start_module_gateway(tmp_path_factory):
    starter = GatewayStarter(tmp_path_factory.mktemp('module-gateways'))
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """attach the logs of the gateways a failed test used"""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    gateways = []
    for value in (getattr(item, 'funcargs', None) or {}).values():
        if isinstance(value, Gateway):
            candidates = [value]
        elif isinstance(value, ClientSession):
            candidates = [value.gateway]
        else:
            candidates = getattr(value, 'gateways', [])
        gateways.extend(gw for gw in candidates if gw not in gateways)
    for gw in gateways:
        report.sections.append((f'{gw.name} log', gw.log_section()))
