"""Setpoints that survive restarts (issue 16): `persist = "restore"` writes the last
written value back to the device at start and after every reconnect, `"remember"` shows
it; the state file is written atomically, so that kill -9 at any moment leaves a file
that parses and holds an old or the new value."""

import json
import random
import subprocess
import time

from conftest import Gateway, gateway_binary
from rawsecop import Line, value_of
from test_ascii_link import link_config, pty_instrument  # noqa: F401 (fixture)


def persist_config(pty_path, state_file, target_max=400, write_delay=0.01):
    text = link_config(f'serial = "{pty_path}"', extra_module=False)
    text = text.replace('write = "SETP 1,{value:.3f}"',
                        'write = "SETP 1,{value:.3f}"\npersist = "restore"')
    text = text.replace('min = 0, max = 400, unit = "K"', f'min = 0, max = {target_max}, unit = "K"')
    text = text.replace('write = "RANGE 1,{value:d}"',
                        'write = "RANGE 1,{value:d}"\npersist = "remember"')
    # a write-only parameter: "remember" shows its last value after a restart
    text = text.replace('[[module.command]]', '''[[module.parameter]]
name = "_label"
datainfo = { type = "string", maxchars = 20 }
write = "LABEL {value}"
persist = "remember"
[[module.command]]''', 1)
    state = f'[state]\nfile = "{state_file}"\nwrite_delay = {write_delay}\n\n'
    return state + text


def setpoints(sim):
    with sim.lock:
        return [r for r in sim.requests if r.startswith('SETP 1,')]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_state_survives_kill_9_during_a_storm_of_changes(tmp_path, pty_instrument):
    sim = pty_instrument.instrument
    state = tmp_path / 'state.json'
    config = tmp_path / 'persist.toml'
    config.write_text(persist_config(pty_instrument.path, state))
    rng = random.Random(16)
    changed_rounds = 0
    for n in range(100):
        old = (json.loads(state.read_text())['values'].get('T_A:target')
               if state.exists() else None)
        sent = set()
        gw = Gateway(tmp_path / f'round{n}', config, f'persist-{n}').start()
        c = Line(gw)
        # a storm of changes, pipelined, and kill -9 at a random moment within it
        storm_end = time.monotonic() + rng.uniform(0.0, 0.25)
        while time.monotonic() < storm_end:
            value = round(rng.uniform(1.0, 399.0), 3)
            sent.add(value)
            c.send(f'change T_A:target {value}')
            time.sleep(rng.uniform(0.0, 0.01))
        gw.process.kill()
        gw.process.wait()
        gw.stop()
        c.close()
        if state.exists():
            data = json.loads(state.read_text())   # always parses
            assert data['version'] == 1, data
            value = data['values'].get('T_A:target')
            # the value before this round, or one sent in this round
            assert value == old or value in sent, f'round {n}: {value}, before {old}'
            changed_rounds += value != old
    assert changed_rounds >= 30, f'only {changed_rounds} rounds reached the file: test broken'
    last = json.loads(state.read_text())['values']['T_A:target']
    # After a restart the device receives the restored setpoint.
    with sim.lock:
        sim.requests.clear()
    gw = Gateway(tmp_path / 'restart', config, 'persist-restart').start()
    try:
        expected = f'SETP 1,{last:.3f}'
        assert wait_for(lambda: expected in setpoints(sim)), (expected, setpoints(sim))
        c = Line(gw)
        assert value_of(c.ask('read T_A:target')) == last
        c.close()
    finally:
        gw.stop()


def test_restore_after_a_reconnect_and_remember(tmp_path, pty_instrument):
    sim = pty_instrument.instrument
    state = tmp_path / 'state.json'
    config = tmp_path / 'persist.toml'
    config.write_text(persist_config(pty_instrument.path, state))
    gw = Gateway(tmp_path / 'gw', config, 'persist-reconnect').start()
    try:
        c = Line(gw)
        assert c.ask('change T_A:target 123.5').startswith('changed T_A:target [123.5')
        assert c.ask('change T_A:_heater_range 2').startswith('changed T_A:_heater_range [2')
        assert c.ask('change T_A:_label "run 42"').startswith('changed T_A:_label ["run 42"')
        assert wait_for(lambda: state.exists()
                        and json.loads(state.read_text())['values'].get('T_A:_label') == 'run 42')
        values = json.loads(state.read_text())['values']
        assert values['T_A:target'] == 123.5 and values['T_A:_heater_range'] == 2, values
        # The instrument forgets its setpoint (power cycle) while the cable is out.
        with sim.lock:
            sim.requests.clear()
        sim.stall = True
        c.ask('read T_A:value', timeout=5)
        with sim.lock:
            sim.setpoint = 5.0
        sim.stall = False
        assert wait_for(lambda: 'SETP 1,123.500' in setpoints(sim), timeout=10), setpoints(sim)
        c.close()
    finally:
        gw.stop()


