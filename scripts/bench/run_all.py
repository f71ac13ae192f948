#!/usr/bin/env python3
"""Run every benchmark scenario against secop-gateway and frappy-core, side by side.

    python3 scripts/bench/run_all.py            # full run: gateway and frappy (minutes)
    python3 scripts/bench/run_all.py --smoke    # CI: every scenario for a second or less,
                                                # gateway only, fails only on errors

What it does:
  1. builds secop-gateway and secop-bench (release; --smoke: the dev profile unless
     --release),
  2. raises RLIMIT_NOFILE to the hard limit (inherited by both servers and the client),
  3. for each scenario starts a fresh server on 127.0.0.1 (the gateway with
     scripts/bench/gateway_bench.toml, or gateway_attack.toml (every limit at its
     default) for the `attack_*` scenarios; frappy-core with scripts/bench/frappy_bench_cfg.py
     through scripts/bench/frappy_server.py, which binds 127.0.0.1 only and opens no UDP
     socket; `describe` uses a generated 1000-module node for both, `history_*` a
     generated gateway node of 1000 pressure gauges polled at 10 Hz), runs secop-bench
     against it and stops it,
  4. prints one table with both servers and the ratio per figure, and the issue's
     targets with met/missed; writes results.json, table.md and the raw output to
     --out (default target/bench/<time>).

Everything stays on loopback; every loop and every wait is bounded.
frappy-core (PyPI, pinned 0.20.9) must be importable by this Python for the full run.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FRAPPY_VERSION = '0.20.9'


# -- scenarios ------------------------------------------------------------------------
# (key, title, secop-bench arguments (after the global ones), node, servers, client threads
#  [, CPUs to pin server and client to [, keep the CPUs awake]])
# node: 'bench' (T, p, ps), 'big' (1000 modules), 'attack' (T, p, ps with the default
# limits), 'history' / 'history_off' (1000 pressure gauges at 10 Hz, [history] window 60 s
# at 0.1 s, or off); servers: 'both' or 'gateway'.
# "Awake": a busy loop at nice 19 per CPU runs alongside, so that an idle vCPU does not
# halt between two messages (see BENCHMARKS.md, "Machine and conditions"); it yields
# to any real work.

def scenarios(smoke):
    if smoke:
        return [
            ('pipelined', 'pipelined read, C=2 N=100',
             ['pipelined', '-c', '2', '-n', '100'], 'bench', 'both', 2),
            ('latency_read_c1', 'read latency, C=1',
             ['latency', '--op', 'read', '-c', '1', '-d', '0.3', '--warmup', '0.05'], 'bench', 'both', 1),
            ('latency_read_c1_pinned', 'read latency, C=1, server and client on CPU 0',
             ['latency', '--op', 'read', '-c', '1', '-d', '0.3', '--warmup', '0.05'], 'bench', 'both', 1, {0}),
            ('latency_read_c1_awake', 'read latency, C=1, CPUs kept awake',
             ['latency', '--op', 'read', '-c', '1', '-d', '0.3', '--warmup', '0.05'], 'bench', 'both', 1,
             None, True),
            ('latency_read_c100', 'read latency, C=4',
             ['latency', '--op', 'read', '-c', '4', '-d', '0.3', '--warmup', '0.05'], 'bench', 'both', 2),
            ('latency_ping_c1', 'ping latency, C=1',
             ['latency', '--op', 'ping', '-c', '1', '-d', '0.3', '--warmup', '0.05'], 'bench', 'both', 1),
            ('latency_change_c1', 'change latency, C=1',
             ['latency', '--op', 'change', '-c', '1', '-d', '0.3', '--warmup', '0.05'], 'bench', 'both', 1),
            ('ws_latency_read_c1', 'WebSocket read latency, C=1',
             ['--transport', 'ws', 'latency', '--op', 'read', '-c', '1', '-d', '0.3', '--warmup', '0.05'],
             'bench', 'gateway', 1),
            ('ws_pipelined', 'WebSocket pipelined read, C=2 N=100',
             ['--transport', 'ws', 'pipelined', '-c', '2', '-n', '100'], 'bench', 'gateway', 2),
            ('fanout', 'fanout S=10 R=50/s',
             ['fanout', '-s', '10', '-r', '50', '-d', '0.5', '--grace', '3', '--target', 'ps:pollinterval'], 'bench', 'both', 2),
            ('fanout_poll', 'fanout by polling, S=5',
             ['fanout-poll', '-s', '5', '-d', '1'], 'bench', 'both', 2),
            ('slow_consumer', 'slow consumer, S=5 R=50/s',
             ['slow-consumer', '-s', '5', '-r', '50', '-d', '1', '--grace', '3', '--slow-requests', '200',
              '--target', 'ps:pollinterval'],
             'bench', 'both', 2),
            ('connections', 'connections K=200, bursts of 100',
             ['connections', '-k', '200', '-b', '100', '--hold', '0.2'], 'bench', 'both', 2),
            ('describe_1000', 'describe, 1000 modules',
             ['describe', '-n', '3', '--warmup', '1', '--expect-modules', '1000'], 'big', 'both', 1),
            ('attack_http_pipeline', 'attack: pipelined HTTP, nothing read, C=10',
             ['attack', '--kind', 'http-pipeline', '-c', '10', '-d', '2'], 'attack', 'gateway', 2),
            ('history_1000', HISTORY_TITLE,
             ['history', '--fill', '1', '--expect-parameters', '3000'], 'history', 'gateway', 1),
        ]
    return [
        ('pipelined', 'pipelined read, C=10 N=1000',
         ['pipelined', '-c', '10', '-n', '1000', '--duration', '5'], 'bench', 'both', 2),
        ('latency_read_c1', 'read latency, C=1',
         ['latency', '--op', 'read', '-c', '1', '-d', '5'], 'bench', 'both', 1),
        ('latency_read_c1_pinned', 'read latency, C=1, server and client on CPU 0',
         ['latency', '--op', 'read', '-c', '1', '-d', '5'], 'bench', 'both', 1, {0}),
        ('latency_read_c1_awake', 'read latency, C=1, CPUs kept awake',
         ['latency', '--op', 'read', '-c', '1', '-d', '5'], 'bench', 'both', 1, None, True),
        ('latency_read_c100', 'read latency, C=100',
         ['latency', '--op', 'read', '-c', '100', '-d', '5'], 'bench', 'both', 2),
        ('latency_read_c100_awake', 'read latency, C=100, CPUs kept awake',
         ['latency', '--op', 'read', '-c', '100', '-d', '5'], 'bench', 'both', 2, None, True),
        ('latency_ping_c1', 'ping latency, C=1',
         ['latency', '--op', 'ping', '-c', '1', '-d', '5'], 'bench', 'both', 1),
        ('latency_change_c1', 'change latency, C=1',
         ['latency', '--op', 'change', '-c', '1', '-d', '5'], 'bench', 'both', 1),
        ('ws_latency_read_c1', 'WebSocket read latency, C=1',
         ['--transport', 'ws', 'latency', '--op', 'read', '-c', '1', '-d', '5'], 'bench', 'gateway', 1),
        ('ws_pipelined', 'WebSocket pipelined read, C=10 N=1000',
         ['--transport', 'ws', 'pipelined', '-c', '10', '-n', '1000', '--duration', '5'],
         'bench', 'gateway', 2),
        ('fanout_100', 'fanout S=100 R=100/s',
         ['fanout', '-s', '100', '-r', '100', '-d', '10', '--connect-concurrency', '5', '--target', 'ps:pollinterval'], 'bench', 'both', 2),
        ('fanout', 'fanout S=1000 R=100/s',
         ['fanout', '-s', '1000', '-r', '100', '-d', '10', '--grace', '10', '--connect-concurrency', '5',
          '--target', 'ps:pollinterval'],
         'bench', 'both', 2),
        # half the rate: where the machine is not saturated yet (see BENCHMARKS.md)
        ('fanout_half', 'fanout S=1000 R=50/s',
         ['fanout', '-s', '1000', '-r', '50', '-d', '10', '--grace', '10', '--connect-concurrency', '5',
          '--target', 'ps:pollinterval'],
         'bench', 'both', 2),
        ('fanout_poll', 'fanout by polling (10/s), S=1000',
         ['fanout-poll', '-s', '1000', '-d', '10', '--connect-concurrency', '5'], 'bench', 'both', 2),
        ('slow_consumer', 'slow consumer, S=200 R=100/s',
         ['slow-consumer', '-s', '200', '-r', '100', '-d', '10', '--grace', '10',
          '--slow-requests', '5000', '--connect-concurrency', '5', '--target', 'ps:pollinterval'], 'bench', 'both', 2),
        ('connections', 'connections K=10000, bursts of 1000',
         ['connections', '-k', '10000', '-b', '1000', '--hold', '2'], 'bench', 'both', 2),
        ('describe_1000', 'describe, 1000 modules',
         ['describe', '-n', '50', '--expect-modules', '1000'], 'big', 'both', 1),
        # the history fills for its window (60 s) plus 5 s; the same node without it
        ('history_1000', HISTORY_TITLE,
         ['history', '--expect-parameters', '3000'], 'history', 'gateway', 1),
        ('history_1000_off', HISTORY_TITLE + ', history off',
         ['history', '--disabled', '--fill', '65'], 'history_off', 'gateway', 1),
    ] + ATTACKS


HISTORY_TITLE = 'value history, 1000 modules at 10 Hz'


# Attacks at the default limits (gateway_attack.toml), each against a fresh gateway,
# while a well-behaved client on 127.0.0.2 reads: the attacks measured before the
# limits existed. 40 s: past write_timeout and first_request_timeout (30 s each).
ATTACKS = [
    ('attack_http_pipeline', 'attack: 60 x 20,000 pipelined GET /metrics, nothing read',
     ['attack', '--kind', 'http-pipeline', '-d', '40'], 'attack', 'gateway', 2),
    ('attack_ws_non_reader', 'attack: 100 WebSocket clients that read nothing',
     ['attack', '--kind', 'ws-non-reader', '-d', '40'], 'attack', 'gateway', 2),
    ('attack_unfinished_lines', 'attack: 300 unfinished lines of 1 MiB',
     ['attack', '--kind', 'unfinished-lines', '-d', '15'], 'attack', 'gateway', 2),
    ('attack_ws_unfinished', 'attack: 60 unfinished WebSocket messages of 16 MiB',
     ['attack', '--kind', 'ws-unfinished', '-d', '15'], 'attack', 'gateway', 2),
    ('attack_silent', 'attack: 1024 silent connections',
     ['attack', '--kind', 'silent', '-d', '40'], 'attack', 'gateway', 2),
]
ATTACK_KEYS = [a[0] for a in ATTACKS]


# Scenarios whose figure varies a lot between runs (frappy's pipelined rate swings
# between 14,000 and 43,000 replies/s with GIL scheduling): every server gets this many
# runs and its best counts, so a ratio never rests on one unlucky run of either side.
BEST_OF = {'pipelined': ('replies_per_s', 3)}

# (scenario key, metric, what is better, label)
FIGURES = [
    ('pipelined', 'replies_per_s', 'higher', 'replies/s'),
    ('pipelined', 'server_cpu_us_per_reply', 'lower', 'server CPU us/reply'),
    ('pipelined', 'server_rss_peak_kib', 'lower', 'server peak RSS KiB'),
    ('latency_read_c1', 'rtt_p50_us', 'lower', 'p50 us'),
    ('latency_read_c1', 'rtt_p99_us', 'lower', 'p99 us'),
    ('latency_read_c1', 'requests_per_s', 'higher', 'req/s'),
    ('latency_read_c1', 'server_cpu_us_per_request', 'lower', 'server CPU us/req'),
    ('latency_read_c1_pinned', 'rtt_p50_us', 'lower', 'p50 us'),
    ('latency_read_c1_pinned', 'rtt_p99_us', 'lower', 'p99 us'),
    ('latency_read_c1_pinned', 'requests_per_s', 'higher', 'req/s'),
    ('latency_read_c1_pinned', 'server_cpu_us_per_request', 'lower', 'server CPU us/req'),
    ('latency_read_c1_awake', 'rtt_p50_us', 'lower', 'p50 us'),
    ('latency_read_c1_awake', 'rtt_p99_us', 'lower', 'p99 us'),
    ('latency_read_c1_awake', 'server_cpu_us_per_request', 'lower', 'server CPU us/req'),
    ('latency_read_c100_awake', 'rtt_p50_us', 'lower', 'p50 us'),
    ('latency_read_c100_awake', 'rtt_p99_us', 'lower', 'p99 us'),
    ('latency_read_c100_awake', 'requests_per_s', 'higher', 'req/s'),
    ('latency_read_c100', 'rtt_p50_us', 'lower', 'p50 us'),
    ('latency_read_c100', 'rtt_p99_us', 'lower', 'p99 us'),
    ('latency_read_c100', 'requests_per_s', 'higher', 'req/s'),
    ('latency_read_c100', 'server_cpu_us_per_request', 'lower', 'server CPU us/req'),
    ('latency_ping_c1', 'rtt_p50_us', 'lower', 'p50 us'),
    ('latency_ping_c1', 'rtt_p99_us', 'lower', 'p99 us'),
    ('latency_change_c1', 'rtt_p50_us', 'lower', 'p50 us'),
    ('latency_change_c1', 'rtt_p99_us', 'lower', 'p99 us'),
    ('latency_change_c1', 'server_cpu_us_per_request', 'lower', 'server CPU us/req'),
    ('ws_latency_read_c1', 'rtt_p50_us', 'lower', 'p50 us'),
    ('ws_latency_read_c1', 'rtt_p99_us', 'lower', 'p99 us'),
    ('ws_pipelined', 'replies_per_s', 'higher', 'replies/s'),
    ('ws_pipelined', 'server_cpu_us_per_reply', 'lower', 'server CPU us/reply'),
    ('fanout_100', 'updates_per_s', 'higher', 'updates delivered/s'),
    ('fanout_100', 'target_updates_missed', 'lower', 'target updates missed'),
    ('fanout_100', 'delivery_p50_us', 'lower', 'delivery p50 us'),
    ('fanout_100', 'delivery_p99_us', 'lower', 'delivery p99 us'),
    ('fanout_100', 'server_cpu_pct', 'lower', 'server CPU % of a core'),
    ('fanout', 'updates_per_s', 'higher', 'updates delivered/s'),
    ('fanout', 'target_updates_missed', 'lower', 'target updates missed'),
    ('fanout', 'delivery_p50_us', 'lower', 'delivery p50 us'),
    ('fanout', 'delivery_p99_us', 'lower', 'delivery p99 us'),
    ('fanout', 'server_cpu_pct', 'lower', 'server CPU % of a core'),
    ('fanout', 'server_rss_peak_kib', 'lower', 'server peak RSS KiB'),
    ('fanout_half', 'updates_per_s', 'higher', 'updates delivered/s'),
    ('fanout_half', 'target_updates_missed', 'lower', 'target updates missed'),
    ('fanout_half', 'delivery_p50_us', 'lower', 'delivery p50 us'),
    ('fanout_half', 'delivery_p99_us', 'lower', 'delivery p99 us'),
    ('fanout_half', 'server_cpu_pct', 'lower', 'server CPU % of a core'),
    ('fanout_poll', 'updates_per_s', 'higher', 'updates delivered/s'),
    ('fanout_poll', 'param_updates_missed', 'lower', 'updates missed'),
    ('fanout_poll', 'delivery_p50_us', 'lower', 'delivery p50 us'),
    ('fanout_poll', 'delivery_p99_us', 'lower', 'delivery p99 us'),
    ('fanout_poll', 'server_cpu_pct', 'lower', 'server CPU % of a core'),
    ('slow_consumer', 'before_slow_delivery_p99_us', 'lower', 'p99 us before the slow one'),
    ('slow_consumer', 'with_slow_delivery_p99_us', 'lower', 'p99 us with the slow one'),
    ('slow_consumer', 'target_updates_missed', 'lower', 'target updates missed'),
    ('slow_consumer', 'server_rss_growth_with_slow_kib', 'lower', 'server RSS growth KiB'),
    ('slow_consumer', 'slow_dropped_by_server', 'info', 'slow one dropped'),
    ('connections', 'established', 'higher', 'established'),
    ('connections', 'first_burst_failed', 'lower', 'failed in the first burst'),
    ('connections', 'total_s', 'lower', 'time s'),
    ('connections', 'connect_idn_describe_p99_us', 'lower', 'connect+IDN+describe p99 us'),
    ('connections', 'server_rss_per_connection_kib', 'lower', 'server RSS KiB/connection'),
    ('connections', 'served_ping_ok', 'higher', 'answer ping afterwards'),
    ('describe_1000', 'rtt_p50_us', 'lower', 'p50 us'),
    ('describe_1000', 'rtt_p99_us', 'lower', 'p99 us'),
    ('describe_1000', 'describing_bytes', 'info', 'bytes'),
    ('describe_1000', 'server_rss_peak_kib', 'lower', 'server peak RSS KiB (1000 modules)'),
    ('history_1000', 'updates_per_s', 'info', 'updates/s'),
    ('history_1000', 'history_bytes', 'lower', 'history bytes (window 60 s at 0.1 s)'),
    ('history_1000', 'projected_history_bytes', 'lower', 'history bytes projected for 3600 s at 1 s'),
    ('history_1000', 'server_rss_growth_kib', 'lower', 'server RSS growth KiB while filling'),
    ('history_1000', 'server_cpu_pct', 'lower', 'server CPU % of a core'),
    ('history_1000', 'get_history_ms', 'lower', 'GET /history ms'),
    ('history_1000', 'get_history_bytes', 'info', 'GET /history bytes'),
    ('history_1000_off', 'updates_per_s', 'info', 'updates/s'),
    ('history_1000_off', 'server_rss_growth_kib', 'lower', 'server RSS growth KiB'),
    ('history_1000_off', 'server_cpu_pct', 'lower', 'server CPU % of a core'),
] + [fig for key in ['attack_http_pipeline', 'attack_ws_non_reader', 'attack_unfinished_lines',
                     'attack_ws_unfinished', 'attack_silent']
     for fig in [(key, 'server_rss_before_kib', 'info', 'server RSS before KiB'),
                 (key, 'server_rss_peak_during_kib', 'lower', 'server peak RSS KiB'),
                 (key, 'read_rtt_p50_us', 'lower', 'read p50 us (127.0.0.2)'),
                 (key, 'read_rtt_p99_us', 'lower', 'read p99 us (127.0.0.2)'),
                 (key, 'fresh_connections_failed', 'lower', 'fresh connections refused'),
                 (key, 'attack_closed_by_server', 'info', 'attacking connections closed')]]


# -- helpers --------------------------------------------------------------------------

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def busy_jiffies():
    """(busy, total) jiffies of all CPUs from /proc/stat"""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)   # idle + iowait
    total = sum(v[:8])                          # without guest (counted in user)
    return total - idle, total


def proc_jiffies(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            rest = f.read().rsplit(')', 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def all_proc_jiffies(exclude):
    """pid -> utime+stime+cutime+cstime of every process but `exclude` (the time of
    reaped children is in their parent's cutime/cstime)"""
    out = {}
    for d in os.listdir('/proc'):
        if not d.isdigit() or int(d) in exclude:
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                rest = f.read().rsplit(')', 1)[1].split()
            out[int(d)] = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        except (OSError, IndexError, ValueError):
            pass
    return out


def wait_idle(max_wait, threshold=0.15):
    """Wait (at most max_wait s) until the machine is nearly idle: other processes
    (e.g. a compiler) distort the figures. Returns the busy fraction last seen."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        b0, t0 = busy_jiffies()
        time.sleep(1.0)
        b1, t1 = busy_jiffies()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy <= threshold or time.monotonic() >= deadline:
            if waited:
                log(f'machine busy {busy:.0%} after waiting' if busy > threshold else 'machine idle now')
            return busy
        if not waited:
            log(f'machine busy ({busy:.0%} of all CPUs): waiting up to {max_wait:.0f} s for it to calm down')
            waited = True


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build(profile, gateway=True):
    cmd = ['cargo', 'build', '--quiet', '-p', 'secop-bench'] + (['-p', 'secop-gateway'] if gateway else [])
    if profile == 'release':
        cmd.insert(2, '--release')
    log('$', ' '.join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=3600)
    target = Path(os.environ.get('CARGO_TARGET_DIR', ROOT / 'target'))
    sub = 'release' if profile == 'release' else 'debug'
    return target / sub / 'secop-gateway', target / sub / 'secop-bench'


def gen_gateway_big(path, n=1000):
    """n modules cycling through the three simulators (pollinterval 10 s)."""
    out = ['# generated by scripts/bench/run_all.py: %d modules for the describe benchmark' % n,
           '[node]', 'equipment_id = "secop_gateway_bench_%d"' % n,
           'description = "secop-gateway benchmark node with %d simulated modules"' % n,
           '[listen]', 'address = "127.0.0.1:10767"', '[discovery]', 'enabled = false',
           '[log]', 'level = "warn"', '']
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out += ['[[module]]', f'name = "T{i}"', 'driver = "sim_temperature"',
                    '[module.settings]', 'pollinterval = 10.0', '']
        elif kind == 1:
            out += ['[[module]]', f'name = "p{i}"', 'driver = "sim_pressure"',
                    '[module.settings]', 'pollinterval = 10.0', '']
        else:
            out += ['[[module]]', f'name = "ps{i}"', 'driver = "sim_power_supply"',
                    '[module.settings]', 'pollinterval = 10.0', '']
    path.write_text('\n'.join(out))


def gen_gateway_history(path, n=1000, enabled=True, window=60.0, resolution=0.1):
    """n pressure gauges polled at 10 Hz (each poll a new value): the history of their
    values fills at 10 points per second each."""
    out = ['# generated by scripts/bench/run_all.py: %d modules for the history benchmark' % n,
           '[node]', 'equipment_id = "secop_gateway_history_%d"' % n,
           'description = "secop-gateway benchmark node with %d pressure gauges at 10 Hz"' % n,
           '[listen]', 'address = "127.0.0.1:10767"', '[discovery]', 'enabled = false',
           '[log]', 'level = "warn"',
           '[history]', f'enabled = {"true" if enabled else "false"}',
           f'window = {window}', f'resolution = {resolution}', '']
    for i in range(n):
        out += ['[[module]]', f'name = "p{i}"', 'driver = "sim_pressure"',
                '[module.settings]', 'pollinterval = 0.1', '']
    path.write_text('\n'.join(out))


def gen_frappy_big(path, n=1000):
    """the same n modules from frappy's simulation classes (pollinterval 10 s)."""
    out = ['# generated by scripts/bench/run_all.py: %d modules for the describe benchmark' % n,
           f"Node('frappy_bench_{n}', 'frappy benchmark node with {n} simulated modules', 'tcp://10767')", '']
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(f"Mod('T{i}', 'frappy.simulation.SimDrivable', 'simulated temperature controller', "
                       f"extra_params='ramp', ramp=60, value=295.0, target=295.0, pollinterval=10)")
        elif kind == 1:
            out.append(f"Mod('p{i}', 'frappy.simulation.SimReadable', 'simulated pressure gauge', "
                       f"value=Param(1.0e-6, unit='mbar'), pollinterval=10)")
        else:
            out.append(f"Mod('ps{i}', 'frappy.simulation.SimWritable', 'simulated power supply', "
                       f"value=0.0, target=0.0, pollinterval=10)")
    path.write_text('\n'.join(out) + '\n')


class Server:
    """One server process on 127.0.0.1 (started and stopped by us, by pid)."""

    def __init__(self, kind, gateway_bin, config, workdir, logfile, pin=None):
        self.kind = kind
        pre = (lambda: os.sched_setaffinity(0, pin)) if pin else None
        self.proc = None
        self.addr = None
        self.logfile = open(logfile, 'ab')
        if kind == 'gateway':
            ready = Path(workdir) / f'ready-{time.monotonic_ns()}.json'
            self.proc = subprocess.Popen(
                [str(gateway_bin), '--config', str(config), '--listen', '127.0.0.1:0',
                 '--ready-file', str(ready)],
                stdout=self.logfile, stderr=self.logfile, cwd=ROOT, preexec_fn=pre)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if ready.exists() and ready.stat().st_size > 0:
                    try:
                        self.addr = json.loads(ready.read_text())['tcp'][0]
                        break
                    except (ValueError, KeyError, IndexError):
                        pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f'gateway exited with {self.proc.returncode} (see {logfile})')
                time.sleep(0.02)
        else:
            # sys.executable is the real interpreter (not a pyenv shim that would fork):
            # the pid we signal is the server's
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / 'frappy_server.py'), '--cfg', str(config),
                 '--port', '0', '--workdir', str(workdir)],
                stdout=subprocess.PIPE, stderr=self.logfile, cwd=workdir, preexec_fn=pre)
            deadline = time.monotonic() + 300
            line = b''
            while time.monotonic() < deadline:
                line = self.proc.stdout.readline()   # frappy prints it once ready
                if not line or line.startswith(b'LISTENING '):
                    break
            if not line.startswith(b'LISTENING '):
                self.stop()
                raise RuntimeError(f'frappy did not start (see {logfile})')
            self.addr = line.split()[1].decode()
        if not self.addr or not self.addr.startswith('127.0.0.1:'):
            self.stop()
            raise RuntimeError(f'{kind} is not on 127.0.0.1: {self.addr}')

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.logfile.close()


