"""Run as PID 1 of a fresh PID namespace: pin a process, let it die, force an impostor onto its
PID through /proc/sys/kernel/ns_last_pid, and try to signal the pinned target.

Prints one JSON object: whether the impostor got the old PID, what each signal attempt
returned, and whether the impostor survived. Used by tests/test_process.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from trainguard.exceptions import ConfigError
from trainguard.monitor.act.process import ProcessTarget


def main() -> int:
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    with_pidfd = ProcessTarget.capture(victim.pid, is_child=False)
    by_time = ProcessTarget.capture(victim.pid)
    by_time.close()  # drop its pidfd: only the creation-time check guards this one
    old_create_time = with_pidfd.create_time
    victim.kill()
    victim.wait()
    time.sleep(0.05)  # creation times tick every 10 ms; real reuse takes a whole PID wrap
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(victim.pid - 1))
    impostor = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        outcomes = [with_pidfd.send(signal.SIGTERM), with_pidfd.send(signal.SIGKILL, group=False),
                    by_time.send(signal.SIGTERM), by_time.send(signal.SIGKILL, group=False)]
        try:
            ProcessTarget.capture(impostor.pid, expected_create_time=old_create_time)
            recapture = "accepted"
        except ConfigError as exc:
            recapture = str(exc)
        alive = impostor.poll() is None
    finally:
        impostor.kill()
        impostor.wait()
        with_pidfd.close()
    print(json.dumps({"old_pid": victim.pid, "impostor_pid": impostor.pid,
                      "delivered": [o.delivered for o in outcomes],
                      "details": [o.detail for o in outcomes],
                      "recapture": recapture, "impostor_alive": alive}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