def test_a_corrupt_or_unfitting_state_file_is_reported_and_ignored(tmp_path, pty_instrument):
    sim = pty_instrument.instrument
    state = tmp_path / 'state.json'
    config = tmp_path / 'persist.toml'
    config.write_text(persist_config(pty_instrument.path, state))
    state.write_text('{"version": 1, "values": {"T_A:tar')
    gw = Gateway(tmp_path / 'corrupt', config, 'persist-corrupt').start()
    try:
        c = Line(gw)
        assert c.ask('read T_A:value').startswith('reply T_A:value')
        assert 'state file ignored' in gw.log_text()
        assert (tmp_path / 'state.json.corrupt').exists()
        c.close()
    finally:
        gw.stop()
    # A value that no longer fits the datainfo (max lowered to 100) is dropped, not sent.
    state.write_text(json.dumps({'version': 1, 'values': {'T_A:target': 350.0}}))
    config.write_text(persist_config(pty_instrument.path, state, target_max=100))
    with sim.lock:
        sim.requests.clear()
    gw = Gateway(tmp_path / 'unfit', config, 'persist-unfit').start()
    try:
        c = Line(gw)
        assert c.ask('read T_A:value').startswith('reply T_A:value')
        assert 'persisted value 350.0 dropped' in gw.log_text(), gw.log_text()
        assert not [r for r in setpoints(sim) if r.startswith('SETP 1,350')], setpoints(sim)
        c.close()
    finally:
        gw.stop()


def test_check_config_refuses_persist_without_state_or_on_read_only(tmp_path):
    base = persist_config('/dev/null-tty', tmp_path / 'state.json')
    cases = [
        ('[node]' + base.split('[node]', 1)[1],   # no [state] section
         'parameter[1].persist: needs a state file'),
        (base.replace('query = "HTR? 1"', 'query = "HTR? 1"\npersist = "restore"'),
         'parameter[3] ("_heater").persist: only a writable parameter can be persisted'),
        (base.replace('persist = "remember"', 'persist = "forever"'),
         '"forever" is not "restore" or "remember"'),
        (base.replace('write_delay = 0.01', 'write_delay = 61'),
         'state.write_delay'),
    ]
    for text, expected in cases:
        path = tmp_path / 'bad.toml'
        path.write_text(text)
        out = subprocess.run([str(gateway_binary()), '--config', str(path), 'check-config'],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (expected, out.stdout, out.stderr)
        assert expected in out.stderr, (expected, out.stderr)


def test_remember_shows_the_last_value_without_writing_it(tmp_path, pty_instrument):
    sim = pty_instrument.instrument
    state = tmp_path / 'state.json'
    state.write_text(json.dumps({'version': 1, 'values': {'T_A:_label': 'run 42'}}))
    config = tmp_path / 'persist.toml'
    config.write_text(persist_config(pty_instrument.path, state))
    with sim.lock:
        sim.requests.clear()
    gw = Gateway(tmp_path / 'remember', config, 'persist-remember').start()
    try:
        c = Line(gw)
        reply = c.ask('read T_A:_label')
        assert reply.startswith('reply T_A:_label ["run 42"'), reply
        # activated clients get it with the initial updates, too
        c.send('activate T_A')
        update = c.wait_for('update T_A:_label')
        assert update.startswith('update T_A:_label ["run 42"'), update
        time.sleep(0.5)
        with sim.lock:
            labels = [r for r in sim.requests if r.startswith('LABEL')]
        assert not labels, f'a remembered value was written: {labels}'
        c.close()
    finally:
        gw.stop()