def start_spinners():
    """one busy loop per CPU at the lowest priority (keeps idle vCPUs from halting)"""
    code = 'import os\nos.nice(19)\nwhile True:\n    pass\n'
    return [subprocess.Popen([sys.executable, '-c', code]) for _ in range(os.cpu_count() or 1)]


def stop_spinners(spinners):
    for p in spinners:
        p.kill()
        p.wait(10)


def run_bench(bench_bin, server, label, args, threads, logf, timeout, pin=None, awake=False):
    cmd = [str(bench_bin), '--addr', server.addr, '--server-pid', str(server.pid),
           '--label', label, '--threads', str(threads)] + args
    log('$', ' '.join(cmd) + ('   (with a nice-19 busy loop per CPU)' if awake else ''))
    t = time.monotonic()
    exclude = {os.getpid(), server.pid}
    others0 = all_proc_jiffies(exclude)
    spinners = start_spinners() if awake else []
    exclude |= {p.pid for p in spinners}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)
        out, rc = p.stdout, p.returncode
        err = p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
        err, rc = f'secop-bench timed out after {timeout} s', -1
    finally:
        stop_spinners(spinners)
    # CPU used by other processes during the run (everything but the server and us;
    # not the kernel's softirq work for our own packets that lands on an idle CPU)
    others1 = all_proc_jiffies(exclude)
    hz = os.sysconf('SC_CLK_TCK')
    # (the bench has exited by now: its time is in our cutime, which is excluded)
    others = sum(v - others0.get(pid, 0) for pid, v in others1.items())
    wall = time.monotonic() - t
    others_pct = max(0.0, others / hz / wall * 100) if wall > 0 else 0.0
    with open(logf, 'a') as f:
        f.write(f'$ {" ".join(cmd)}\n{out}{err}\n(exit {rc}, {wall:.1f} s, '
                f'other processes used {others_pct:.0f} % of a core)\n\n')
    result = None
    for line in reversed(out.splitlines()):
        if line.startswith('{'):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
    # the human table (everything but the JSON line)
    for line in out.splitlines():
        if not line.startswith('{'):
            log(line)
    if err.strip():
        log(err.strip())
    if result is None:
        result = {'ok': False, 'metrics': {}, 'error_samples': [err.strip() or 'no JSON output']}
    result['exit'] = rc
    result['others_cpu_pct'] = round(others_pct, 1)
    return result


