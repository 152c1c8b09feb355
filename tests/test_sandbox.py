"""support/sandbox.py under attack: each attack fails, the test process is unharmed, nothing is
left running, nothing is written outside the program's temporary directory. Every attack runs
twice (the sandbox_root fixture, tests/conftest.py): in the bwrap jail (skipped where bubblewrap
cannot jail) and without it.

Adversarial programs run with short timeouts (1-2 s); the whole file should take well under a
minute on 2 cores.
"""
import errno
import json
import logging
import os
import signal
import socket
import sys
import time

import pytest

import verify
from support import sandbox
from tests.test_verify import DOUBLE


def _attack(source: str, timeout: float = 2.0, stdin: bytes = b""):
    start = time.monotonic()
    status, output = sandbox.run(source, "stdio", None, stdin, timeout)
    return status, output, time.monotonic() - start


def test_infinite_loop_times_out(sandbox_root):
    status, _, seconds = _attack("while True:\n    pass", timeout=1.0)
    assert status == "timeout" and seconds < 3
    assert verify.code_score("while True:\n    pass", DOUBLE, timeout=1.0) == 0.0


def test_sleeping_child_after_closing_stdout_times_out(sandbox_root):
    status, _, seconds = _attack("import os, time\nos.close(1)\ntime.sleep(30)", timeout=1.0)
    assert status == "timeout" and seconds < 3


def test_memory_bomb_fails(sandbox_root):
    status, _, seconds = _attack("x = bytearray(8 * 1024**3)\nprint('allocated')")
    assert status == "error" and seconds < 3
    status, _, _ = _attack("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024**2))", timeout=10)
    assert status == "error"  # (filling 1 GiB can take seconds on a loaded machine)


def test_fork_bomb_is_refused(sandbox_root):
    assert _attack("import os\nwhile True:\n    os.fork()")[0] == "refused"
    assert _attack("import multiprocessing as mp\nmp.Process(target=print).start()")[0] == "refused"


@pytest.mark.parametrize("source", [
    "import os\nos.system('echo pwned')",
    "import subprocess\nsubprocess.run(['echo', 'pwned'])",
    "import os\nos.execv('/bin/echo', ['echo', 'pwned'])",
    "import os\nos.posix_spawn('/bin/echo', ['echo'], {})",
    "import socket\nsocket.create_connection(('127.0.0.1', 80))",
    "import ctypes\nctypes.CDLL('libc.so.6').system(b'echo pwned')",
    "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
])
def test_escapes_are_refused(sandbox_root, source):
    status, output, _ = _attack(source)
    assert status == "refused" and b"pwned" not in output


def test_the_hook_cannot_be_switched_off_by_name(sandbox_root):
    # The prelude's names are not the hook's: rebinding them changes nothing (a tripwire still:
    # docs/sandbox.md says what pure Python gets past).
    source = ("import os, sys\nsys.modules['__main__'].refuse = lambda event: None\n"
              "os._exit = lambda code: None\nos.system('true')\nprint('ran')")
    status, output, _ = _attack(source)
    assert status == "refused" and b"ran" not in output


def test_refusal_counts_even_if_the_program_catches_it(sandbox_root):
    source = "import os\ntry:\n    os.system('true')\nexcept BaseException:\n    pass\nprint(6)"
    assert verify.code_score(source, {"inputs": [""], "outputs": ["6"]}) == 0.0


def test_killing_the_parent_is_refused(sandbox_root):
    status, _, _ = _attack("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert status == "refused"
    status, _, _ = _attack("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)")
    assert status == "refused"
    assert os.getpid() > 0  # and we are still here to say so


def test_writing_or_deleting_outside_is_refused(sandbox_root, tmp_path):
    target = tmp_path / "outside.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for source in (f"open({str(target)!r}, 'w').write('x')",
                   f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                   f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
                   f"import os\nos.remove({str(victim)!r})",
                   f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                   f"import os\nos.rename({str(victim)!r}, 'stolen')",
                   # a directory fd outside would make relative paths escape
                   f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
                   f"os.close(os.open('outside.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))"):
        assert _attack(source)[0] == "refused", source
    assert not target.exists() and victim.read_text() == "keep me"
    # Inside its own directory a program may write, read back and delete.
    inside = "open('scratch', 'w').write('4')\nprint(open('scratch').read())\nimport os\nos.remove('scratch')"
    assert _attack(inside)[:2] == ("ok", b"4\n")


def test_environment_secrets_are_not_visible(sandbox_root, monkeypatch):
    monkeypatch.setenv("PRIME_FAKE_SECRET", "hunter2")
    peek = "import os\nprint(os.environ.get('PRIME_FAKE_SECRET', 'none'))"
    assert verify.code_score(peek, {"inputs": [""], "outputs": ["none"]}) == 1.0
    assert verify.code_score(peek, {"inputs": [""], "outputs": ["hunter2"]}) == 0.0
    # The parent's initial environment in /proc is out of reach too.
    status, output, _ = _attack("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())")
    assert status == "refused" and b"PATH" not in output


