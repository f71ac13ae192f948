# frappy config for the benchmarks (scripts/bench/run_all.py): the modules of
# gateway_bench.toml, with the same names, from frappy-core's own simulation classes.
#   T   Drivable with stop (SimDrivable: ramps value to target, BUSY while moving)
#   p   Readable, polled every 0.1 s (SimReadable with jitter, so every poll changes it)
#   ps  Writable (SimWritable: value follows target); the fanout writer changes
#       ps:pollinterval (one update per change here and in the gateway)
# The port is given by scripts/bench/frappy_server.py (127.0.0.1 only, no UDP).

Node('frappy_bench',
     'frappy benchmark node (simulated devices)',
     'tcp://10767',
)

Mod('T',
    'frappy.simulation.SimDrivable',
    'simulated temperature controller',
    extra_params='ramp',
    ramp=60,
    value=295.0,
    target=295.0,
)

Mod('p',
    'frappy.simulation.SimReadable',
    'simulated pressure gauge, polled every 0.1 s',
    extra_params='jitter',
    jitter=2e-8,
    value=Param(1.0e-6, unit='mbar'),
    pollinterval=0.1,
)

Mod('ps',
    'frappy.simulation.SimWritable',
    'simulated power supply',
    value=0.0,
    target=0.0,
    pollinterval=1.0,
)