# -- tables ---------------------------------------------------------------------------

def fmt(v):
    if v is None:
        return '-'
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f'{v}'
    if abs(v) >= 1000:
        return f'{v:,.0f}'
    if abs(v) >= 10:
        return f'{v:.1f}'
    return f'{v:.3g}'


def comparison(results, titles, with_frappy):
    """rows of (scenario, figure, gateway, frappy, ratio text)"""
    rows = []
    for key, metric, better, label in FIGURES:
        g = results.get(('gateway', key))
        if g is None:
            continue
        f = results.get(('frappy', key))
        gv = g['metrics'].get(metric)
        fv = f['metrics'].get(metric) if f else None
        ratio = ''
        if isinstance(gv, (int, float)) and isinstance(fv, (int, float)) and better != 'info':
            if better == 'higher' and fv > 0:
                ratio = f'{gv / fv:.2f}x'
            elif better == 'lower' and gv > 0:
                ratio = f'{fv / gv:.2f}x'
            elif better == 'lower' and gv == 0 and fv == 0:
                ratio = '='
            elif better == 'lower' and gv == 0:
                ratio = 'gw 0'
        # a figure of a failed run (errors or timeouts) is marked with '*'
        mark = lambda r, text: text + ('*' if r and not r.get('ok') else '')  # noqa: E731
        rows.append((titles[key], label, mark(g, fmt(gv)),
                     mark(f, fmt(fv)) if f else ('n/a' if with_frappy else ''), ratio))
    return rows


