"""The deployment files in deploy/: systemd unit, Prometheus config and alert rules, Grafana
dashboard; and the process behaviour the unit relies on (sd_notify readiness and watchdog,
exit status 2 for configuration errors).

What is asserted
- `promtool check rules deploy/prometheus/alerts.yml` and `promtool test rules
  deploy/prometheus/alerts_test.yml` pass, and every alert of alerts.yml has a test case.
- `promtool check config` accepts deploy/prometheus/prometheus.yml as shipped (its
  rule_files resolve next to it), and also with its commented dedicated-port alternative
  switched on.
- The Grafana dashboard is valid JSON for a current Grafana (schemaVersion >= 36), takes
  its data source from a `datasource` variable of type prometheus, and queries only
  metrics of the gateway's metrics contract (tests/python/test_prometheus.py checks the
  gateway exposes them, and runs every query against a real Prometheus).
- `systemd-analyze verify` accepts the unit (with ExecStart pointed at the built binary,
  which verify requires to exist), the unit has the settings this project relies on, and
  `systemd-analyze security --offline` rates its exposure low.
- With NOTIFY_SOCKET and WATCHDOG_USEC set as systemd sets them, the gateway sends
  READY=1 once its port accepts connections and WATCHDOG=1 about every WATCHDOG_USEC/2;
  without WATCHDOG_USEC it sends no watchdog pings.
- A broken configuration exits with status 2 (RestartPreventExitStatus=2 in the unit).
- Every system call the gateway makes (start, sd_notify, TCP/WebSocket/HTTP clients, polls,
  SIGTERM; traced with strace) is allowed by the unit's SystemCallFilter: under systemd a
  refused call fails with EPERM, which would otherwise only show in production.

promtool comes with Debian's `prometheus` package, systemd-analyze with `systemd`, strace
with `strace`. Without a tool its tests are skipped; under CI (CI=true) a missing promtool
is a failure, since tests/run.sh installs it.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import gateway_binary

pytestmark = pytest.mark.timeout(120)   # safety net only; every wait below is bounded

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / 'deploy'
PROMETHEUS_DIR = DEPLOY / 'prometheus'
DASHBOARD = DEPLOY / 'grafana' / 'secop-gateway.json'
UNIT = DEPLOY / 'secop-gateway.service'
INSTALLED_BINARY = '/usr/local/bin/secop-gateway'

TOOL_TIMEOUT = 60           # s for one promtool / systemd-analyze run
READY_TIMEOUT = 10.0        # s until READY=1
STOP_TIMEOUT = 5.0

# The metrics contract (see tests/python/test_prometheus.py, which checks the gateway
# exposes exactly these families).
GATEWAY_METRICS = {
    'secop_gateway_build_info', 'secop_gateway_start_time_seconds',
    'secop_gateway_connections_open', 'secop_gateway_connections_total',
    'secop_gateway_messages_received_total', 'secop_gateway_messages_sent_total',
    'secop_gateway_error_replies_total', 'secop_gateway_updates_coalesced_total',
    'secop_gateway_events_dropped_total', 'secop_gateway_slow_clients_disconnected_total',
    'secop_gateway_outbox_queued_bytes', 'secop_gateway_requests_total',
    'secop_gateway_request_duration_seconds', 'secop_gateway_updates_emitted_total',
    'secop_gateway_module_status', 'secop_gateway_device_transactions_total',
    'secop_gateway_device_transaction_duration_seconds', 'secop_gateway_device_cache_hits_total',
    'secop_gateway_device_reconnects_total',
    'secop_gateway_device_up', 'secop_gateway_device_last_success_timestamp_seconds',
    'secop_gateway_poll_cycle_duration_seconds', 'secop_gateway_poll_overruns_total',
    'secop_gateway_cross_protocol_closed_total', 'secop_gateway_connections_refused_total',
    'secop_gateway_input_budget_closed_total',
    'secop_gateway_http_requests_refused_total', 'secop_gateway_audit_records_total',
    'secop_gateway_audit_dropped_total', 'secop_gateway_audit_write_errors_total',
    'secop_gateway_unfinished_lines_total', 'secop_gateway_discovery_dropped_total',
    'secop_gateway_config_reloads_total',
    'secop_gateway_config_last_reload_success_timestamp_seconds',
    'secop_gateway_history_points', 'secop_gateway_history_bytes',
}
HISTOGRAMS = {'secop_gateway_outbox_queued_bytes', 'secop_gateway_request_duration_seconds',
              'secop_gateway_device_transaction_duration_seconds',
              'secop_gateway_poll_cycle_duration_seconds'}
PROCESS_METRICS = {'process_cpu_seconds_total', 'process_resident_memory_bytes',
                   'process_virtual_memory_bytes', 'process_open_fds', 'process_max_fds',
                   'process_start_time_seconds', 'process_threads'}


def need_tool(name, required_in_ci=True):
    path = shutil.which(name)
    if path:
        return path
    message = f'{name} not found'
    if name == 'promtool':
        message += (": install Debian's package with "
                    '`apt-get install -y --no-install-recommends prometheus` '
                    '(tests/run.sh does)')
    if required_in_ci and os.environ.get('CI'):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def run(cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, **kwargs)


def report(result):
    return f'exit {result.returncode}\n{result.stdout}{result.stderr}'


# ------------------------------------------------------------------ Prometheus

def test_promtool_check_rules():
    result = run([need_tool('promtool'), 'check', 'rules', PROMETHEUS_DIR / 'alerts.yml'])
    assert result.returncode == 0, report(result)
    assert 'SUCCESS' in result.stdout, report(result)


def test_promtool_test_rules():
    # from another directory: rule_files in alerts_test.yml resolve next to it
    result = run([need_tool('promtool'), 'test', 'rules', PROMETHEUS_DIR / 'alerts_test.yml'],
                 cwd='/')
    assert result.returncode == 0, report(result)
    assert 'SUCCESS' in result.stdout, report(result)


def test_every_alert_has_unit_tests():
    alerts = set(re.findall(r'^\s*- alert: (\w+)\s*$',
                            (PROMETHEUS_DIR / 'alerts.yml').read_text(), re.M))
    assert len(alerts) >= 6, alerts
    tests = (PROMETHEUS_DIR / 'alerts_test.yml').read_text()
    tested = set(re.findall(r'^\s*alertname: (\w+)\s*$', tests, re.M))
    assert alerts == tested, f'untested: {alerts - tested}; unknown: {tested - alerts}'
    # each alert is expected to fire at least once (a non-empty exp_alerts)
    firing = set(re.findall(r'alertname: (\w+)\s*\n\s*exp_alerts:\s*\n\s*- exp_labels', tests))
    assert alerts == firing, f'never tested firing: {alerts - firing}'


def test_alert_rules_use_only_contract_metrics():
    text = (PROMETHEUS_DIR / 'alerts.yml').read_text()
    exprs = re.findall(r'^\s*expr: (.*(?:\n\s{10,}.*)*)', text, re.M)
    names = {strip_suffix(n) for e in exprs for n in re.findall(r'\bsecop_gateway_\w+', e)}
    assert names and names <= GATEWAY_METRICS, names - GATEWAY_METRICS


def test_promtool_check_config_as_shipped():
    result = run([need_tool('promtool'), 'check', 'config', PROMETHEUS_DIR / 'prometheus.yml'])
    assert result.returncode == 0, report(result)
    assert '1 rule files found' in result.stdout + result.stderr, report(result)


def test_promtool_check_config_dedicated_port_alternative(tmp_path):
    """switch the example to its commented alternative (the [metrics] listener's port)"""
    promtool = need_tool('promtool')
    text = (PROMETHEUS_DIR / 'prometheus.yml').read_text()
    shipped = '    static_configs:\n      - targets: ["gateway-host:10767"]\n'
    assert shipped in text
    alternative = re.search(r'\n    # static_configs:\n    #   - targets: \["([^"]+)"\]\n', text)
    assert alternative, 'commented alternative not found'
    assert alternative.group(1).endswith(':9105')
    text = text.replace(shipped, '').replace(
        alternative.group(0),
        f'\n    static_configs:\n      - targets: ["{alternative.group(1)}"]\n')
    (tmp_path / 'prometheus.yml').write_text(text)
    shutil.copy(PROMETHEUS_DIR / 'alerts.yml', tmp_path / 'alerts.yml')
    result = run([promtool, 'check', 'config', tmp_path / 'prometheus.yml'])
    assert result.returncode == 0, report(result) + text


# ------------------------------------------------------------------ Grafana

def strip_suffix(name):
    for suffix in ('_bucket', '_sum', '_count'):
        if name.endswith(suffix) and name[:-len(suffix)] in HISTOGRAMS:
            return name[:-len(suffix)]
    return name


def all_panels(dashboard):
    for panel in dashboard['panels']:
        yield panel
        yield from panel.get('panels', [])


def test_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard['schemaVersion'] >= 36
    assert dashboard['title'] and dashboard['uid']
    assert dashboard.get('id') is None   # importable into any Grafana

    variables = {v['name']: v for v in dashboard['templating']['list']}
    datasource = variables.get('datasource')
    assert datasource and datasource['type'] == 'datasource' \
        and datasource['query'] == 'prometheus', datasource
    for var in variables.values():
        if var['type'] == 'query':
            assert var['datasource']['uid'] == '${datasource}', var['name']

    exprs = [q['query'] if isinstance(q, dict) else q for q in
             (v.get('query') for v in variables.values() if v['type'] == 'query')]
    ids = []
    for panel in all_panels(dashboard):
        ids.append(panel['id'])
        pos = panel['gridPos']
        assert 0 <= pos['x'] and pos['x'] + pos['w'] <= 24, panel['title']
        if panel['type'] == 'row':
            continue
        assert panel['datasource'] == {'type': 'prometheus', 'uid': '${datasource}'}, \
            panel['title']
        assert panel['targets'], panel['title']
        for target in panel['targets']:
            assert target['expr'].strip(), panel['title']
            exprs.append(target['expr'])
    assert len(ids) == len(set(ids)), 'panel ids are not unique'

    gateway_names, process_names = set(), set()
    for expr in exprs:
        gateway_names |= {strip_suffix(n) for n in re.findall(r'\bsecop_gateway_\w+', expr)}
        process_names |= set(re.findall(r'\bprocess_\w+', expr))
    unknown = (gateway_names - GATEWAY_METRICS) | (process_names - PROCESS_METRICS)
    assert not unknown, f'metrics outside the contract: {sorted(unknown)}'
    # the dashboard shows every family of the contract
    assert gateway_names == GATEWAY_METRICS, f'not shown: {GATEWAY_METRICS - gateway_names}'
    assert {'process_resident_memory_bytes', 'process_cpu_seconds_total'} <= process_names
    # latency panels show quantiles computed from the histograms
    assert any('histogram_quantile(0.99' in e and 'request_duration_seconds_bucket' in e
               for e in exprs)
    assert any('histogram_quantile(0.5' in e and 'request_duration_seconds_bucket' in e
               for e in exprs)
    # every selection is filterable by job and instance
    for expr in exprs:
        for selector in re.findall(r'\b(?:secop_gateway|process)_\w+(\{[^}]*\})?', expr):
            if 'label_values' not in expr:
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, \
                    expr


# ------------------------------------------------------------------ systemd unit

def unit_settings(text):
    """[(section, key, value)] of a unit file"""
    section = None
    settings = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(('#', ';')):
            continue
        if line.startswith('['):
            section = line.strip('[]')
            continue
        key, _, value = line.partition('=')
        settings.append((section, key.strip(), value.strip()))
    return settings


def test_unit_settings():
    settings = unit_settings(UNIT.read_text())
    service = {}
    for section, key, value in settings:
        if section == 'Service':
            service.setdefault(key, []).append(value)

    def one(key):
        assert key in service, f'{key} missing from [Service]'
        return service[key][-1]

    assert one('Type') == 'notify'
    assert one('NotifyAccess') == 'main'
    assert one('WatchdogSec') == '30s'
    assert one('Restart') == 'on-failure'
    assert one('RestartPreventExitStatus') == '2'
    assert one('ExecReload') == '/bin/kill -HUP $MAINPID'
    assert one('ExecStart') == f'{INSTALLED_BINARY} --config /etc/secop-gateway/gateway.toml'
    assert one('User') == 'secop'
    assert 'dialout' in one('SupplementaryGroups').split()
    assert one('ProtectSystem') == 'strict'
    for key in ('ProtectHome', 'PrivateTmp', 'NoNewPrivileges'):
        assert one(key) == 'yes', key
    families = one('RestrictAddressFamilies').split()
    assert {'AF_UNIX', 'AF_INET', 'AF_INET6'} <= set(families), families
    assert not one('CapabilityBoundingSet'), 'no capabilities needed'
    assert service.get('PrivateDevices', ['no'])[-1] == 'no', 'would hide serial ports'


def test_notify_reload_drop_in():
    """the drop-in for systemd >= 253: notify-reload, and the unit's kill -HUP removed
    (systemd sends the signal itself; with both, the gateway would reload twice)"""
    settings = unit_settings((UNIT.parent / 'notify-reload.conf').read_text())
    assert settings == [('Service', 'Type', 'notify-reload'), ('Service', 'ExecReload', '')], \
        settings
    # the default signal of notify-reload is the one the gateway reloads on
    assert 'ReloadSignal' not in UNIT.read_text()


def unit_for_verify(tmp_path):
    """the unit with ExecStart on the built binary (verify needs an existing executable)"""
    binary = gateway_binary()
    text = UNIT.read_text()
    assert f'ExecStart={INSTALLED_BINARY} ' in text
    text = text.replace(f'ExecStart={INSTALLED_BINARY} ', f'ExecStart={binary} ')
    path = tmp_path / 'secop-gateway.service'
    path.write_text(text)
    return path


def test_systemd_analyze_verify(tmp_path):
    tool = need_tool('systemd-analyze', required_in_ci=False)
    path = unit_for_verify(tmp_path)
    result = run([tool, 'verify', path])
    # verify exits 0 even for unknown keys, which it only reports: any remark about our
    # unit counts as a failure
    remarks = [line for line in (result.stdout + result.stderr).splitlines()
               if 'secop-gateway' in line]
    assert result.returncode == 0 and not remarks, report(result)


def test_systemd_analyze_security(tmp_path):
    tool = need_tool('systemd-analyze', required_in_ci=False)
    help_text = run([tool, 'security', '--help']).stdout
    if '--offline' not in help_text:
        pytest.skip('systemd-analyze security has no --offline (systemd < 250)')
    path = unit_for_verify(tmp_path)
    result = run([tool, 'security', '--offline=true', '--no-pager', path])
    match = re.search(r'Overall exposure level for \S+: (\d+(?:\.\d+)?)', result.stdout)
    assert match, report(result)
    exposure = float(match.group(1))
    # 0 = locked down, 10 = unprotected; 2.0 leaves room only for what a network
    # daemon with serial ports needs (network access, devices, supplementary groups)
    assert exposure <= 2.0, report(result)


# ------------------------------------------------------------------ sd_notify, exit codes

class NotifySocket:
    """what systemd's $NOTIFY_SOCKET is: an AF_UNIX datagram socket"""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []   # (monotonic time, text)

    def receive(self, timeout):
        """one datagram within timeout, else None"""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        message = (time.monotonic(), data.decode('utf-8', 'replace'))
        self.messages.append(message)
        return message

    def close(self):
        self.sock.close()


def start_with_notify(tmp_path, watchdog_usec=None, config_text=None):
    # a short path: AF_UNIX paths are limited to 108 bytes
    sock = NotifySocket(Path(os.environ.get('TMPDIR', '/tmp'))
                        / f'secop-notify-{os.getpid()}-{time.monotonic_ns()}.sock')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SECOP_GATEWAY', 'NOTIFY_SOCKET', 'WATCHDOG_'))}
    env['NOTIFY_SOCKET'] = sock.path
    if watchdog_usec is not None:
        env['WATCHDOG_USEC'] = str(watchdog_usec)
    ready_file = tmp_path / 'ready.json'
    cmd = [str(gateway_binary()), '--listen', '127.0.0.1:0', '--ready-file', str(ready_file)]
    if config_text is not None:
        (tmp_path / 'gateway.toml').write_text(config_text)
        cmd += ['--config', str(tmp_path / 'gateway.toml')]
    log = open(tmp_path / 'gateway.log', 'wb')
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    return proc, sock, ready_file, log


def stop(proc, sock, log):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    sock.close()
    os.unlink(sock.path)
    log.close()


def wait_ready(proc, sock, tmp_path):
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        message = sock.receive(deadline - time.monotonic())
        if message and 'READY=1' in message[1].split('\n'):
            return message
        if proc.poll() is not None:
            break
    log = (tmp_path / 'gateway.log').read_text('utf-8', 'replace')
    pytest.fail(f'no READY=1 within {READY_TIMEOUT} s (exit {proc.poll()}); '
                f'got {sock.messages}\n{log}', pytrace=False)


def test_sd_notify_ready_and_watchdog(tmp_path):
    watchdog = 1.0   # s; the gateway should ping every 0.5 s
    proc, sock, ready_file, log = start_with_notify(tmp_path, int(watchdog * 1e6))
    try:
        wait_ready(proc, sock, tmp_path)
        # READY=1 means "accepting connections": the port must answer now
        address = json.loads(ready_file.read_text())['tcp'][0]
        host, _, port = address.rpartition(':')
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b'*IDN?\n')
            assert conn.recv(100).startswith(b'ISSE')

        # pings for 3 s: about 6, each gap well below WatchdogSec
        window = 3.0
        start = time.monotonic()
        pings = []
        while time.monotonic() - start < window:
            message = sock.receive(window - (time.monotonic() - start))
            if message and 'WATCHDOG=1' in message[1].split('\n'):
                pings.append(message[0])
        assert len(pings) >= 4, f'{len(pings)} WATCHDOG=1 in {window} s: {sock.messages}'
        gaps = [b - a for a, b in zip([start] + pings, pings)]
        assert max(gaps) < 0.8 * watchdog, f'watchdog gaps {gaps}'
        assert proc.poll() is None
    finally:
        stop(proc, sock, log)


