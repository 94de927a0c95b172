"""A fork server: start each flow run as a fork of a process with the engine imported.

A fresh interpreter spends most of its start-up importing (the engine, nats,
msgspec, anyio) and then connecting. The fork server pays the imports once:
``python -m engine.runner._forkserver SOCKET SPARES`` imports everything, then
waits for the runner on a unix socket. For each run the runner asks it to
fork; the child becomes a process of its own (new session and process group,
the run's environment and working folder, fresh random state) and executes
the run as a standby does (:mod:`engine.runner._standby`), importing the flow's own
code itself. Runs stay isolated from each other: nothing a run imports or
changes reaches the server or another run.

The fork is taken off the run's path too: after each run it is given, the
server forks a *spare* for the same environment and folder, which waits on
a socketpair channel. The next run with that environment is handed to the
spare. At most ``SPARES`` spares wait (one per environment; the oldest goes
first); a spare never runs more than one run. The spare is forked when the
run's process exits, or SPARE_DELAY seconds after the run started if it is
still going, so that forking does not take CPU from the run just started.

The server also fences the runs it forked (also after the runner is gone:
see :meth:`_Server.drain`): it reads each one's lease file
(``"lease"`` in the spawn request; :mod:`engine.runner._fence`) and SIGKILLs
the run's process group once its deadline passes without a renewal, as a
run's own watchdog thread would. One process watching every run costs no
thread per run (a thread is a few hundred copy-on-write page faults in a
forked child), and it still works when the runner is frozen: the server is a
process of its own.

No child connects to NATS: each reports through the runner's relay
(:mod:`engine.runner._relay`) over a socket the runner creates per run and
sends with the spawn request (SCM_RIGHTS); the server passes it on to the
child with its assignment, the same way, and keeps no copy.

Protocol (one JSON object per line, runner <-> server):

* runner: ``{"spawn": TOKEN, "env": {...}, "cwd": PATH|null, "assignment": TEXT,
  "lease": PATH|null}`` where ``assignment`` is the standby assignment line for
  the run, sent with the child's end of its relay socket as ancillary data,
  and ``lease`` the run's lease file (none: the run is not fenced);
* server: ``{"spawned": TOKEN, "pid": PID}`` or ``{"spawned": TOKEN, "error": TEXT}``
* server: ``{"exited": PID, "code": CODE}`` (negative: killed by that signal),
  only for processes that were given a run.

The server forks from a single thread with no event loop running, which is
what makes forking safe. It exits when the runner's connection closes.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

# Everything a run needs, imported once here, before any fork.
import anyio
import anyio.from_thread
import msgspec  # noqa: F401
import nats  # noqa: F401

# The lifeline brings ctypes, the process's program argparse and gettext.
import engine
import engine._stack.execute
import engine._stack.pipe_reporter
import engine._stack.reporter
import engine.client
import engine.runner._lifeline
import engine.runner._process
import engine.runner._standby
import engine.runner._standby_run  # noqa: F401
import shared.settings  # noqa: F401
from engine.runner._fence import WATCH_PERIOD, lapsed, read_deadline
from engine.runner._forkchild import EnvChange, child
from engine.runner._lifeline import libc
from engine.runner._process import echo_run_logs
from engine.runner._rehearsal import rehearse
from engine.runner._standby import warm_codecs

#: Seconds after a run is given out before its environment's next spare is
#: forked, unless the run's process exits sooner (see the module docstring).
SPARE_DELAY = 0.25
#: Environments whose difference from the server's is remembered (then forgotten).
MAX_ENVIRONMENTS = 64


def _hand_over(channel: socket.socket, line: bytes, relay: int) -> bool:
    """Send a child its assignment and its relay socket, then close both here;
    False if the child is gone."""
    try:
        sent = socket.send_fds(channel, [line], [relay])
        if sent < len(line):
            # Not sendall(b""): it still writes, and fails once the child has
            # read its line and closed the channel.
            channel.sendall(line[sent:])
        return True
    except OSError:
        return False
    finally:
        channel.close()
        os.close(relay)


class _Server:
    """The fork server's state: its connection, the spares, the children given runs."""

    def __init__(self, conn: socket.socket, wake: tuple[int, int], spares: int) -> None:
        self.conn = conn
        self.wake = wake
        self.max_spares = spares
        #: Waiting spares by (environment, folder): pid and the server's end of its channel.
        self.spares: dict[str, tuple[int, socket.socket]] = {}
        #: Relay sockets the runner sent, in the order of its spawn requests.
        self.relays: collections.deque[int] = collections.deque()
        #: Children given a run (their exits are reported), with their spare key.
        self.assigned: dict[int, str] = {}
        #: Spares to fork: when at the latest, the environment and the folder.
        self.due: dict[str, tuple[float, dict[str, str], str | None]] = {}
        #: The lease file of each child given a run, and when to read them next.
        self.leases: dict[int, str] = {}
        #: Children SIGKILLed for a lapsed lease, until they are reaped.
        self.fenced: set[int] = set()
        self.lease_check: float | None = None
        #: How each environment seen differs from ours, by spare key.
        self.changes: dict[str, EnvChange] = {}

    def send(self, obj: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # the runner is gone: nobody to tell
            self.conn.sendall(json.dumps(obj).encode() + b"\n")

    def drain(self) -> None:
        """The runner is gone: end its runs as their lifeline would, and fence
        those that do not end; return once none with a lease is left.

        Each run gets SIGTERM to its process group, as the parent-death signal
        would give it if we exited now. A run that ignores it (or is frozen) is
        SIGKILLed at its lease deadline, which nobody renews any more: this
        process stays until then, because it is the runs' fence.
        """
        self.due.clear()
        for _, channel in self.spares.values():
            channel.close()  # they read end-of-file and exit
        self.spares.clear()
        for pid in self.assigned:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        wake_r = self.wake[0]
        while any(pid in self.leases or pid in self.fenced for pid in self.assigned):
            ready, _, _ = select.select([wake_r], [], [], self.next_due())
            if ready:
                os.read(wake_r, 4096)
            self.reap()
            self.check_leases()

    def fork(self, key: str, env: dict[str, str], cwd: str | None) -> tuple[int, socket.socket]:
        """Fork a child that waits for its assignment; (pid, our end of its channel)."""
        change = self.changes.get(key)
        if change is None:
            if len(self.changes) >= MAX_ENVIRONMENTS:
                self.changes.clear()
            change = self.changes[key] = EnvChange.to(env)
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self.conn.close()
            for fd in (*self.wake, *self.relays):
                os.close(fd)
            for _, channel in self.spares.values():
                channel.close()
            child(change, cwd, theirs)
        theirs.close()
        return pid, ours

    def spawn(self, request: dict[str, Any]) -> None:
        token = request.get("spawn")
        env = dict(request.get("env") or {})
        cwd = request.get("cwd")
        line = str(request.get("assignment") or "").encode()
        if not self.relays:
            self.send({"spawned": token, "error": "the request brought no relay socket"})
            return
        relay = self.relays.popleft()
        key = json.dumps([sorted(env.items()), cwd])
        pid = None
        spare = self.spares.pop(key, None)
        if spare is not None:
            pid, channel = spare
            if not _hand_over(channel, line, os.dup(relay)):  # it died waiting
                pid = None
        if pid is None:
            try:
                pid, channel = self.fork(key, env, cwd)
            except OSError as exc:
                os.close(relay)
                self.send({"spawned": token, "error": str(exc)})
                return
            # If the child dies before reading, its exit is reported like any run's.
            _hand_over(channel, line, os.dup(relay))
        os.close(relay)
        self.assigned[pid] = key
        if lease := request.get("lease"):
            self.leases[pid] = str(lease)
            self.lease_check = time.monotonic()  # read it now: it may be late already
        self.send({"spawned": token, "pid": pid})
        if self.max_spares > 0 and key not in self.due:
            self.due[key] = (time.monotonic() + SPARE_DELAY, env, cwd)

    def next_due(self) -> float | None:
        """Seconds until a spare is due or the leases are to be read (None: neither)."""
        times = [at for at, _, _ in self.due.values()]
        if self.lease_check is not None:
            times.append(self.lease_check)
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def check_leases(self) -> None:
        """Fence every run whose lease has lapsed; read again at the soonest deadline."""
        now = time.monotonic()
        if self.lease_check is None or now < self.lease_check:
            return
        soonest = WATCH_PERIOD
        for pid, path in list(self.leases.items()):
            deadline = read_deadline(path)
            late = lapsed(deadline, now)
            if late is None:
                assert deadline is not None
                soonest = min(soonest, deadline - now)
                continue
            del self.leases[pid]
            self.fenced.add(pid)
            print(
                f"sluice: the lease of the run in process {pid} was lost ({late}); stopping it",
                file=sys.stderr,
                flush=True,
            )
            try:
                os.killpg(pid, signal.SIGKILL)  # it leads its own group: its whole tree
            except ProcessLookupError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # not its group's leader yet
        self.lease_check = now + soonest if self.leases else None

    def fork_due(self, key: str | None = None) -> None:
        """Fork the spare for ``key`` now, or every spare whose time has come."""
        now = time.monotonic()
        for due_key, (at, env, cwd) in list(self.due.items()):
            if due_key == key or (key is None and at <= now):
                del self.due[due_key]
                if due_key not in self.spares:
                    self.add_spare(due_key, env, cwd)

    def add_spare(self, key: str, env: dict[str, str], cwd: str | None) -> None:
        while len(self.spares) >= self.max_spares:
            oldest = next(iter(self.spares))
            _, channel = self.spares.pop(oldest)
            channel.close()  # it reads end-of-file and exits
        with contextlib.suppress(OSError):  # no spare this time: the next run forks afresh
            self.spares[key] = self.fork(key, env, cwd)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.assigned:
                key = self.assigned.pop(pid)
                self.leases.pop(pid, None)
                self.fenced.discard(pid)
                self.send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})
                self.fork_due(key)  # its run is over: the spare no longer competes with it
                continue
            for key, (spare, channel) in list(self.spares.items()):
                if spare == pid:  # a spare that died waiting: drop it
                    del self.spares[key]
                    channel.close()