def targets(results):
    """the issue's targets, evaluated on the gateway's results (and frappy's)"""
    def m(server, key, metric):
        r = results.get((server, key))
        return None if r is None else r['metrics'].get(metric)

    out = []

    def add(name, value_text, met):
        out.append((name, value_text, 'met' if met else ('MISSED' if met is not None else 'n/a')))

    g, f = m('gateway', 'pipelined', 'replies_per_s'), m('frappy', 'pipelined', 'replies_per_s')
    add('pipelined reads >= 20x frappy', f'{g / f:.2f}x' if g and f else '-',
        (g / f >= 20) if g and f else None)
    v = m('gateway', 'pipelined', 'server_cpu_us_per_reply')
    add('pipelined: <= 3 us gateway CPU per reply', fmt(v) + ' us', v <= 3 if v is not None else None)
    v = m('gateway', 'latency_read_c1', 'rtt_p99_us')
    add('read latency C=1: p99 <= 150 us', fmt(v) + ' us', v <= 150 if v is not None else None)
    v = m('gateway', 'latency_read_c1_pinned', 'rtt_p99_us')
    add('  the same, server and client on one CPU', fmt(v) + ' us', v <= 150 if v is not None else None)
    v = m('gateway', 'latency_read_c1_awake', 'rtt_p99_us')
    add('  the same, CPUs kept awake', fmt(v) + ' us', v <= 150 if v is not None else None)
    v = m('gateway', 'latency_read_c100', 'rtt_p99_us')
    add('read latency C=100: p99 <= 2 ms', fmt(v) + ' us', v <= 2000 if v is not None else None)
    v = m('gateway', 'latency_read_c100_awake', 'rtt_p99_us')
    add('  the same, CPUs kept awake', fmt(v) + ' us', v <= 2000 if v is not None else None)
    r = results.get(('gateway', 'fanout'))
    if r:
        mm = r['metrics']
        s, rate = r['params'].get('subscribers'), r['params'].get('rate')
        miss, p99, cpu = mm.get('target_updates_missed'), mm.get('delivery_p99_us'), mm.get('server_cpu_pct')
        active = mm.get('subscribers_active')
        add(f'fanout {s} subscribers x {rate:g}/s: zero loss',
            f'{miss} missed, {mm.get("target_updates_reordered")} reordered, {active} subscribed',
            miss == 0 and mm.get('target_updates_reordered') == 0 and active == s and r['ok'])
        add('fanout: p99 delivery <= 10 ms', fmt(p99) + ' us', p99 is not None and p99 <= 10000)
        # below one core only counts if the gateway kept up with the offered rate
        offered = (s or 0) * (rate or 0)
        delivered = mm.get('updates_per_s') or 0
        kept_up = offered > 0 and delivered >= 0.95 * offered
        add('fanout: gateway below one core',
            fmt(cpu) + ' % of a core' + ('' if kept_up else
                                         f' (saturated: delivered {fmt(delivered)}/s of {fmt(offered)}/s)'),
            cpu is not None and cpu < 100 and kept_up)
    r = results.get(('gateway', 'connections'))
    if r:
        mm = r['metrics']
        k = r['params'].get('count')
        add(f'{k} concurrent connections served',
            f'{mm.get("established")} established, {mm.get("served_ping_ok")} answer ping',
            mm.get('established') == k and mm.get('served_ping_ok') == k)
        v = mm.get('server_rss_per_connection_kib')
        add('<= 16 KiB RSS per idle connection', fmt(v) + ' KiB', v is not None and v <= 16)
        v = mm.get('first_burst_failed')
        add(f'zero refused in a burst of {mm.get("first_burst_size")} connects', f'{v} failed', v == 0)
    v = m('gateway', 'describe_1000', 'rtt_p50_us')
    add('describe of 1000 modules <= 5 ms p50', fmt(v) + ' us', v <= 5000 if v is not None else None)
    for key in ATTACK_KEYS:
        rss, p99 = m('gateway', key, 'server_rss_peak_during_kib'), m('gateway', key, 'read_rtt_p99_us')
        add(f'{key}: RSS < 256 MiB', fmt(rss) + ' KiB', rss < 256 * 1024 if rss is not None else None)
        add(f'{key}: read p99 < 20 ms', fmt(p99) + ' us', p99 < 20000 if p99 is not None else None)
    return out


