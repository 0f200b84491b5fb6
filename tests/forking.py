"""Run the CLI in a forked child (the package is already imported, so a run starts in milliseconds), with
faults injected: SIGKILL at the n-th call of a file operation or after some seconds, or a file-size limit
(``RLIMIT_FSIZE``: every write past it fails with ``EFBIG``, like a full disk). Linux only."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading


def _child(argv: list[str], kill: tuple[str, float] | None, fsize: int | None) -> int:
    import torch

    torch.set_num_threads(1)
    if kill is not None and kill[0] != "time":
        import tl_tunedlens.artifacts.files as files

        target = {"fsync": "_fsync", "replace": "replace"}[kill[0]]
        owner = files if kill[0] == "fsync" else files.os
        real, calls = getattr(owner, target), [0]

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] >= kill[1]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(owner, target, dying)
    if fsize is not None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    from tl_tunedlens.cli import main

    return main(argv)


def _drain(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        into.append(f.read())


def _wait(pid: int, seconds: float) -> bool:
    """Wait up to ``seconds`` for child ``pid`` to end (a pidfd poll, no sleeping); True if it ended."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


def run_forked(argv: list[str], *, kill: tuple[str, float] | None = None,
               fsize: int | None = None) -> tuple[int, str, str]:
    """Run ``tl_tunedlens.cli.main(argv)`` in a forked child; returns ``(status, stdout, stderr)``, the status
    being the exit code or ``-signal`` when killed. ``kill``: ``("fsync"|"replace", n)`` SIGKILLs it at its
    n-th call of that file operation (inside an atomic write), ``("time", s)`` after ``s`` seconds;
    ``fsize``: the child's file-size limit in bytes."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            os.close(out_r), os.close(err_r)
            os.dup2(out_w, 1), os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)   # not the test runner's capture objects
            sys.stderr = open(2, "w", closefd=False)
            code = _child(argv, kill, fsize)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    os.close(out_w), os.close(err_w)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=_drain, args=(fd, into)) for fd, into in ((out_r, out), (err_r, err))]
    for reader in readers:
        reader.start()
    if kill is not None and kill[0] == "time" and not _wait(pid, kill[1]):
        os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    for reader in readers:
        reader.join()
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, out[0].decode(errors="replace"), err[0].decode(errors="replace")
