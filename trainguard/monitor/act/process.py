"""Signalling a trainer process without ever hurting the wrong one.

A PID is only a number: once its process exits, the kernel may hand it to an unrelated process
(an impostor). :class:`ProcessTarget` therefore captures the process's identity when it is given
(its creation time, its owner and, where the kernel has them, a pidfd) and checks it again
before every signal, refusing when it no longer matches. A pidfd names one process, never a
reused number, so ``signal.pidfd_send_signal`` through it is race-free; the creation time is the
portable fallback.

Safety rules, enforced for every signal:

* never PID 1, never this process, never our own process group (we would stop ourselves);
* never a process of another user;
* the process group is signalled only when the target leads its own group (``trainguard run``
  and torchrun start workers with ``start_new_session``), so its children stop too; otherwise
  the process alone. Where the kernel has pidfds, the leader is signalled through its pidfd and
  every other member through a pidfd of its own (never ``killpg`` by number); without pidfds,
  ``killpg`` follows the creation-time check, which leaves the narrow window a PID number has.

Nothing here raises for a refusal: :meth:`ProcessTarget.send` returns a :class:`SignalOutcome`
saying what was done and why, because "the process is gone" is an expected outcome.
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass

import psutil

from trainguard.exceptions import ConfigError

__all__ = ["ProcessTarget", "SignalOutcome", "parse_signal"]

#: Two readings of one process's creation time are equal (boot time + start tick); the margin
#: only absorbs float rounding. The tick is 10 ms, so two processes born in the same tick look
#: alike: the pidfd, where available, is the exact check.
_CREATE_TIME_TOLERANCE = 0.001


def parse_signal(name: str | int) -> signal.Signals:
    """``"TERM"``, ``"SIGTERM"``, ``"15"`` or ``15`` -> ``signal.SIGTERM``; else ConfigError."""
    text = str(name).strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise ConfigError(f"unknown signal {name!r} (try SIGTERM, SIGINT or SIGKILL)") from None


@dataclass(frozen=True, slots=True)
class SignalOutcome:
    """What one attempt to signal the target did."""

    delivered: bool
    signal: str
    #: ``group`` (the whole process group), ``process`` (the target alone) or ``none``.
    scope: str
    detail: str

    def describe(self) -> str:
        """One line for the alert log."""
        if not self.delivered:
            return f"{self.signal} refused: {self.detail}"
        return f"{self.signal} sent to {self.scope} ({self.detail})"


class ProcessTarget:
    """A process we may signal, pinned by PID, creation time, owner and (if possible) a pidfd."""

    def __init__(self, pid: int, create_time: float, uid: int, *, pidfd: int | None = None,
                 is_child: bool = False) -> None:
        self.pid = pid
        self.create_time = create_time
        self.uid = uid
        self._pidfd = pidfd
        #: Our own child cannot be reaped (so its PID cannot be reused) before we wait for it.
        self.is_child = is_child

    @classmethod
    def capture(cls, pid: int, *, expected_create_time: float | None = None,
                is_child: bool = False) -> ProcessTarget:
        """Pin the process that has ``pid`` now. ConfigError if it may never be signalled.

        ``expected_create_time`` (from an earlier capture, e.g. a monitor restart) makes the
        capture fail when the PID now belongs to another process.
        """
        reason = _forbidden(pid)
        if reason:
            raise ConfigError(f"--pid {pid}: {reason}")
        try:
            proc = psutil.Process(pid)
            create_time = proc.create_time()
            uid = proc.uids().real
        except psutil.NoSuchProcess:
            raise ConfigError(f"--pid {pid}: no such process") from None
        except psutil.Error as exc:
            raise ConfigError(f"--pid {pid}: cannot inspect the process: {exc}") from None
        if uid != os.getuid():
            raise ConfigError(f"--pid {pid}: belongs to another user (uid {uid}); "
                              "trainguard never signals another user's process")
        if expected_create_time is not None and abs(create_time - expected_create_time) > \
                _CREATE_TIME_TOLERANCE:
            raise ConfigError(f"--pid {pid}: is not the process it was (created at "
                              f"{create_time:.2f}, expected {expected_create_time:.2f})")
        pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = None  # old kernel or a sandbox without pidfds: creation time still guards
        target = cls(pid, create_time, uid, pidfd=pidfd, is_child=is_child)
        # Opening the pidfd after reading the creation time leaves a window: check again.
        if pidfd is not None and not target._same_process():
            target.close()
            raise ConfigError(f"--pid {pid}: the process exited while being captured")
        return target

    # -- identity ----------------------------------------------------------------------------------

    def _pidfd_exited(self) -> bool:
        """A pidfd becomes readable when its process exits."""
        assert self._pidfd is not None
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return bool(readable)

    def _same_process(self) -> bool:
        """Whether ``pid`` still names the process captured, alive (a zombie counts as gone)."""
        if self._pidfd is not None and self._pidfd_exited():
            return False
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > _CREATE_TIME_TOLERANCE:
                return False
            if proc.uids().real != self.uid:
                return False
            return bool(proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    def alive(self) -> bool:
        """Whether the captured process is still running."""
        return self._same_process()

    def leads_group(self) -> bool:
        """Whether the target is the leader of its own process group (and it is not ours)."""
        try:
            pgid = os.getpgid(self.pid)
        except OSError:
            return False
        return pgid == self.pid and pgid != os.getpgrp()

    # -- signalling --------------------------------------------------------------------------------

    def send(self, sig: signal.Signals, *, group: bool = True) -> SignalOutcome:
        """Send ``sig`` to the target's group (when it leads one and ``group``) or to it alone,
        after checking that it is still the captured process. Refuses otherwise."""
        name = sig.name
        reason = _forbidden(self.pid)
        if reason:
            return SignalOutcome(False, name, "none", reason)
        if not self._same_process():
            if group and self.is_child:
                return self._send_to_orphans(sig)
            return SignalOutcome(False, name, "none",
                                 f"pid {self.pid} is no longer the process that was given "
                                 "(it exited; the PID may have been reused)")
        if group and self.leads_group():
            if self._pidfd is None:
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    return SignalOutcome(False, name, "none", f"group {self.pid} is gone")
                except PermissionError as exc:
                    return SignalOutcome(False, name, "none", f"not permitted: {exc}")
                return SignalOutcome(True, name, "group", f"process group {self.pid} (by number)")
            # The leader through its pidfd (it cannot be another process), then each other
            # member through a pidfd of its own, opened before its group is checked.
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                return SignalOutcome(False, name, "none", f"pid {self.pid} exited")
            except PermissionError as exc:
                return SignalOutcome(False, name, "none", f"not permitted: {exc}")
            members = self._signal_members(sig)
            return SignalOutcome(True, name, "group", f"process group {self.pid} via pidfds "
                                 f"(leader and {members} other member(s))")
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return SignalOutcome(False, name, "none", f"pid {self.pid} exited")
        except PermissionError as exc:
            return SignalOutcome(False, name, "none", f"not permitted: {exc}")
        how = "via pidfd" if self._pidfd is not None else "checked by creation time"
        return SignalOutcome(True, name, "process", f"pid {self.pid} {how}")

    def orphans(self) -> list[int]:
        """Live members of the target's group after the target itself exited.

        Until we reap our child its PID (= the group id) cannot be reused; after, the group id
        stays reserved while any member lives. Each member must still be of the same user and
        younger than the leader; a process whose PID equals the group id would be a new leader
        on a reused number, never ours.
        """
        found: list[int] = []
        for proc in psutil.process_iter(["pid", "uids", "create_time", "status"]):
            pid = proc.info["pid"]
            try:
                if (pid == self.pid or os.getpgid(pid) != self.pid or _forbidden(pid)
                        or proc.info["status"] == psutil.STATUS_ZOMBIE
                        or proc.info["uids"].real != self.uid
                        or proc.info["create_time"] + _CREATE_TIME_TOLERANCE < self.create_time):
                    continue
            except (OSError, TypeError, AttributeError):
                continue
            found.append(pid)
        return found

    def _signal_members(self, sig: signal.Signals) -> int:
        """Signal every live member of the target's group but the leader, each through a pidfd
        opened *before* its group is checked again, so a member that exited and whose PID was
        reused in between is never hit. Returns how many were signalled.

        What remains: a process forked into the group after the members were listed is not
        signalled (its parent is, and the survivors check at exit catches it)."""
        hit = 0
        for pid in self.orphans():
            try:
                fd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
            except OSError:
                continue
            try:
                if os.getpgid(pid) != self.pid:
                    continue
                if fd is not None:
                    signal.pidfd_send_signal(fd, sig)
                else:
                    os.kill(pid, sig)
                hit += 1
            except OSError:
                continue
            finally:
                if fd is not None:
                    os.close(fd)
        return hit

    def _send_to_orphans(self, sig: signal.Signals) -> SignalOutcome:
        """Our child led its group and exited, but children it forked may live on in it: each
        is signalled through its own pidfd."""
        hit = self._signal_members(sig)
        if not hit:
            return SignalOutcome(False, sig.name, "none", f"pid {self.pid} and its group are gone")
        return SignalOutcome(True, sig.name, "group",
                             f"{hit} survivor(s) of exited group {self.pid}")

    def close(self) -> None:
        """Release the pidfd. Safe to call twice."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _forbidden(pid: int) -> str | None:
    """Why ``pid`` may never be signalled, or None."""
    if pid <= 1:
        return "PID 1 and non-positive PIDs are never signalled"
    if pid == os.getpid():
        return "that is trainguard itself"
    try:
        if os.getpgid(pid) == os.getpgrp() and pid == os.getpgrp():
            return "that process leads trainguard's own process group"
    except OSError:
        pass
    return None
