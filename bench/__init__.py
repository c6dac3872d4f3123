"""Benchmarks that compare goverse with a baseline measured in the same run.

``python -m bench`` (or ``bin/bench``) runs every scenario, prints a table
and rewrites ``bench/RESULTS.md``. Each figure is either a ratio against a
baseline measured in the same run on the same machine, or a count that
does not depend on the machine (bytes per object, lease periods).

Importing this package patches nothing: the entry (``bench/__main__.py``)
patches for gevent, and the Ray side runs in an unpatched child process.
"""

#: Scenario names in run order, each with the module that measures it.
SCENARIOS = {
    "local-call": "bench.local_call",
    "peer-call": "bench.peer_call",
    "create": "bench.create",
    "ray-call": "bench.ray_call",
    "memory": "bench.memory",
    "failover": "bench.failover",
    "admin": "bench.admin",
    "gate-call": "bench.gate_call",
    "push-fanout": "bench.push_fanout",
}
