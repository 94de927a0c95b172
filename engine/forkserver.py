"""A fork server: start each flow run as a fork of a process with the engine imported.

A fresh interpreter spends most of its start-up importing (the engine, nats,
msgspec, anyio). The fork server pays that once: ``python -m engine.forkserver
SOCKET`` imports everything, then waits for the runner on a unix socket. For
each run the runner asks it to fork; the child becomes a process of its own
(new session and process group, the run's environment and working folder,
fresh random state) and executes the run exactly as ``python -m engine``
would, importing the flow's own code itself. Runs stay isolated from each
other: nothing a run imports or changes reaches the server or another run.

Protocol (one JSON object per line, runner <-> server):

* runner: ``{"spawn": TOKEN, "env": {...}, "cwd": PATH|null}``
* server: ``{"spawned": TOKEN, "pid": PID}`` or ``{"spawned": TOKEN, "error": TEXT}``
* server: ``{"exited": PID, "code": CODE}`` (negative: killed by that signal)

The server forks from a single thread with no event loop running, which is
what makes forking safe. It exits when the runner's connection closes.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import sys

# Everything a run needs, imported once here, before any fork.
import anyio  # noqa: F401
import msgspec  # noqa: F401
import nats  # noqa: F401

import engine
import engine._execute
import engine._stack
import engine.client  # noqa: F401
import shared.settings  # noqa: F401

from ._main import main as run_main


def _child(env: dict[str, str], cwd: str | None) -> None:
    """In the forked child: become the run's own process, execute it, never return."""
    code = 1
    try:
        os.setsid()  # its own process group: a kill reaches its whole tree
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.environ.clear()
        os.environ.update(env)
        os.environ["SLUICE_RUNNER_PID"] = str(os.getppid())  # the server: we go with it
        if cwd:
            os.chdir(cwd)
            sys.path.insert(0, cwd)
        random.seed()
        code = run_main([])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # report, never fall back into the server's loop
        print(f"fork server child failed: {exc!r}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    listener.close()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when we stop
    buffer = b""

    def send(obj: dict[str, object]) -> None:
        conn.sendall(json.dumps(obj).encode() + b"\n")

    while True:
        ready, _, _ = select.select([conn.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})
        if conn.fileno() in ready:
            chunk = conn.recv(65536)
            if not chunk:
                return  # the runner is gone
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                token = request.get("spawn")
                try:
                    pid = os.fork()
                except OSError as exc:
                    send({"spawned": token, "error": str(exc)})
                    continue
                if pid == 0:
                    conn.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(dict(request.get("env") or {}), request.get("cwd"))
                send({"spawned": token, "pid": pid})


if __name__ == "__main__":
    serve(sys.argv[1])