def print_table(headers, rows, md=False):
    if md:
        lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join('---' for _ in headers) + '|']
        lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
        return '\n'.join(lines)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ['  '.join(str(h).ljust(w) for h, w in zip(headers, widths)),
             '  '.join('-' * w for w in widths)]
    lines += ['  '.join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return '\n'.join(lines)


# -- main -----------------------------------------------------------------------------

def report_only(path, smoke, md=False):
    data = json.loads(path.read_text())
    scen = scenarios(smoke)
    titles = {s[0]: s[1] for s in scen}
    if all('key' in r for r in data):
        results = {(r['server'], r['key']): r for r in data}
    else:
        # older files: the entries are in the order of the scenarios, gateway first
        order = [(srv, sc[0]) for sc in scen for srv in ('gateway', 'frappy')
                 if sc[4] == 'both' or srv == 'gateway']
        results, it = {}, iter(data)
        for srv, key in order:
            r = next(it, None)
            if r is None:
                break
            if r['server'] != srv:   # frappy was not run
                it = iter([r] + list(it))
                continue
            results[(srv, key)] = r
    with_frappy = any(srv == 'frappy' for srv, _ in results)
    headers = ['scenario', 'figure', 'gateway', 'frappy', 'gateway better by']
    rows = comparison(results, titles, with_frappy)
    print(print_table(headers, rows, md=md))
    print()
    print(print_table(['target', 'gateway', ''], targets(results), md=md))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--smoke', action='store_true',
                    help='every scenario for a second or less, gateway only, small counts')
    ap.add_argument('--release', action='store_true', help='with --smoke: build in release mode')
    ap.add_argument('--frappy', action=argparse.BooleanOptionalAction, default=None,
                    help='also run against frappy (default: yes, except with --smoke)')
    ap.add_argument('--only', help='comma-separated scenario keys (see FIGURES)')
    ap.add_argument('--out', help='directory for results (default target/bench/<time>)')
    ap.add_argument('--no-build', action='store_true', help='use the binaries as built')
    ap.add_argument('--wait-idle', type=float, default=None,
                    help='before each run wait up to this many seconds for the machine to be idle '
                    '(default: 300, 0 with --smoke)')
    ap.add_argument('--from-results', help='print the tables of an earlier run (its results.json)')
    ap.add_argument('--markdown', action='store_true', help='with --from-results: as Markdown')
    ap.add_argument('--gateway-bin', help='use this secop-gateway binary (e.g. one built from another '
                    'checkout) instead of building it')
    args = ap.parse_args()

    if args.from_results:
        return report_only(Path(args.from_results), args.smoke, args.markdown)
    with_frappy = args.frappy if args.frappy is not None else not args.smoke
    wait = args.wait_idle if args.wait_idle is not None else (0 if args.smoke else 300)
    profile = 'release' if (args.release or not args.smoke) else 'dev'
    out = Path(args.out) if args.out else ROOT / 'target' / 'bench' / time.strftime('%Y%m%d-%H%M%S')
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='secop-bench-'))
    logf = out / 'bench-output.txt'

    if with_frappy:
        try:
            import frappy  # noqa: F401
            from importlib.metadata import version
            fv = version('frappy-core')
            if fv != FRAPPY_VERSION:
                log(f'note: frappy-core {fv} installed, the benchmarks were written for {FRAPPY_VERSION}')
        except ImportError:
            log(f'frappy-core is not installed: python3 -m pip install frappy-core=={FRAPPY_VERSION}'
                ' (or run with --no-frappy)')
            return 2

    nofile = raise_nofile()
    if args.no_build:
        sub = 'release' if profile == 'release' else 'debug'
        gw_bin, bench_bin = ROOT / 'target' / sub / 'secop-gateway', ROOT / 'target' / sub / 'secop-bench'
    else:
        gw_bin, bench_bin = build(profile, gateway=not args.gateway_bin)
    if args.gateway_bin:
        gw_bin = Path(args.gateway_bin).resolve()
    gen_gateway_big(work / 'gateway_1000.toml')
    gen_frappy_big(work / 'frappy_1000_cfg.py')
    gen_gateway_history(work / 'gateway_history.toml')
    gen_gateway_history(work / 'gateway_history_off.toml', enabled=False)
    configs = {
        ('gateway', 'history'): work / 'gateway_history.toml',
        ('gateway', 'history_off'): work / 'gateway_history_off.toml',
        ('gateway', 'bench'): HERE / 'gateway_bench.toml',
        ('gateway', 'big'): work / 'gateway_1000.toml',
        ('gateway', 'attack'): HERE / 'gateway_attack.toml',
        ('frappy', 'bench'): HERE / 'frappy_bench_cfg.py',
        ('frappy', 'big'): work / 'frappy_1000_cfg.py',
    }
    scen = scenarios(args.smoke)
    if args.only:
        keys = set(args.only.split(','))
        scen = [s for s in scen if s[0] in keys]
    titles = {s[0]: s[1] for s in scen}
    servers = ['gateway'] + (['frappy'] if with_frappy else [])
    started = time.time()
    log(f'results in {out}; RLIMIT_NOFILE {nofile}; load average {os.getloadavg()}')
    results = {}
    problems = []
    per_run_timeout = 120 if args.smoke else 900
    for key, title, bargs, node, which, threads, *rest in scen:
        pin = rest[0] if rest else None   # CPUs for the server and the client
        awake = len(rest) > 1 and rest[1]
        for server_kind in servers:
            if which == 'gateway' and server_kind != 'gateway':
                continue
            log(f'\n### {title}: {server_kind}')
            busy_before = wait_idle(wait) if wait > 0 else None

            def run_fresh(first=False):
                """One run against a freshly started server (None if it cannot start)."""
                try:
                    srv = Server(server_kind, gw_bin, configs[(server_kind, node)], work,
                                 out / f'{server_kind}.log', pin)
                except Exception as e:  # noqa: BLE001  (report and go on)
                    if first:
                        problems.append(f'{key} {server_kind}: {e}')
                    log(f'cannot start {server_kind}: {e}')
                    return None
                try:
                    r = run_bench(bench_bin, srv, server_kind, bargs, threads, logf, per_run_timeout,
                                  pin, awake)
                    if not srv.alive():
                        r['ok'] = False
                        r.setdefault('error_samples', []).append(
                            f'{server_kind} exited during the run ({srv.proc.returncode})')
                finally:
                    srv.stop()
                return r

            res = run_fresh(first=True)
            if res is None:
                continue
            # a short run that other processes disturbed is repeated (the least disturbed counts)
            tries = 0
            while (wait > 0 and res.get('others_cpu_pct', 0) > 30 and tries < 2 and
                   res.get('metrics', {}).get('measured_wall_s', 99) < 60):
                tries += 1
                log(f"other processes used {res['others_cpu_pct']:.0f} % of a core during the run: repeating it")
                busy_before = wait_idle(wait)
                again = run_fresh()
                if again is None:
                    break
                again['repeated'] = tries
                if again.get('others_cpu_pct', 0) < res.get('others_cpu_pct', 0):
                    res = again
            # a figure that varies a lot from run to run: each server's best of several runs
            best = BEST_OF.get(key) if not args.smoke else None
            if best and res.get('ok'):
                metric, runs = best
                figures = [res.get('metrics', {}).get(metric)]
                for _ in range(runs - 1):
                    busy_before = wait_idle(wait) if wait > 0 else None
                    again = run_fresh()
                    if again is None or not again.get('ok'):
                        continue
                    figures.append(again.get('metrics', {}).get(metric))
                    if (again['metrics'].get(metric) or 0) > (res['metrics'].get(metric) or 0):
                        res = again
                res['best_of'] = {'metric': metric, 'figures': figures}
                log(f'{metric} of {len(figures)} runs: {figures}; the best counts')
            res['load_after'] = os.getloadavg()
            res['busy_before'] = busy_before
            results[(server_kind, key)] = res
            if not res.get('ok'):
                problems.append(f'{key} {server_kind}: ' + '; '.join(res.get('error_samples', [])[:3]))

    # -- report
    rows = comparison(results, titles, with_frappy)
    headers = ['scenario', 'figure', 'gateway', 'frappy', 'gateway better by']
    if not with_frappy:
        headers = headers[:3]
        rows = [r[:3] for r in rows]
    tgt = targets(results) if not args.smoke else []
    print()
    print(f'secop-bench results ({"smoke" if args.smoke else "full"} run, '
          f'{time.time() - started:.0f} s, load average now {os.getloadavg()[0]:.2f})')
    print(print_table(headers, rows))
    if tgt:
        print()
        print(print_table(['target', 'gateway', ''], tgt))
    # how much other processes disturbed each run
    cond = [(titles[k], srv, f"{r.get('others_cpu_pct', 0):.0f} %",
             '-' if r.get('busy_before') is None else f"{r['busy_before'] * 100:.0f} %")
            for (srv, k), r in results.items()]
    cond_headers = ['scenario', 'server', 'CPU of other processes during the run (% of a core)',
                    'machine busy before (% of all CPUs)']
    if not args.smoke:
        print()
        print(print_table(cond_headers, cond))
    # the runs behind a best-of figure
    best_lines = [f"{titles[k]}, {srv}: {r['best_of']['metric']} of {len(r['best_of']['figures'])} runs "
                  f"{', '.join(fmt(x) for x in r['best_of']['figures'])}; the best counts"
                  for (srv, k), r in results.items() if r.get('best_of')]
    for line in best_lines:
        print(line)
    failed_gw = [p for p in problems if ' gateway' in p.split(':')[0]]
    if problems:
        print()
        print('* = the run had errors or timeouts (its figures are shown as measured):')
        for p in problems:
            print('problem:', p)
    (out / 'results.json').write_text(json.dumps(
        [{**r, 'server': s, 'key': k} for (s, k), r in results.items()], indent=1))
    (out / 'table.md').write_text(print_table(headers, rows, md=True) + '\n\n' +
                                  (print_table(['target', 'gateway', ''], tgt, md=True) + '\n\n' if tgt else '') +
                                  print_table(cond_headers, cond, md=True) + '\n' +
                                  ''.join(f'\n- {line}' for line in best_lines) + '\n')
    print(f'\nwritten: {out}/results.json, table.md, bench-output.txt')
    shutil.rmtree(work, ignore_errors=True)
    # a run fails on errors of the gateway (frappy's failures are results)
    return 1 if failed_gw else 0


if __name__ == '__main__':
    sys.exit(main())