def test_exit_before_printing_fails(sandbox_root):
    tests = {"inputs": ["3\n"], "outputs": ["6\n"]}
    assert verify.code_score("import os\nos._exit(0)\nprint(6)", tests) == 0.0
    assert verify.code_score("print(6)\nimport sys\nsys.exit(3)", tests) == 0.0


def test_output_flood_is_cut_off(sandbox_root):
    status, output, seconds = _attack("while True:\n    print('x' * 100000)", timeout=5.0)
    assert status == "output_limit" and output == b"" and seconds < 4


def test_ordinary_libraries_still_work(sandbox_root):
    pytest.importorskip("numpy")  # the program imports it
    source = "import numpy as np, threading\nt = threading.Thread(target=lambda: None)\nt.start()\nprint(np.arange(4).sum())"
    assert _attack(source)[:2] == ("ok", b"6\n")


# ----------------------------------------------------------------------------------------
# What only the jail stops. Where the audit hook would stop an attack too, the hook is taken
# out of the prelude for the test, as for code that gets past it (a C extension, a CPython
# bug): the jail alone must hold.
# ----------------------------------------------------------------------------------------

jail_only = pytest.mark.parametrize("sandbox_root", ["jail"], indirect=True)


def _without_audit_hook(monkeypatch):
    hook = "sys.addaudithook(guard(os.path.realpath(os.getcwd()), int(refused_code)))"
    assert hook in sandbox._PRELUDE
    monkeypatch.setattr(sandbox, "_PRELUDE", sandbox._PRELUDE.replace(hook, "pass"))


@jail_only
def test_jail_hides_files_outside_its_directory(sandbox_root, tmp_path):
    other = tmp_path / "other_problem_tests.json"     # readable by the trainer, not by the jail
    other.write_text('{"inputs": ["secret input"], "outputs": ["secret output"]}')
    status, output, _ = _attack(f"print(open({str(other)!r}).read())")
    assert status == "error" and b"secret" not in output
    status, output, _ = _attack(f"print(open({verify.__file__!r}).read())")
    assert status == "error" and output == b""
    # At the top of its file system: only what Python needs and the way to its directory.
    status, output, _ = _attack("import os\nprint(' '.join(os.listdir('/')))")
    needed = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev"}
    needed |= {path.split(os.sep)[1] for path in (sys.prefix, sys.base_prefix, str(sandbox_root))}
    assert status == "ok" and set(output.decode().split()) <= needed


@jail_only
def test_jail_hides_other_processes(sandbox_root):
    status, output, _ = _attack("import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()), os.getppid())")
    assert (status, output) == ("ok", b"['1'] 0\n")  # itself, as pid 1; its parent is outside


@jail_only
def test_jail_has_no_network(sandbox_root, monkeypatch):
    _without_audit_hook(monkeypatch)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        source = ("import socket\ntry:\n"
                  f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                  "    print('connected')\nexcept OSError:\n    print('no network')")
        assert _attack(source)[:2] == ("ok", b"no network\n")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached our listener


@jail_only
def test_jail_allows_writes_only_in_its_directory(sandbox_root, tmp_path, monkeypatch):
    _without_audit_hook(monkeypatch)
    targets = [str(tmp_path / "outside.txt"), "/outside.txt", "/usr/outside.txt",
               f"/tmp/prime_outside_{os.getpid()}.txt", "/dev/outside.txt", "/dev/shm/outside.txt"]
    source = (f"for path in {targets!r} + ['inside.txt']:\n"
              "    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
              "    except OSError:\n        print('blocked', path)")
    status, output, _ = _attack(source)
    assert status == "ok"
    assert output.decode().splitlines() == [f"blocked {path}" for path in targets] + ["wrote inside.txt"]
    assert not any(os.path.exists(path) for path in targets)


@jail_only
def test_jail_caps_the_bytes_a_test_writes(sandbox_root):
    # Its directory is a tmpfs of DISK_LIMIT bytes (none of the host's disk): writing on past it
    # fails, and a program that needs more fails its test.
    source = ("import os\nstats = os.statvfs('.')\nprint(stats.f_blocks * stats.f_frsize)\nwritten = 0\n"
              "try:\n    for i in range(8):\n        with open(f'file{i}', 'wb') as f:\n"
              "            for _ in range(16):\n                f.write(b'x' * (1 << 20))\n"
              "                f.flush()\n                written += 1 << 20\n"
              "except OSError as error:\n    print(written, error.errno)")
    status, output, _ = _attack(source, timeout=10)
    capacity, result = output.decode().split("\n")[:2]
    written, error = map(int, result.split())
    assert status == "ok" and int(capacity) == sandbox.DISK_LIMIT
    assert sandbox.DISK_LIMIT - (1 << 20) <= written <= sandbox.DISK_LIMIT and error == errno.ENOSPC
    greedy = "for i in range(5):\n    open(f'file{i}', 'wb').write(b'x' * (16 << 20))\nprint(2 * int(input()))"
    assert verify.code_score(greedy, DOUBLE, timeout=10) == 0.0


