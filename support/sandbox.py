"""support/sandbox.py: run an untrusted program on one test, jailed, and say what happened.

The code verifier (verify.py) runs every test of every sampled program, and a policy under RL
will try whatever earns reward, so each run is contained: a fresh `python -I` process with
resource limits and an audit hook, inside a bubblewrap jail where bwrap works. docs/sandbox.md
says what this stops and what it does not.
"""
from __future__ import annotations

import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

logger = logging.getLogger(__name__)

_JAIL_START_TIMEOUT = 60.0  # seconds a jailed python may take to start on a loaded machine

# [PR] ran programs in a multiprocessing child with APPS' reliability_guard (destructive
# os functions set to None), a signal.alarm of 5 s per test and no memory limit. Here each
# test runs in a fresh `python -I` process (isolated mode: no PYTHON* variables, no user
# site, no script directory on sys.path) in its own temporary directory and its own
# session, so one os.killpg reaches everything it started. When the machine has
# bubblewrap, that process runs inside a bwrap jail (below: its own namespaces, nothing of
# the file system but the Python installation, read-only, and a size-capped scratch
# directory). The prelude below runs first in that process: it sets resource limits, says
# on a pipe of its own that the sandbox is up, installs an audit hook that kills the process
# (exit code _REFUSED) on any refused action, then runs the program. In the jail the hook is
# a second line; without it, the only one, and a tripwire rather than a boundary
# (docs/sandbox.md).
#
# What decides a test never enters the program's process: the expected output stays here,
# and what the program produces crosses back as plain data (its stdout; a returned value as
# JSON; a LeetCode expression's value as a Python literal of builtin types) that verify.py
# compares. So the program can make its own output say anything, but it cannot learn the
# answer from the judge, nor claim a pass: no channel it can write to carries a verdict.

_REFUSED = 86                  # exit code of a process whose audit hook refused an action
_MEMORY_LIMIT = 1 << 30        # RLIMIT_AS per test program: 1 GiB of address space
_FILE_SIZE_LIMIT = 16 << 20    # RLIMIT_FSIZE: no file written bigger than 16 MiB
_OPEN_FILES_LIMIT = 64         # RLIMIT_NOFILE
DISK_LIMIT = 64 << 20          # bytes a jailed test may write in all (its directory is a tmpfs of this
                               # size: memory, freed when the test ends); past it a write fails
                               # (ENOSPC). Unjailed, nothing caps the total
_OUTPUT_LIMIT = 16 << 20       # bytes of stdout read; past it the test fails and the program is
                               # killed at once (no test expects that much; waiting for the
                               # timeout while draining would only burn CPU)

# Names pre-imported for the program (one block per judge of verify.py), as LeetCode's judge and
# [PR]'s testing_util (which prepends a block of imports) provide: `List[int]` annotations must not be a NameError.
_PREAMBLE = """\
import sys, math, collections, itertools, functools, heapq, bisect, string, re
from typing import *
from collections import Counter, defaultdict, deque, OrderedDict
from functools import lru_cache, cache, reduce
from itertools import accumulate, product, permutations, combinations
from heapq import heappush, heappop, heapify
from bisect import bisect_left, bisect_right
from math import gcd, inf, sqrt, ceil, floor, log, log2
"""
# The benchmark judges' own blocks: lcb_runner's `import_string` (testing_util.py), and
# [PR]'s LeetCode IMPORT_HELPER["python"] (eval/utils/evaluation_leetcode.py; numpy only
# where it is installed).
_LCB_PREAMBLE = """\
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics
import itertools, functools, operator, io, sys, json
sys.setrecursionlimit(50000)
"""
_LEETCODE_PREAMBLE = """\
import math, re, sys, copy, datetime, itertools, collections, heapq, functools, hashlib, string
try:
    import numpy
    import numpy as np
except ImportError:
    pass
from typing import *
from collections import *
from functools import *
"""
PREAMBLES = {"apps": _PREAMBLE, "livecodebench": _LCB_PREAMBLE, "leetcode": _LEETCODE_PREAMBLE}