def prepare() -> None:
    """Do once, before any fork, what every forked run would otherwise do itself."""
    warm_codecs()  # once here, inherited by every fork
    echo_run_logs()  # the run's loggers and the C library: set up once, here
    libc()
    rehearse()  # what every run executes, specialised here (engine.runner._rehearsal)
    # The event-loop backend and the blocking portal import and set up more on
    # first use; a portal started and stopped once here spares each child that.
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(anyio.sleep, 0)
    # Move everything imported so far out of the collector's reach: a child's
    # collections would otherwise touch (and so copy) most of the server's
    # memory pages, which costs each fork milliseconds of CPU.
    gc.collect()
    gc.freeze()


def listen(path: str) -> socket.socket:
    """A socket listening at ``path``, which appears only once it listens.

    The runner connects as soon as the file exists; a socket bound but not yet
    listening would refuse it. Binding to a private name and renaming, which
    is atomic, closes that window.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hidden = f"{path}.{os.getpid()}.tmp"
    listener.bind(hidden)
    listener.listen(1)
    os.rename(hidden, path)
    return listener


def serve(path: str, spares: int) -> None:
    listener = listen(path)
    conn, _ = listener.accept()
    listener.close()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when we stop
    prepare()
    server = _Server(conn, (wake_r, wake_w), spares)
    buffer = b""
    while True:
        ready, _, _ = select.select([conn.fileno(), wake_r], [], [], server.next_due())
        server.fork_due()
        server.check_leases()
        if wake_r in ready:
            os.read(wake_r, 4096)
            server.reap()
        if conn.fileno() in ready:
            chunk, fds, _, _ = socket.recv_fds(conn, 65536, 16)
            server.relays.extend(fds)  # one per spawn request, in order
            if not chunk:
                server.drain()
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                server.spawn(json.loads(line))


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
