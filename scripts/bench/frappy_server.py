#!/usr/bin/env python3
"""Run frappy-core's SEC node server for the benchmarks: on 127.0.0.1 only, without
UDP discovery.

    python3 scripts/bench/frappy_server.py --cfg scripts/bench/frappy_bench_cfg.py [--port 0]

Prints `LISTENING 127.0.0.1:<port>` (flushed) once the node accepts connections and
runs until SIGTERM/SIGINT. Checked with frappy-core 0.20.9.

frappy's stock server must not run here as it is: its TCP interface binds all
interfaces, and `Server.run()` starts a UDP listener on 0.0.0.0:10767 that broadcasts
the node on every network at startup. This launcher
  1. replaces `frappy.server.UDPListener` by a class that opens no socket,
  2. registers a TCP interface class that binds 127.0.0.1,
  3. and, as a guard, makes every socket of this process refuse to bind, connect or
     send to an address that is not loopback.
Everything else (dispatcher, request handling, the threads per connection, the
listen backlog of socketserver) is frappy's own, so the figures are frappy's.
"""

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path


# -- 3. guard: loopback only, for every socket of this process (installed first) ------

def _loopback(addr):
    """True for (host, port, ...) tuples on loopback; non-tuples (AF_UNIX) pass."""
    if not isinstance(addr, tuple):
        return True
    host = str(addr[0]).split('%')[0]
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded(method, name, addr_of):
    def wrapper(self, *args, **kwds):
        addr = addr_of(args, kwds)
        if addr is not None and not _loopback(addr):
            raise PermissionError(f'frappy_server.py: {name} to {addr!r} refused (loopback only)')
        return method(self, *args, **kwds)
    wrapper.__name__ = name
    return wrapper


def install_guard():
    s = socket.socket
    first = lambda args, kwds: args[0] if args else kwds.get('address')  # noqa: E731
    s.bind = _guarded(s.bind, 'bind', first)
    s.connect = _guarded(s.connect, 'connect', first)
    s.connect_ex = _guarded(s.connect_ex, 'connect_ex', first)
    # sendto(data, address) / sendto(data, flags, address)
    s.sendto = _guarded(s.sendto, 'sendto', lambda args, kwds: args[-1] if len(args) >= 2 else None)
    # sendmsg(buffers, ancdata, flags, address)
    s.sendmsg = _guarded(s.sendmsg, 'sendmsg',
                         lambda args, kwds: args[3] if len(args) >= 4 else kwds.get('address'))


install_guard()

import frappy.server                                    # noqa: E402  (after the guard)
from frappy.lib import generalConfig                    # noqa: E402
from frappy.protocol.interface.tcp import TCPServer     # noqa: E402


# -- 1. no discovery ------------------------------------------------------------------

class NoDiscovery:
    """Stands in for frappy.protocol.discovery.UDPListener (same constructor); opens no
    socket. Server.run() calls run() once its interfaces are started."""
    ready = threading.Event()

    def __init__(self, *args, **kwds):
        pass

    def run(self):
        NoDiscovery.ready.set()

    def shutdown(self):
        pass


frappy.server.UDPListener = NoDiscovery


# -- 2. TCP on 127.0.0.1 ----------------------------------------------------------------

class LoopbackTCPServer(TCPServer):
    def server_bind(self):
        self.server_address = ('127.0.0.1', self.server_address[1])
        super().server_bind()


frappy.server.Server.INTERFACES = dict(frappy.server.Server.INTERFACES,
                                       tcp=f'{__name__}.LoopbackTCPServer')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--cfg', required=True, help='frappy config file (*_cfg.py)')
    ap.add_argument('--port', type=int, default=0, help='TCP port on 127.0.0.1 (0: any free)')
    ap.add_argument('--log-level', default='WARNING')
    ap.add_argument('--workdir', help='pid/log directory (default: a temporary one)')
    args = ap.parse_args()

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format='%(asctime)s %(name)s %(levelname)s %(message)s')
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix='frappy_bench_'))
    # keep frappy from reading generalConfig.cfg from the cwd or /etc/frappy
    generalConfig.testinit(piddir=workdir, logdir=workdir, confdir=[workdir])
    cfg = os.path.abspath(args.cfg)
    # Server() installs signal handlers: it must be made in the main thread
    srv = frappy.server.Server('bench', logging.getLogger('frappy'), cfgfiles=[cfg],
                               interface=f'tcp://{args.port}')
    thread = threading.Thread(target=srv.run, name='frappy-server', daemon=True)
    thread.start()
    if not NoDiscovery.ready.wait(300):
        print('frappy server did not start', file=sys.stderr)
        sys.exit(1)
    host, port = next(iter(srv.interfaces.values())).server_address[:2]
    if host != '127.0.0.1':
        print(f'frappy bound {host}, not 127.0.0.1: stopping', file=sys.stderr)
        srv.shutdown()
        sys.exit(1)
    print(f'LISTENING 127.0.0.1:{port}', flush=True)
    signal.signal(signal.SIGTERM, lambda *_: srv.shutdown())
    signal.signal(signal.SIGINT, lambda *_: srv.shutdown())
    while thread.is_alive():
        thread.join(0.5)


if __name__ == '__main__':
    main()