_PRELUDE = r'''
import os, resource, sys


def main(mode, fn_name, cpu_seconds, memory, file_size, open_files, refused_code, started_fd, preamble):
    for limit, value in ((resource.RLIMIT_CPU, int(cpu_seconds)), (resource.RLIMIT_AS, int(memory)),
                         (resource.RLIMIT_FSIZE, int(file_size)), (resource.RLIMIT_NOFILE, int(open_files)),
                         (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    with open("solution.py") as f:
        source = f.read()
    if mode != "stdio":                            # call: the arguments as JSON; script: the test script
        given = sys.stdin.read()
        result_fd = os.dup(1)                      # results go here; the program's own prints go
        devnull = os.open(os.devnull, os.O_WRONLY) # to /dev/null
        os.dup2(devnull, 1)
        os.close(devnull)
    os.write(int(started_fd), b"1")                # the sandbox is up: what follows is the program's
    os.close(int(started_fd))
    sys.addaudithook(guard(os.path.realpath(os.getcwd()), int(refused_code)))
    namespace = {"__name__": "__main__" if mode == "stdio" else "solution", "__builtins__": __builtins__}
    exec(preamble, namespace)
    exec(compile(source, "solution.py", "exec"), namespace)
    if mode == "call":
        import json
        sys.stdin = open(os.devnull)
        solution = namespace.get("Solution")
        if isinstance(solution, type) and hasattr(solution, fn_name):   # LeetCode style
            function = getattr(solution(), fn_name)
        else:
            function = namespace[fn_name]
        result = json.dumps(function(*json.loads(given)))  # a non-JSON result (any object) fails here
        os.write(result_fd, result.encode())
    elif mode == "script":                         # LeetCode: the problem's test script, its asserts
        namespace["__report__"] = lambda value: os.write(result_fd, (literal(value) + "\n").encode())
        exec(compile(given, "tests.py", "exec"), namespace)  # turned into __report__(<expression>) calls


def literal(value):
    # A value as a Python literal that ast.literal_eval reads back, for builtin types only: an
    # object of the program's own class (say, one whose __eq__ is always true) is an error here.
    kind = type(value)
    if kind in (bool, int, str, bytes, type(None)):
        return repr(value)
    if kind is float:
        return {float("inf"): "1e999", float("-inf"): "-1e999"}.get(value, repr(value))
    if kind is list or kind is tuple:
        items = ", ".join(map(literal, value)) + ("," if kind is tuple and len(value) == 1 else "")
        return ("[%s]" if kind is list else "(%s)") % items
    if kind is set:
        return "{%s}" % ", ".join(map(literal, value)) if value else "set()"
    if kind is dict:
        return "{%s}" % ", ".join(literal(k) + ": " + literal(v) for k, v in value.items())
    numpy = sys.modules.get("numpy")               # numpy's scalars equal Python's numbers
    if numpy is not None and isinstance(value, numpy.generic):
        return literal(value.item())
    raise TypeError("a result of type %s is not plain data" % kind.__name__)


def guard(root, refused_code, _exit=os._exit, write=os.write, realpath=os.path.realpath):
    # The audit hook. What it uses is bound here, not looked up in a module the program can
    # change; it still is a tripwire, not a boundary (docs/sandbox.md).
    own_pid = str(os.getpid())
    always = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                        "subprocess.Popen", "os.killpg", "os.link", "os.symlink", "resource.setrlimit",
                        "resource.prlimit", "pty.spawn"})
    paths = {"os.remove": (0,), "os.rmdir": (0,), "shutil.rmtree": (0,), "os.rename": (0, 1),
             "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.mkdir": (0,),
             "os.utime": (0,), "os.chflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,)}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def refuse(event):
        write(2, ("sandbox: refused " + event + "\n").encode())
        _exit(refused_code)

    def inside(path):
        if isinstance(path, int):
            return False
        real = realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)

    def hook(event, args):
        if event in always or event.startswith("socket."):
            refuse(event)
        elif event.startswith("ctypes."):
            if not (event == "ctypes.dlopen" and args[0] is None):  # numpy's import opens itself
                refuse(event)
        elif event == "os.kill":
            if str(args[0]) != own_pid:
                refuse(event)
        elif event in paths:
            if not all(inside(args[i]) for i in paths[event]):
                refuse(event)
        elif event == "open":
            path, mode_, flags = args
            if isinstance(path, int):
                return
            name = os.fsdecode(path)
            parts = realpath(name).split(os.sep)
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != own_pid:
                refuse("open " + name)             # another process's environ, memory, fds
            writing = (flags or 0) & write_flags or any(c in (mode_ or "") for c in "wax+")
            if writing and name not in (os.devnull, "/dev/stdout", "/dev/stderr") and not inside(name):
                refuse("open for writing " + name)
            if os.path.isdir(name) and not inside(name):  # a dir_fd outside would let relative
                refuse("open directory " + name)           # paths in os.open(dir_fd=) escape
    return hook


main(*sys.argv[1:])
'''