@jail_only
def test_jail_kills_processes_that_left_the_group(sandbox_root, monkeypatch):
    # With the hook out of the way a program can fork, leave our process group with
    # setsid() and outlive the call; in the jail it dies with the jail's pid 1.
    _without_audit_hook(monkeypatch)
    marker = b"sleep\x0031.4159\x00"
    source = ("import os\nif os.fork() == 0:\n    os.setsid()\n"
              "    os.execv('/usr/bin/sleep', ['sleep', '31.4159'])\n"
              "import time\ntime.sleep(0.3)\nprint('parent done')")
    assert _attack(source)[:2] == ("ok", b"parent done\n")
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == marker:
                    survivors.append(int(pid))
        except OSError:
            continue
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def test_no_jail_warns_once_per_process(monkeypatch, caplog):
    for bwrap in (None, "/bin/false"):  # not installed; installed but cannot create namespaces
        monkeypatch.setattr(sandbox, "_BWRAP", bwrap)
        monkeypatch.setattr(sandbox, "_jail_state", None)
        with caplog.at_level(logging.WARNING, logger="support.sandbox"):
            caplog.clear()
            assert sandbox.jail_works() is False and sandbox.jail_works() is False
        assert len(caplog.records) == 1 and "without a jail" in caplog.text
        assert "a tripwire against accidents and not a security boundary" in caplog.text
    # and the fallback still judges
    assert verify.code_score("print(2 * int(input()))", DOUBLE) == 1.0



def test_training_on_code_needs_the_jail_or_an_explicit_flag(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import train
    from tests.tiny import toy_config
    from toy import task as toy
    tok = toy.build_toy_tokenizer(str(tmp_path / "tokenizer"))
    toy_cfg = train.settings([])[1]

    def data_file(name, ability, truth):
        row = {"data_source": "test", "prompt": [{"role": "user", "content": "Double it."}], "ability": ability,
               "reward_model": {"style": "rule", "ground_truth": truth}, "extra_info": {"split": "train", "index": 0}}
        pq.write_table(pa.Table.from_pylist([row]), str(tmp_path / name))
        return str(tmp_path / name)

    code, maths = data_file("code.parquet", "code", json.dumps(DOUBLE)), data_file("math.parquet", "math", "6")
    monkeypatch.setattr(sandbox, "_jail_state", False)  # no working jail
    with pytest.raises(SystemExit, match="the data has code problems, and the bwrap jail cannot run here.*"
                                         "--allow_unjailed_code=true"):
        train.load_problems(toy_config(train_files=code), toy_cfg, tok)
    with pytest.raises(SystemExit, match="--allow_unjailed_code=true"):  # code in the held-out set only
        train.load_problems(toy_config(train_files=maths, eval_files=code), toy_cfg, tok)
    allowed, _ = train.load_problems(toy_config(train_files=code, allow_unjailed_code=True), toy_cfg, tok)
    assert [p.ability for p in allowed] == ["code"]
    assert len(train.load_problems(toy_config(train_files=maths), toy_cfg, tok)[0]) == 1  # math needs no jail
    monkeypatch.setattr(sandbox, "_jail_state", True)
    assert len(train.load_problems(toy_config(train_files=code), toy_cfg, tok)[0]) == 1


def test_usable_cpus_respects_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    proc, root = tmp_path / "cgroup", tmp_path / "fs"
    monkeypatch.setattr(sandbox, "_PROC_CGROUP", str(proc))
    monkeypatch.setattr(sandbox, "_CGROUP_ROOT", str(root))
    proc.write_text("0::/job/step\n")
    (root / "job" / "step").mkdir(parents=True)
    assert sandbox.usable_cpus() == 16                            # no cpu.max: the affinity mask
    (root / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert sandbox.usable_cpus() == 16
    (root / "job" / "cpu.max").write_text("400000 100000\n")      # a parent's quota binds too
    assert sandbox.usable_cpus() == 4
    (root / "job" / "step" / "cpu.max").write_text("250000 100000\n")
    assert sandbox.usable_cpus() == 2                             # 2.5 CPUs' time: 2 workers
    (root / "job" / "step" / "cpu.max").write_text("50000 100000\n")
    assert sandbox.usable_cpus() == 1                             # at least one
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    proc.write_text("4:memory:/job\n1:cpu:/job\n")                # cgroup v1 only: the affinity mask
    assert sandbox.usable_cpus() == 1
