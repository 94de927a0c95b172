"""The fork server's child: what a fork becomes before it runs its flow run.

Worked out in the server (:class:`EnvChange`, once per environment) and done
in the child (:func:`child`): its own session and process group, default
signal handlers, the run's environment and folder, then the standby's wait
for its assignment, which the server sends over a socketpair channel with
the run's relay socket. A child never returns into the server's loop.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import NamedTuple

from engine.runner._standby_run import run_standby


class EnvChange(NamedTuple):
    """What turns the server's environment into a run's: names to drop, values to set."""

    drop: list[str]
    set: dict[str, str]

    @classmethod
    def to(cls, env: dict[str, str]) -> EnvChange:
        # Worked out in the server, once per environment, not in each child:
        # clearing and refilling os.environ there costs ~0.5 ms of CPU (most
        # of it copy-on-write faults), and a run's environment differs from
        # the server's in a few names only.
        here = os.environ
        return cls(
            drop=[name for name in here if name not in env],
            set={name: value for name, value in env.items() if here.get(name) != value},
        )


def child(change: EnvChange, cwd: str | None, channel: socket.socket) -> None:
    """In the forked child: become the run's own process, execute it, never return.

    (The random module reseeds itself in a forked child: os.register_at_fork.)
    """
    code = 1
    try:
        os.setsid()  # its own process group: a kill reaches its whole tree
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for name in change.drop:
            del os.environ[name]
        os.environ.update(change.set)
        os.environ["SLUICE_RUNNER_PID"] = str(os.getppid())  # the server: we go with it
        if cwd:
            os.chdir(cwd)
            sys.path.insert(0, cwd)
        code = run_standby(_channel_reader(channel), self_fence=False)  # we fence it
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # report, never fall back into the server's loop
        print(f"fork server child failed: {exc!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _channel_reader(channel: socket.socket) -> Callable[[], tuple[bytes, int | None]]:
    """Read one assignment line from ``channel`` (blocking), with the relay socket
    the server passed along with it; (b"", None) when the server closed it first."""

    def read_assignment() -> tuple[bytes, int | None]:
        data, relay = b"", None
        while not data.endswith(b"\n"):
            chunk, fds, _, _ = socket.recv_fds(channel, 65536, 1)
            for fd in fds:
                if relay is None:
                    relay = fd
                else:
                    os.close(fd)
            if not chunk:
                break
            data += chunk
        channel.close()
        return data, relay

    return read_assignment