# The child's whole environment: no inherited variables, so no inherited secrets.
_CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----- the jail: bubblewrap ---------------------------------------------------------------
# bwrap (https://github.com/containers/bubblewrap, Debian package `bubblewrap`) starts a
# command in new namespaces without a daemon or root. Ours:
#   --unshare-all      user, pid, network, ipc, uts and cgroup namespaces: no network at all
#                      (only a loopback of its own), and the program sees its own processes only;
#   a new root         an empty tmpfs holding read-only binds of /usr (+ the /bin, /lib ... links
#                      or directories) and of the Python installation, a fresh /proc and a
#                      minimal /dev (read-only: its tmpfs has no size cap), and at the test's
#                      directory a fresh tmpfs of DISK_LIMIT bytes holding a read-only bind of
#                      solution.py: the only writable place, so a test can fill at most
#                      DISK_LIMIT bytes (of memory; nothing of the host's disk) and its files
#                      vanish with it. Nothing else of the host (no home directory, no training
#                      data, no other test's directory), and after --remount-ro / nothing else
#                      writable;
#   --cap-drop ALL     no capabilities inside, even when we run as root;
#   --new-session      no access to a controlling terminal (TIOCSTI);
#   --die-with-parent  the jail is killed if the thread that started it dies;
#   --as-pid-1         the test program itself is the jail's pid 1. (bwrap's own pid-1 reaper
#                      would outlive bwrap by a moment at every exit and be left to the host's
#                      init as a zombie, and that init may be the trainer, in a container.)
#   --info-fd          bwrap reports the host pid of the jail's pid 1. Killing that process
#                      ends the whole pid namespace, including anything that left our process
#                      group with setsid(); bwrap, its parent, then reaps it and exits.
# It adds a few ms to a test's ~50-60 ms (docs/sandbox.md; benchmarks/bench_verify.py measures
# it). Where bwrap is missing or cannot create namespaces (no unprivileged user namespaces, a
# restrictive container seccomp filter) the probe below fails once, we log one warning per
# process, and tests run unjailed.

_BWRAP = shutil.which("bwrap")
_jail_lock = threading.Lock()
_jail_state: bool | None = None  # None: not probed yet in this process


def _jail_argv(workdir: str, info_fd: int | None = None) -> list[str]:
    """The bwrap command line (to be followed by the command) for a test in `workdir`."""
    argv = [_BWRAP, "--unshare-all", "--cap-drop", "ALL", "--new-session", "--die-with-parent",
            "--as-pid-1"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.abspath(sys.executable)),
              os.path.dirname(os.path.realpath(sys.executable))}
    bound: list[str] = []
    for path in ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", *sorted(python)]:
        if any(path == top or path.startswith(top + os.sep) for top in bound):
            continue
        if os.path.islink(path) and os.path.dirname(path) == "/":  # merged /usr: /bin -> usr/bin
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
            bound.append(path)
    solution = os.path.join(workdir, "solution.py")  # bind sources are the host's paths
    return argv + ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",  # where shared libraries are
                   "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
                   "--size", str(DISK_LIMIT), "--tmpfs", workdir, "--ro-bind", solution, solution,
                   "--chdir", workdir, "--remount-ro", "/"]


