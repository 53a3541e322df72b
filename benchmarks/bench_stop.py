"""Cost of the stopping machinery on the monitor's loop (CPU time, printed as JSON).

* ``identity_check_us``: one check that a pinned PID is still its process (done before every
  signal and, with --pid, once per loop turn to notice the exit);
* ``idle_tick_us``: one ``StopPlan.tick`` while no stop is under way (every loop turn);
* ``control_write_us``: one atomic control-file write with fsyncs, on the current directory's
  filesystem (once per run).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time

from trainguard.control import StopRequest, write_stop_request
from trainguard.monitor.act.actions import StopPlan
from trainguard.monitor.act.process import ProcessTarget


def _per_call_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        target = ProcessTarget.capture(sleeper.pid)
        identity = _per_call_us(target.alive, 2000)
        target.close()
    finally:
        sleeper.kill()
        sleeper.wait()
    idle = _per_call_us(StopPlan().tick, 200_000)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        request = StopRequest(rule="r", reason="x", step=1, time=time.time())
        wall = time.perf_counter()
        write = _per_call_us(lambda: write_stop_request(f"{tmp}/control.json", request), 200)
        wall_ms = (time.perf_counter() - wall) / 200 * 1e3
    print(json.dumps({"bench": "stop", "identity_check_us": round(identity, 1),
                      "idle_tick_us": round(idle, 3), "control_write_cpu_us": round(write, 1),
                      "control_write_wall_ms": round(wall_ms, 2)}))


if __name__ == "__main__":
    main()
