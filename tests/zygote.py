"""A pre-imported interpreter for the tests' command lines (conftest.run).

Every script here imports torch, torchvision and timm before it parses a
flag: about 5 s of CPU on the 2-core test machine, paid again by each of
the suite's hundreds of command lines. `serve` imports them once; each
command line's `python3` (the shim conftest puts first on PATH) is this
file's client, which hands its argv, folder, environment and stdin/stdout/
stderr to the server; the server forks, and the child runs the script as
`python3 SCRIPT ...` would (`__main__`, sys.argv, sys.path[0], exit status,
tracebacks, atexit), while the client waits, passes signals on and exits
as the child did (a child killed by a signal kills the client with it).

Anything the pre-imported modules could have read differently goes to a
fresh interpreter instead: interpreter options other than -u, an
environment that differs in what torch, OpenMP, CUDA or Python read at
import (PYTHONPATH, OMP_*, CUDA_*, LC_*, ...), or no server yet. Scripts
started any other way (sys.executable, torch's spawned ranks, torchrun's
workers) are fresh interpreters as before. SELFSUP_TEST_FRESH=1 turns the
server off for a run of the suite.
"""

import json
import os
import socket
import struct
import sys

# What the pre-imported modules read from the environment as they load.
# (Not KMP_*: those are Intel OpenMP's, and torch's wheel loads GNU OpenMP.)
SAME_AS_SERVER = ("PYTHON", "OMP_", "MKL_", "GOMP_", "OPENBLAS_", "CUDA_", "NVIDIA_", "TORCH", "PYTORCH")
SAME_AS_SERVER += ("LD_", "LC_", "LANG", "TIMM", "HF_", "KINETO", "NCCL_", "GLOO_")
# TORCHINDUCTOR_CACHE_DIR: torch sets it in its own process to the default it
# computes (an in-process torch.export does), which a fresh interpreter computes too.
MAY_DIFFER = {"PYTHONUNBUFFERED", "PYTHONFAULTHANDLER", "TORCHINDUCTOR_CACHE_DIR"}
FORWARDED = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT")


def import_env(env):
    found = {k: v for k, v in env.items() if k.startswith(SAME_AS_SERVER) and k not in MAY_DIFFER}
    if "PYTHONPATH" in found:  # "REPO" and "REPO:" put the same folders on sys.path
        found["PYTHONPATH"] = os.pathsep.join(p for p in found["PYTHONPATH"].split(os.pathsep) if p)
    return found


def _send(sock, obj, fds=()):
    data = json.dumps(obj).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(sock, [header + data], list(fds))
    else:
        sock.sendall(header + data)


def _recv(sock, with_fds=False):
    fds = []
    if with_fds:
        first, fds, _, _ = socket.recv_fds(sock, 1 << 16, 3)
    else:
        first = sock.recv(1 << 16)
    if len(first) < 4:
        return None, fds
    size = struct.unpack("!I", first[:4])[0]
    data = first[4:]
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            return None, fds
        data += more
    return json.loads(data), fds


# -- client -----------------------------------------------------------------------


def _fresh(argv):
    os.execv(sys.executable, [sys.executable, *argv])


def _forkable(argv):
    """(options, the rest) when the command is `[-u] SCRIPT|-m MOD|-c CODE ...`, else None."""
    options = []
    for i, a in enumerate(argv):
        if a == "-u":
            options.append(a)
        elif a in ("-m", "-c"):
            return (options, argv[i:]) if i + 1 < len(argv) else None
        elif a.startswith("-"):
            return None
        else:
            return options, argv[i:]
    return None


def client(argv):
    import signal

    path = os.environ.get("SELFSUP_TEST_ZYGOTE", "")
    expected = os.environ.get("SELFSUP_TEST_ZYGOTE_ENV", "")
    parts = _forkable(argv)
    if not path or parts is None or not os.path.exists(path):
        _fresh(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_TEST_ZYGOTE")}
    if json.dumps(import_env(env), sort_keys=True) != expected:
        _fresh(argv)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send(sock, {"argv": argv, "cwd": os.getcwd(), "env": env}, fds=(0, 1, 2))
        started, _ = _recv(sock)
    except OSError:
        started = None
    if not started:
        sock.close()
        _fresh(argv)
    child = started["pid"]

    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for name in FORWARDED:
        signal.signal(getattr(signal, name), forward)
    while True:
        try:
            ended, _ = _recv(sock)
            break
        except InterruptedError:
            continue
    if ended is None:  # the server went away
        sys.exit(1)
    status = ended["status"]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # the two no handler can take
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


# -- the child --------------------------------------------------------------------


def _streams(unbuffered):
    import io

    def writer(fd):
        raw = io.FileIO(fd, "w", closefd=False)
        tty = os.isatty(fd)
        return io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding="utf-8",
            errors="backslashreplace" if fd == 2 else "strict",
            line_buffering=tty or fd == 2,
            write_through=unbuffered,
        )

    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = sys.__stdout__ = writer(1)
    sys.stderr = sys.__stderr__ = writer(2)


def _exit_code(exc):
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_child(request, fds):
    import atexit
    import runpy
    import signal
    import tempfile
    import threading

    for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT", "SIGCHLD"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None
    options, rest = _forkable(request["argv"])
    _streams("-u" in options or bool(os.environ.get("PYTHONUNBUFFERED")))
    import numpy
    import torch

    # A fresh interpreter draws torch's and numpy's first seeds from the OS
    # (Python's random reseeds itself after a fork): so does every child.
    torch.seed()
    numpy.random.seed()
    code = 0
    try:
        try:
            if rest[0] == "-m":
                import multiprocessing.process

                multiprocessing.process.ORIGINAL_DIR = os.getcwd()
                sys.argv = [rest[1], *rest[2:]]
                sys.path[0] = os.getcwd()
                runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
            elif rest[0] == "-c":
                sys.argv = ["-c", *rest[2:]]
                sys.path[0] = ""
                exec(compile(rest[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            else:
                import multiprocessing.process

                # As the interpreter: __main__.__file__ absolute (3.9+), and the
                # folder multiprocessing resolves paths against is the command's.
                multiprocessing.process.ORIGINAL_DIR = os.getcwd()
                sys.argv = list(rest)
                sys.path[0] = os.path.dirname(os.path.abspath(rest[0]))
                runpy.run_path(os.path.abspath(rest[0]), run_name="__main__")
        finally:
            threading._shutdown()
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(code)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# -- server -----------------------------------------------------------------------


def serve(path):
    import selectors
    import signal
    import time

    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = f"{path}.{os.getpid()}"
    listener.bind(partial)
    listener.listen(64)
    os.rename(partial, path)  # clients see the socket only once it accepts
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children = {}  # pid -> the client's connection
    parent = os.getppid()
    while os.getppid() == parent:  # ends with the pytest worker that started it
        for key, _ in selector.select(timeout=0.05):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _recv(conn, with_fds=True)
                except OSError:
                    conn.close()
                    continue
                if request is None or len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    conn.close()
                    _run_child(request, fds)
                for fd in fds:
                    os.close(fd)
                _send(conn, {"pid": pid})
                children[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
            else:  # a client closed its end: killed before its child ended
                selector.unregister(key.fileobj)
                try:
                    os.kill(key.data, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    selector.unregister(conn)
                except (KeyError, ValueError):
                    pass
                try:
                    _send(conn, {"status": status})
                except OSError:
                    pass
                conn.close()
        time.sleep(0)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        client(sys.argv[1:])