def test_sd_notify_without_watchdog(tmp_path):
    proc, sock, _, log = start_with_notify(tmp_path, None)
    try:
        wait_ready(proc, sock, tmp_path)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            sock.receive(deadline - time.monotonic())
        assert not [m for m in sock.messages if 'WATCHDOG=1' in m[1]], sock.messages
    finally:
        stop(proc, sock, log)


def test_config_error_exits_2(tmp_path):
    """RestartPreventExitStatus=2 relies on it; READY=1 must not be sent either"""
    broken = '[node]\nequipment_id = "x"\ndescription = "x"\n[listen]\nwrite_timeout = "fast"\n'
    proc, sock, _, log = start_with_notify(tmp_path, 1_000_000, config_text=broken)
    try:
        assert proc.wait(10) == 2
        while sock.receive(0.2):
            pass
        assert not [m for m in sock.messages if 'READY=1' in m[1]], sock.messages
    finally:
        stop(proc, sock, log)
    assert 'write_timeout' in (tmp_path / 'gateway.log').read_text('utf-8', 'replace')


def test_shipped_config_passes_check_config():
    """deploy/README.md installs config/gateway.toml and runs check-config on it"""
    result = run([gateway_binary(), '--config', REPO_ROOT / 'config' / 'gateway.toml',
                  'check-config'])
    assert result.returncode == 0, report(result)


