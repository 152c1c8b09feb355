"""support/workers.py: run a function that may not finish (sympy on a hostile answer) in worker
processes that are killed at a deadline.

sympy can run for minutes or eat gigabytes on an answer such as 10^{10^{10}}, and a thread cannot
be stopped, so the graders (support/math_grader.py's Math-Verify comparisons, support/paper_eval.py's
official graders) run each comparison in a worker process that is killed when it misses its
deadline. A worker is a plain `python -I` child that imports its module once (about a second) and
then answers one JSON request per line on its stdin with one line, so it works the same from any
thread of any caller (multiprocessing's spawn/forkserver would re-run the caller's __main__ in
every worker; forking a multi-threaded trainer is unsafe). Idle workers are kept for the next call;
they are our own trusted code, they exit when our end of their stdin closes, and atexit kills any
that remain.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: workers import from it
START_TIMEOUT = 60.0  # seconds a worker may take to say "ready" (importing sympy on a loaded 2-core machine)
MEMORY_LIMIT = 2 << 30  # bytes of address space per worker: sympy on 10^{10^{10}} stops at 2 GiB
# A worker's command line: the module and function that serve requests. The marker lets the
# sandbox tests tell these trusted workers from processes a test program left behind.
MARKER = "support.workers.serve"
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
         f"getattr(importlib.import_module(sys.argv[2]), sys.argv[3])()  # {MARKER}")


class NoVerdict(Exception):
    """A verifier that failed to decide (not a wrong answer): `kind` "timeout" (it ran out of
    time) or "crash" (a worker or a sandbox died or never started). verify.score_batch counts
    these per kind; the single-sample functions score them as wrong."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def serve(answer, warm_up=None) -> None:
    """The worker's loop (call it from the function a Pool names): cap the address space, run
    `warm_up()` (the slow imports, so that a request's time is its own), say "ready", then for
    each JSON request line on stdin write `answer(request)` (a string without newlines) as one line."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    replies = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # nothing but replies may reach the pipe
    if warm_up is not None:
        warm_up()
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        replies.write(answer(json.loads(line)) + "\n")
        replies.flush()


class Pool:
    """Worker processes running `module`.`function` (which calls serve), shared by every caller:
    a caller borrows an idle worker (or starts one), sends one request, and gets the reply back,
    or kills the worker when the deadline passes. There are never more workers than concurrent
    callers."""

    def __init__(self, module: str, function: str, what: str):
        self.module, self.function, self.what = module, function, what  # what: for messages
        self._boot = _BOOT  # (a test can make a worker that cannot start)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live: set = set()
        atexit.register(self.close)

    def ask(self, request, timeout: float) -> str:
        """The reply line (without its newline) to `request`; NoVerdict when none came within
        `timeout` seconds (the worker is killed) or the worker died."""
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            worker = self._start()
        try:
            worker.stdin.write((json.dumps(request) + "\n").encode())
            worker.stdin.flush()
            reply = _read_line(worker, time.monotonic() + timeout)
        except OSError:  # BrokenPipeError: the worker had died
            reply = ""
        if not reply:
            self._kill(worker)
            raise NoVerdict("timeout" if reply is None else "crash", f"a {self.what} worker " + (
                f"gave no verdict in {timeout:.1f} s" if reply is None else "died"))
        self._idle.put(worker)
        return reply.rstrip("\n")

    def _start(self) -> subprocess.Popen:
        worker = subprocess.Popen(
            [sys.executable, "-I", "-c", self._boot, ROOT, self.module, self.function],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)  # a Ctrl-C meant for us does not kill it mid-reply
        with self._lock:
            self._live.add(worker)
        reply = _read_line(worker, time.monotonic() + START_TIMEOUT)
        if reply != "ready\n":
            self._kill(worker)
            raise NoVerdict("timeout" if reply is None else "crash", f"a {self.what} worker " + (
                f"did not start in {START_TIMEOUT:.0f} s" if reply is None else "died while starting"))
        return worker

    def _kill(self, worker: subprocess.Popen) -> None:
        worker.kill()
        worker.wait()
        worker.stdin.close()
        worker.stdout.close()
        with self._lock:
            self._live.discard(worker)

    def close(self) -> None:
        """Kill every worker (at exit, or a test's own pool)."""
        with self._lock:
            workers = list(self._live)
        for worker in workers:
            self._kill(worker)
        while not self._idle.empty():
            self._idle.get_nowait()


def _read_line(process: subprocess.Popen, deadline: float) -> str | None:
    """One line from a worker's stdout; None if it did not come before `deadline`, "" if the
    worker died first."""
    fd = process.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:  # the worker died (e.g. out of memory)
            return ""
        data += chunk
    return data.decode()
