"""A real third-party Modbus server (pymodbus) for the tests: Modbus TCP on
127.0.0.1, or Modbus RTU on one end of a socat pty pair, in a background thread."""

import asyncio
import socket
import threading

from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSlaveContext)
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

FC = {'coil': 1, 'discrete': 2, 'holding': 3, 'input': 4}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ModbusSim:
    """Units with 300 coils, discrete inputs, input and holding registers each."""

    def __init__(self, units=(1,)):
        self.units = {
            u: ModbusSlaveContext(
                di=ModbusSequentialDataBlock(0, [0] * 300),
                co=ModbusSequentialDataBlock(0, [0] * 300),
                hr=ModbusSequentialDataBlock(0, [0] * 300),
                ir=ModbusSequentialDataBlock(0, [0] * 300))
            for u in units}
        self.context = ModbusServerContext(slaves=self.units, single=False)
        self.requests = []       # (unit, function code, address, count) of reads
        self.loop = None
        self.server = None
        self.thread = None
        self.port = None

    def set(self, unit, table, address, values):
        self.units[unit].setValues(FC[table], address, list(values))

    def get(self, unit, table, address, count=1):
        return self.units[unit].getValues(FC[table], address, count)

    def _trace(self, sending, pdu):
        if not sending and hasattr(pdu, 'count'):
            self.requests.append((pdu.dev_id, pdu.function_code, pdu.address, pdu.count))
        return pdu

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
        if self.loop and self.server and self.loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop)
            try:
                fut.result(5)
            except Exception:
                pass
        if self.thread:
            self.thread.join(5)