# ------------------------------------------------------------------ seccomp filter

def syscall_group(tool, name, cache={}):
    """the system calls of a systemd syscall group (@name), nested groups expanded"""
    if name in cache:
        return cache[name]
    result = run([tool, 'syscall-filter', name])
    assert result.returncode == 0, report(result)
    calls = set()
    for line in result.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith('#') or line == name:
            continue
        if line.startswith('@'):
            calls |= syscall_group(tool, line)
        elif re.fullmatch(r'[a-z0-9_]+', line):
            calls.add(line)
    cache[name] = calls
    return calls


def unit_syscall_filter(tool):
    """(allowed, denied) system calls of the unit's SystemCallFilter= lines"""
    allowed, denied = set(), set()
    for section, key, value in unit_settings(UNIT.read_text()):
        if section != 'Service' or key != 'SystemCallFilter':
            continue
        deny = value.startswith('~')
        names = set()
        for item in value.lstrip('~').split():
            names |= syscall_group(tool, item) if item.startswith('@') else {item}
        (denied if deny else allowed).update(names)
    assert allowed, 'the unit has no SystemCallFilter allow list'
    return allowed - denied, denied


def traced_child(strace_proc):
    """pid of the process strace started, None if gone"""
    pid = strace_proc.pid
    try:
        children = Path(f'/proc/{pid}/task/{pid}/children').read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


