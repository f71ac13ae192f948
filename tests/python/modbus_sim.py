"""A real third-party Modbus server (pymodbus) for the tests: Modbus TCP on
127.0.0.1, or Modbus RTU on one end of a socat pty pair, in a background thread."""

import asyncio
import collections
import random
import socket
import struct
import threading
import time

from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSlaveContext)
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

FC = {'coil': 1, 'discrete': 2, 'holding': 3, 'input': 4}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# exception codes the sim answers with at random (exception_rate)
SERVER_DEVICE_FAILURE = ExceptionResponse.SLAVE_FAILURE   # 0x04
SERVER_DEVICE_BUSY = ExceptionResponse.SLAVE_BUSY         # 0x06


class _Exception(ExceptionResponse):
    """ExceptionResponse without its error log line (one per reply would flood the
    report of a failed test)"""

    def __init__(self, function_code, exception_code):   # pylint: disable=super-init-not-called
        ModbusPDU.__init__(self)
        self.function_code = function_code | 0x80
        self.exception_code = exception_code


def f32_words(value):
    """a float as two big-endian registers (high word first)"""
    raw = struct.pack('>f', value)
    return [int.from_bytes(raw[0:2], 'big'), int.from_bytes(raw[2:4], 'big')]


def f32_value(regs):
    return struct.unpack('>f', b''.join(r.to_bytes(2, 'big') for r in regs))[0]


class ModbusSim:
    """Units with 300 coils, discrete inputs, input and holding registers each.

    Faults (switch them at any time): `exception_rate` (the probability that a request
    is answered with a Modbus exception, SERVER_DEVICE_FAILURE or SERVER_DEVICE_BUSY,
    drawn from random.Random(`seed`); the request is then not executed), `stall` (no
    request is answered), `silent_units` (units that never answer, as if unplugged from
    the RS-485 bus).

    Counted: `requests` (unit, function code, address, count) of the reads,
    `received[unit]` every request received (answered or not), `exceptions[unit]` the
    exception replies sent, `unanswered[unit]` the requests left without a reply.
    """

    def __init__(self, units=(1,), exception_rate=0.0, seed=1):
        self.units = {
            u: ModbusSlaveContext(
                di=ModbusSequentialDataBlock(0, [0] * 300),
                co=ModbusSequentialDataBlock(0, [0] * 300),
                hr=ModbusSequentialDataBlock(0, [0] * 300),
                ir=ModbusSequentialDataBlock(0, [0] * 300))
            for u in units}
        self.context = ModbusServerContext(slaves=self.units, single=False)
        self.requests = []       # (unit, function code, address, count) of reads
        self.received = collections.Counter()
        self.exceptions = collections.Counter()
        self.unanswered = collections.Counter()
        self.exception_rate = exception_rate
        self.random = random.Random(seed)
        self.stall = False
        self.silent_units = set()
        self._ramps = []
        self.loop = None
        self.server = None
        self.thread = None
        self.port = None

    def set(self, unit, table, address, values):
        self.units[unit].setValues(FC[table], address, list(values))

    def get(self, unit, table, address, count=1):
        return self.units[unit].getValues(FC[table], address, count)

    def total_received(self):
        return sum(self.received.values())

    def _trace(self, sending, pdu):
        """pymodbus's trace_pdu hook: called with every request decoded (sending=False)
        and every response before it is sent. A request traced to None is not handled
        (no reply); one whose update_datastore is replaced answers that instead."""
        if sending:
            return pdu
        unit = pdu.dev_id
        self.received[unit] += 1
        if hasattr(pdu, 'count'):
            self.requests.append((unit, pdu.function_code, pdu.address, pdu.count))
        if self.stall or unit in self.silent_units:
            self.unanswered[unit] += 1
            return None
        if self.exception_rate > 0 and self.random.random() < self.exception_rate:
            code = self.random.choice([SERVER_DEVICE_FAILURE, SERVER_DEVICE_BUSY])
            self.exceptions[unit] += 1
            function_code = pdu.function_code

            async def refuse(_context):
                return _Exception(function_code, code)

            pdu.update_datastore = refuse
        return pdu

    def ramp(self, unit, rate, value_address=0, target_address=0, period=0.05):
        """A thread moving the f32 input register at `value_address` towards the f32
        holding register at `target_address` by `rate` per second (a Drivable); ends
        with stop()."""
        stop = threading.Event()

        def run():
            last = time.monotonic()
            while not stop.wait(period):
                now = time.monotonic()
                step = rate * (now - last)
                last = now
                value = f32_value(self.get(unit, 'input', value_address, 2))
                target = f32_value(self.get(unit, 'holding', target_address, 2))
                value += max(-step, min(step, target - value))
                self.set(unit, 'input', value_address, f32_words(value))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._ramps.append((stop, thread))

    def _run(self, make_server, ready):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def main():
            self.server = make_server()
            ready.set()
            await self.server.serve_forever()

        try:
            self.loop.run_until_complete(main())
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            ready.set()

    def _start(self, make_server):
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(make_server, ready), daemon=True)
        self.thread.start()
        ready.wait(5)
        return self

    def start_tcp(self, port=None):
        self.port = port or free_port()
        return self._start(lambda: ModbusTcpServer(
            self.context, address=('127.0.0.1', self.port), trace_pdu=self._trace))

    def start_rtu(self, path, baudrate=19200):
        return self._start(lambda: ModbusSerialServer(
            self.context, framer=FramerType.RTU, port=path, baudrate=baudrate, timeout=0.05,
            trace_pdu=self._trace))

    def stop(self):
        for stop, thread in self._ramps:
            stop.set()
            thread.join(2)
        self._ramps = []
        if self.loop and self.server and self.loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop)
            try:
                fut.result(5)
            except Exception:
                pass
        if self.thread:
            self.thread.join(5)
