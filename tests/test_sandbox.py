"""The sandbox against hostile programs, on every isolating backend available here."""

import os
import socket
import time
from pathlib import Path

import pytest

from apr_core.errors import AprError
from apr_eval import sandbox as sb
from apr_eval.sandbox import Limits, Sandbox, open_sandbox

MODES = sb.available_modes()
LIMITS = Limits(timeout_s=20.0, memory_mb=512, nproc=24, file_mb=1)  # generous: shared, loaded CI machines
SHORT = Limits(timeout_s=2.0, memory_mb=512, nproc=24, file_mb=1)   # for the programs that must be killed

pytestmark = pytest.mark.skipif(not MODES, reason="no isolating sandbox backend on this machine")


@pytest.fixture(scope="module", params=MODES)
def box(request):
    with Sandbox(request.param, LIMITS, workers=2) as s:
        yield s


def _alive(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


def test_plain_pass_and_fail(box):
    assert box.run("assert sum([1, 2]) == 3").passed
    v = box.run("assert 1 == 2, 'nope'")
    assert v.status == "failed" and "nope" in v.detail


@pytest.mark.parametrize("program", [
    "print('PASS')\nprint('passed')\nassert False",
    "import os\nos._exit(0)\nassert False",
    "import sys\nsys.exit(0)\nassert False",
    "raise SystemExit(0)",
    "import sys\nsys.exit = lambda *a: None\nassert False",
    "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False",
    "import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n        pass\nassert False",
    "import threading, os\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\ntime.sleep(5)\nassert False",
], ids=["print-pass", "os-exit-0", "sys-exit-0", "systemexit", "patch-sys-exit", "atexit-exit-0",
        "write-fds", "thread-exit"])
def test_faked_passes_fail(box, program):
    assert not box.run(program).passed


def test_fork_bomb_is_contained(box):
    start = time.perf_counter()
    with Sandbox(box.mode, SHORT, workers=1) as short:
        v = short.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert v.status in ("failed", "timeout")
    assert time.perf_counter() - start < SHORT.timeout_s + 10
    assert box.run("assert True").passed  # the machine is still usable


def test_c_level_infinite_loop_is_killed(box):
    # catastrophic backtracking runs inside the C regex engine, out of reach of Python signals
    with Sandbox(box.mode, SHORT, workers=1) as short:
        v = short.run("import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')")
    assert v.status in ("timeout", "failed")  # wall clock, or RLIMIT_CPU's SIGKILL
    assert v.seconds < SHORT.timeout_s + 3


def test_sleeping_program_hits_wall_clock(box):
    with Sandbox(box.mode, SHORT, workers=1) as short:
        v = short.run("import time\ntime.sleep(60)")
    assert v.status == "timeout" and v.seconds < SHORT.timeout_s + 3


def test_huge_allocation_fails(box):
    assert box.run("x = bytearray(64 << 30)").status == "failed"
    v = box.run("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))")
    assert v.status == "failed" and "MemoryError" in v.output


def test_output_flood_is_capped(box):
    v = box.run("while True:\n    print('x' * 65536)")
    assert not v.passed
    assert len(v.output) < 3 * sb.OUTPUT_KEEP


def test_writes_outside_the_sandbox_do_not_land(box, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("original")
    program = (f"import os\nfor p in [{str(target)!r}, {str(tmp_path / 'new.txt')!r}, '/usr/x', '/x', '/etc/x']:\n"
               "    try:\n        os.makedirs(os.path.dirname(p), exist_ok=True)\n"
               "        open(p, 'w').write('pwned')\n    except OSError:\n        pass\n")
    box.run(program)
    assert target.read_text() == "original"
    assert not (tmp_path / "new.txt").exists()
    assert not Path("/x").exists() and not Path("/usr/x").exists()


def test_no_network_even_to_host_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        v = box.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                    "s.sendall(b'leak')")
        assert v.status == "failed"
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_detached_grandchildren_die_with_the_sample(box):
    marker = f"{os.getpid()}.{time.time_ns() % 100000}"
    program = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "time.sleep(0.5)\n"
    )
    v = box.run(program)
    assert v.passed, v.detail  # the program itself finished normally
    time.sleep(0.3)
    assert _alive(marker) == []


def test_unprivileged_and_private(box):
    program = "import os\nassert os.getpid() < 10\n"
    if os.geteuid() == 0:
        program += "assert os.getuid() != 0 and os.geteuid() != 0\n"
    assert box.run(program).passed


def test_parallel_runs_keep_order_and_leave_nothing_behind(box):
    fds_before = len(os.listdir("/proc/self/fd"))
    programs = [f"assert {i} % 3 != 0" for i in range(12)]
    verdicts = box.run_many(programs)
    assert [v.passed for v in verdicts] == [i % 3 != 0 for i in range(12)]
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert os.listdir(box._base) == []


def test_self_test_passes_and_refusals():
    box = open_sandbox("auto")
    try:
        assert box.mode in MODES and box.checks["network"] == "unreachable"
    finally:
        box.close()
    with pytest.raises(AprError, match="unsafe-no-isolation"):
        open_sandbox("none")


def test_refuses_without_isolation_unless_told_louder(monkeypatch):
    monkeypatch.setattr(sb, "available_modes", lambda: [])
    with pytest.raises(AprError, match="refusing"):
        open_sandbox("auto")
    box = open_sandbox("auto", unsafe_no_isolation=True)
    try:
        assert box.mode == "none"
    finally:
        box.close()