def jail_works() -> bool:
    """Can this process jail its tests? Probed once (a jailed `python -I` must start and
    print); on failure, one warning and the unjailed sandbox for the rest of the process."""
    global _jail_state
    with _jail_lock:
        if _jail_state is None:
            reason = "bubblewrap (bwrap) is not installed" if _BWRAP is None else _jail_probe_failure()
            _jail_state = reason is None
            if reason:
                logger.warning("verify: %s; code tests run without a jail, under resource limits and an "
                               "audit hook, a tripwire against accidents and not a security boundary: "
                               "a hostile program can get past it (docs/sandbox.md)", reason)
    return _jail_state


def _jail_probe_failure() -> str | None:
    """None if a jailed Python runs, else why not."""
    workdir = tempfile.mkdtemp(prefix="prime_verify_")
    try:
        open(os.path.join(workdir, "solution.py"), "w").close()
        result = subprocess.run([*_jail_argv(workdir), sys.executable, "-I", "-c", "print('jailed')"],
                                capture_output=True, env=_CHILD_ENV, timeout=_JAIL_START_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap did not run ({error})"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result.returncode != 0 or result.stdout != b"jailed\n":
        message = result.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap is installed but cannot jail ({message[-1] if message else result.returncode})"
    return None


def run(source: str, mode: str, fn_name: str | None, stdin: bytes, timeout: float,
        preamble: str = _PREAMBLE) -> tuple[str, bytes]:
    """Run one program on one input (mode "stdio", "call" or "script": see the prelude),
    after `preamble`. Returns (status, stdout) with status one of
    "ok" (exit code 0), "error" (non-zero exit, e.g. an exception), "refused" (the audit
    hook stopped it), "timeout", "output_limit", or, when the program never started, the
    verifier's own failure: "start_timeout" (the sandbox was not up before the deadline: an
    overloaded machine) or "start_failed" (bwrap or Python died first, or could not be
    launched). The jail (if any) and the process group are killed and the temporary directory
    removed before this returns, whatever happened."""
    workdir = tempfile.mkdtemp(prefix="prime_verify_")
    info_read = info_write = jail_pidfd = None
    started_read, started_write = os.pipe()  # the prelude writes one byte here when it is up
    try:
        with open(os.path.join(workdir, "solution.py"), "w") as f:
            f.write(source)
        with open(os.path.join(workdir, "stdin"), "wb") as f:
            f.write(stdin)
        env = dict(_CHILD_ENV, HOME=workdir, TMPDIR=workdir)
        limits = [str(math.ceil(timeout) + 1), str(_MEMORY_LIMIT), str(_FILE_SIZE_LIMIT),
                  str(_OPEN_FILES_LIMIT), str(_REFUSED), str(started_write)]
        command = [sys.executable, "-I", "-c", _PRELUDE, mode, fn_name or "", *limits, preamble]
        if jail_works():
            info_read, info_write = os.pipe()
            command = _jail_argv(workdir, info_write) + command
        try:
            with open(os.path.join(workdir, "stdin"), "rb") as stdin_file:
                process = subprocess.Popen(
                    command, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    cwd=workdir, env=env, start_new_session=True, close_fds=True,
                    pass_fds=(started_write,) if info_write is None else (started_write, info_write))
        except OSError as error:  # no process could be made (EAGAIN, ENOMEM)
            logger.warning("sandbox: could not launch a test: %s", error)
            return "start_failed", b""
        os.close(started_write)
        started_write = None
        deadline = time.monotonic() + timeout
        try:
            if info_read is not None:
                os.close(info_write)
                info_write = None
                jail_pidfd = _jail_pid1(info_read, deadline)
            status, output = _collect(process, deadline)
        finally:
            _kill_group(process, jail_pidfd)
        if status is None:
            status = {0: "ok", _REFUSED: "refused"}.get(process.returncode, "error")
        os.set_blocking(started_read, False)  # every writer is gone: a byte, or end of file
        try:
            started = os.read(started_read, 1) == b"1"
        except BlockingIOError:
            started = False
        if not started:
            return ("start_timeout" if status == "timeout" else "start_failed"), b""
        return status, output
    finally:
        for fd in (info_read, info_write, started_read, started_write):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _jail_pid1(info_read: int, deadline: float) -> int | None:
    """A pidfd for the jail's pid 1, from bwrap's --info-fd report ({"child-pid": N, ...},
    written and closed as soon as the namespaces exist); None if none came. The pidfd is
    opened at once, while that process is certainly alive, so it cannot name a reused pid."""
    report = b""
    poller = select.poll()
    poller.register(info_read, select.POLLIN)
    while (remaining := deadline - time.monotonic()) > 0 and poller.poll(remaining * 1000):
        chunk = os.read(info_read, 4096)
        if not chunk:
            break
        report += chunk
    try:
        return os.pidfd_open(json.loads(report)["child-pid"])
    except (ValueError, KeyError, TypeError, OSError):  # no report, or pid 1 already gone
        return None


def _collect(process: subprocess.Popen, deadline: float) -> tuple[str | None, bytes]:
    """Read stdout until EOF and wait for the exit, both before `deadline`. The child is
    left unreaped (os.waitid WNOWAIT) so that its process group id cannot be reused before
    _kill_group runs. Returns (None, output) on a normal exit, else a failure status."""
    fd = process.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, size = [], 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout", b"".join(chunks)
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > _OUTPUT_LIMIT:
            return "output_limit", b""
        chunks.append(chunk)
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:  # closed stdout but kept running
            return "timeout", b"".join(chunks)
        time.sleep(0.002)
    return None, b"".join(chunks)


def _kill_group(process: subprocess.Popen, jail_pidfd: int | None = None) -> None:
    """SIGKILL the jail's pid 1 (the kernel then kills every process in the jail) and let
    bwrap reap it and exit; SIGKILL the child's whole process group; reap the child."""
    if jail_pidfd is not None:
        try:
            signal.pidfd_send_signal(jail_pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(jail_pidfd)
        deadline = time.monotonic() + 1.0  # bwrap exits within milliseconds of its child
        while (os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
               and time.monotonic() < deadline):
            time.sleep(0.002)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    process.stdout.close()


_PROC_CGROUP, _CGROUP_ROOT = "/proc/self/cgroup", "/sys/fs/cgroup"  # where cgroup v2 says what we may use


def usable_cpus() -> int:
    """The CPUs this process may actually use: those of its affinity mask (taskset, a container's
    cpuset), fewer under a cgroup v2 CPU quota (cpu.max "QUOTA PERIOD" allows QUOTA/PERIOD CPUs'
    worth of time, in this cgroup or any above it; rounded down), at least 1. os.cpu_count() counts the
    machine's CPUs, which a container or a job scheduler may not give us."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open(_PROC_CGROUP) as f:  # cgroup v2: the one line "0::/path"
            path = next(line[3:].strip() for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return max(1, cpus)
    while True:
        try:
            with open(os.path.join(_CGROUP_ROOT, path.lstrip("/"), "cpu.max")) as f:
                quota, period = f.read().split()
            if quota != "max":
                cpus = min(cpus, int(quota) // int(period))
        except (OSError, ValueError):
            pass
        if path in ("", "/"):
            return max(1, cpus)
        path = os.path.dirname(path)