_STRACE_CALL = re.compile(r'^\d+\s+([a-z0-9_]+)\(')


def test_gateway_syscalls_pass_the_units_seccomp_filter(tmp_path):
    """Under systemd a system call outside SystemCallFilter fails with EPERM
    (SystemCallErrorNumber), which only shows in production. Run the gateway under strace
    through start, sd_notify, client traffic (TCP, WebSocket, HTTP), polls and SIGTERM, and
    check every call it made is allowed."""
    tool = need_tool('systemd-analyze', required_in_ci=False)
    strace = shutil.which('strace')
    if not strace:
        pytest.skip('strace not found (apt-get install strace)')
    allowed, denied = unit_syscall_filter(tool)

    trace = tmp_path / 'strace.txt'
    sock = NotifySocket(Path(os.environ.get('TMPDIR', '/tmp'))
                        / f'secop-notify-{os.getpid()}-{time.monotonic_ns()}.sock')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SECOP_GATEWAY', 'NOTIFY_SOCKET', 'WATCHDOG_'))}
    env.update(NOTIFY_SOCKET=sock.path, WATCHDOG_USEC='400000')
    ready_file = tmp_path / 'ready.json'
    log = open(tmp_path / 'gateway.log', 'wb')
    proc = subprocess.Popen([strace, '-f', '-qq', '-o', str(trace), str(gateway_binary()),
                             '--listen', '127.0.0.1:0', '--ready-file', str(ready_file)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=tmp_path)
    try:
        wait_ready(proc, sock, tmp_path)
        host, _, port = json.loads(ready_file.read_text())['tcp'][0].rpartition(':')
        port = int(port)
        with socket.create_connection((host, port), timeout=5) as conn:
            reader = conn.makefile('rb')
            for line in (b'*IDN?', b'describe', b'read T:value', b'change T:target 10',
                         b'do io:communicate "*IDN?"', b'read X:y', b'\xff\xfe bad'):
                conn.sendall(line + b'\n')
                reader.readline()
            conn.sendall(b'activate\n')
            while reader.readline().strip() != b'active':
                pass
            time.sleep(1.5)   # poll cycles and updates while activated
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(f'GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n'
                         'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
                         'Sec-WebSocket-Version: 13\r\n\r\n'.encode())
            assert b' 101 ' in conn.recv(4096)
            conn.sendall(bytes([0x81, 0x84, 1, 2, 3, 4]) + bytes(
                b ^ [1, 2, 3, 4][i % 4] for i, b in enumerate(b'ping')))
            conn.recv(4096)
        for path in ('/', '/metrics', '/healthz', '/readyz', '/nothing'):
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(f'GET {path} HTTP/1.1\r\nHost: {host}\r\n'
                             'Connection: close\r\n\r\n'.encode())
                while conn.recv(65536):
                    pass
        # SIGTERM to the gateway itself (strace would detach and leave it running);
        # strace then exits with the gateway's status
        gateway_pid = traced_child(proc)
        os.kill(gateway_pid, signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            child = traced_child(proc)
            if child:
                os.kill(child, signal.SIGKILL)
        stop(proc, sock, log)

    used = set()
    for line in trace.read_text('utf-8', 'replace').splitlines():
        m = _STRACE_CALL.match(line)
        if m:
            used.add(m.group(1))
    assert {'execve', 'accept4', 'epoll_wait'} <= used, f'strace saw only {sorted(used)}'
    blocked = sorted(used - allowed)
    assert not blocked, (f'system calls the unit\'s SystemCallFilter refuses: {blocked} '
                         f'(explicitly denied: {sorted(set(blocked) & denied)})')
