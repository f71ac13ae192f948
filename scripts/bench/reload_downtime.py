"""Node downtime for a reload of a 100-module config with one changed module.

Usage: python3 scripts/bench/reload_downtime.py [path/to/secop-gateway] [runs]
Main node: 100 simulated modules; extra node "view": module m0 only. Each run changes
module m99's description text and sends SIGHUP. Measured per run:
  unaffected: the view client's longest gap between m0 updates around the reload, and
              whether its connection survived;
  affected:   from SIGHUP until a new connection to the main node has its `describing`
              (the old connection is closed by the gateway).
"""
import json, os, signal, socket, subprocess, sys, tempfile, time, threading

BIN = sys.argv[1] if len(sys.argv) > 1 else 'target/debug/secop-gateway'
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 10


def config(version):
    text = ['[node]', 'equipment_id = "bench_main"', 'description = "100 modules"', '',
            '[[extra_node]]', 'equipment_id = "bench_view"', 'description = "m0 only"',
            'listen = "127.0.0.1:0"', 'modules = ["m0"]', '']
    for i in range(100):
        text += ['[[module]]', f'name = "m{i}"', 'driver = "sim_temperature"',
                 f'description = "module {i} v{version if i == 99 else 0}"',
                 '[module.settings]', 'pollinterval = 0.1', '']
    return '\n'.join(text)


def lines(sock):
    buf = b''
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buf += data
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            yield line.decode()


def main():
    work = tempfile.mkdtemp()
    cfg, ready = os.path.join(work, 'g.toml'), os.path.join(work, 'ready.json')
    open(cfg, 'w').write(config(0))
    gw = subprocess.Popen([BIN, '--config', cfg, '--listen', '127.0.0.1:0', '--ready-file', ready],
                          stdout=open(os.path.join(work, 'log'), 'w'), stderr=subprocess.STDOUT)
    while not os.path.exists(ready):
        time.sleep(0.05)
    time.sleep(0.2)
    addresses = json.load(open(ready))['tcp']
    main_addr, view_addr = [(a.rpartition(':')[0], int(a.rpartition(':')[2])) for a in addresses]
    view = socket.create_connection(view_addr)
    view.sendall(b'activate\n')
    stamps, view_closed = [], []

    def watch():
        for line in lines(view):
            if line.startswith('update m0:value'):
                stamps.append(time.monotonic())
        view_closed.append(True)
    threading.Thread(target=watch, daemon=True).start()
    affected = []
    for run in range(1, RUNS + 1):
        old = socket.create_connection(main_addr)
        old.sendall(b'describe\n')
        next(lines(old))
        open(cfg, 'w').write(config(run))
        t0 = time.monotonic()
        gw.send_signal(signal.SIGHUP)
        old.settimeout(5)
        while old.recv(65536):
            pass
        while True:   # connect and describe until the new description is there
            try:
                s = socket.create_connection(main_addr, timeout=1)
                s.sendall(b'describe\n')
                reply = next(lines(s))
                s.close()
                if f'v{run}' in reply:
                    break
            except OSError:
                pass
        affected.append((time.monotonic() - t0) * 1000)
        time.sleep(0.5)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    kept = not view_closed
    gw.send_signal(signal.SIGTERM)
    gw.wait()
    print(open(os.path.join(work, 'log')).read().count('configuration reloaded'), 'reloads logged;',
          [l.split('took_ms=')[1].split()[0] for l in open(os.path.join(work, 'log')) if 'took_ms=' in l])
    affected.sort()
    print(f'runs {RUNS}; affected node: SIGHUP to new describing: median {affected[len(affected)//2]:.1f} ms, '
          f'max {affected[-1]:.1f} ms')
    print(f'unaffected node: connection kept: {kept}; {len(stamps)} updates of m0 '
          f'(poll 100 ms), longest gap {max(gaps)*1000:.0f} ms')


main()
