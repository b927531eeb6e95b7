"""Refereed programs (HumanEval): the tests and the verdict are out of the completion's reach.

Issue 10 item 11. Each hostile completion below defines a *wrong* function and tries to forge a
pass from inside its own process: swapping ``check`` through ``sys.settrace``, walking frames and
the heap for the nonce, reading its argv (``/proc/self/cmdline``), its descriptors
(``/proc/self/fd``), its environment and PID 1's, scanning its own memory, returning an object
that equals everything, exiting 0 early, killing everything it can. Every one must fail, on every
backend. Controls show the attacks are real: run in one interpreter (as a plain program, the way
the reference harness runs HumanEval) the settrace swap and the always-equal object do pass, and
the memory scan does find the tests.
"""

import os
from pathlib import Path

import pytest

from apr_eval import sandbox as sb
from apr_eval.code.problems import load_problems
from apr_eval.code.programs import build_program
from apr_eval.sandbox import Limits, RefereedProgram, Sandbox

MODES = sb.available_modes()
LIMITS = Limits(timeout_s=20.0, memory_mb=512, nproc=24, file_mb=1)
PROBLEM = load_problems(Path(__file__).parent / "data" / "humaneval-mini.jsonl")[0]  # total(xs) -> sum

pytestmark = pytest.mark.skipif(not MODES, reason="no isolating sandbox backend on this machine")


@pytest.fixture(scope="module", params=MODES)
def box(request):
    with Sandbox(request.param, LIMITS, workers=2) as s:
        yield s


WRONG = "\ndef total(xs):\n    return -1\n"

# The forger's tools: read whatever the descriptors it can find hold (a token, a nonce), write each
# such token, alone, to each descriptor open for writing (the verdict pipe, it hopes), exit 0.
# Against the previous harness (nonce on an inherited pipe, read back after the program) the
# argv, descriptor and frame-walking versions forged a pass.
SIGN = r"""
import fcntl, os, re
def _read_fd(fd):
    try:
        os.set_blocking(fd, False)
        return os.read(fd, 256)
    except OSError:
        return b""
def _writable(fd):
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except OSError:
        return False
def _sign(tokens, fds):
    for fd in sorted(fds):
        if fd > 2 and _writable(fd):
            for token in tokens:
                try:
                    os.set_blocking(fd, False)
                    os.write(fd, token)
                except OSError:
                    pass
    os._exit(0)
def _hex_tokens(data):
    return set(re.findall(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", data))
def _drained(fds):
    return {data for data in map(_read_fd, fds) if data}
"""

OWN_MEMORY = r"""
def _own_memory():  # every readable mapping of this process, through /proc/self/mem
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if perms[0] != "r":
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
"""

HOSTILE = {
    "settrace-swaps-check": r"""
import sys
def _swap(frame, event, arg):
    g = frame.f_globals
    if callable(g.get("check")) and getattr(g["check"], "__name__", "") == "check":
        g["check"] = lambda candidate: None
    return _swap
sys.settrace(_swap)
sys._getframe().f_trace = _swap
""",
    "frame-walk-for-the-nonce": SIGN + r"""
import gc, sys
tokens, fds = set(), set()
def _scan(value):
    if isinstance(value, (str, bytes)):
        tokens.update(_hex_tokens(value if isinstance(value, bytes) else value.encode("utf-8", "replace")))
    elif isinstance(value, int) and 2 < value < 256:
        fds.add(value)
for frame in list(sys._current_frames().values()) + [sys._getframe()]:
    while frame is not None:
        for space in (frame.f_locals, frame.f_globals):
            for v in list(space.values()):
                _scan(v)
        frame = frame.f_back
for obj in gc.get_objects():
    if isinstance(obj, dict):
        for v in list(obj.values()):
            _scan(v)
tokens |= _drained(fds)
_sign(tokens, fds)
""",
    "proc-self-cmdline": SIGN + r"""
argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
tokens, fds = set(), {int(a) for a in argv if a.isdigit() and int(a) < 1024}
for arg in argv:
    tokens |= _hex_tokens(arg)
tokens |= _drained(fds)
_sign(tokens, fds)
""",
    "proc-self-fd": SIGN + r"""
fds = {int(n) for n in os.listdir("/proc/self/fd")}
tokens = _drained(fds)
for fd in fds:
    try:  # a fresh open of the same pipe or file, as /proc allows
        with open(f"/proc/self/fd/{fd}", "rb", 0) as f:
            os.set_blocking(f.fileno(), False)
            tokens.add(f.read(256) or b"")
    except (OSError, TypeError):
        pass
tokens.discard(b"")
_sign(tokens, fds)
""",
    "environ-and-pid-1": SIGN + r"""
tokens = set()
for v in os.environ.values():
    tokens |= _hex_tokens(v.encode())
for path in ("/proc/self/environ", "/proc/1/environ", "/proc/1/cmdline", "/proc/2/environ", "/proc/3/environ"):
    try:
        tokens |= _hex_tokens(open(path, "rb").read())
    except OSError:
        pass
for pid in ("1", "2", "3"):
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            tokens |= _hex_tokens(open(f"/proc/{pid}/fd/{name}", "rb").read(1 << 16))
    except OSError:
        pass
_sign(tokens, {int(n) for n in os.listdir("/proc/self/fd")})
""",
    "scan-own-memory": SIGN + OWN_MEMORY + r"""
tokens = set()
for data in _own_memory():
    tokens |= _hex_tokens(data)
_sign(tokens, {int(n) for n in os.listdir("/proc/self/fd")})
""",
    "always-equal-object": r"""
class _Any:
    def __eq__(self, other):
        return True
    __ne__ = lambda self, other: False
    __hash__ = object.__hash__
def total(xs):
    return _Any()
""",
    "exit-0-at-import": "import os\nos._exit(0)\n",
    "kill-everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
}


def _hostile(name: str) -> RefereedProgram:
    code = HOSTILE[name]
    program = build_program(PROBLEM, code + (WRONG if "def total" not in code else ""))
    assert isinstance(program, RefereedProgram)
    return program


def _in_one_interpreter(program: RefereedProgram) -> str:
    """The same sample the way the reference harness runs it: everything in one module."""
    return f"{program.candidate}\n\n{program.tests}"


def test_a_correct_completion_passes_and_a_wrong_one_fails(box):
    good = build_program(PROBLEM, "    return sum(xs)\n")
    assert isinstance(good, RefereedProgram) and "check" not in good.candidate
    v = box.run(good)
    assert v.passed, v.detail
    bad = box.run(build_program(PROBLEM, "    return sum(xs) + 1\n"))
    assert bad.status == "failed" and bad.detail == "AssertionError"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completion_cannot_forge_a_pass(box, name):
    v = box.run(_hostile(name))
    assert v.status in ("failed", "timeout"), (name, v.status, v.detail)


@pytest.mark.parametrize("name", ["settrace-swaps-check", "always-equal-object"])
def test_control_the_same_attacks_pass_in_one_interpreter(box, name):
    """Why HumanEval is refereed: in-process, these two forge a pass (a plain program is run so)."""
    assert box.run(_in_one_interpreter(_hostile(name))).passed


TOKEN_HUNTS = ["frame-walk-for-the-nonce", "proc-self-cmdline", "proc-self-fd", "environ-and-pid-1",
               "scan-own-memory", "exit-0-at-import"]


@pytest.mark.parametrize("name", TOKEN_HUNTS)
def test_token_hunts_find_nothing_in_one_interpreter_either(box, name):
    """For plain programs (MBPP) too, the nonce is nowhere in the process: hunting it is useless
    (docs/eval.md says what a harness-aware plain program can still do)."""
    v = box.run(_in_one_interpreter(_hostile(name)))
    assert v.status in ("failed", "timeout"), (name, v.status, v.detail)


SECRET_TESTS = ('SECRET = "APR-TEST-SECRET-%s"\n'
                "def check(candidate):\n    assert candidate() == (0, 0), candidate()\n\ncheck(scan)\n") % ("5e" * 16)
MEMORY_SCAN = OWN_MEMORY + r'''
import re
def scan():
    """(copies of the tests' secret, copies of the run's nonce) readable in this process's memory."""
    secret, nonce = re.compile(rb"APR-TEST-SECRET-[0-9a-f]{32}"), re.compile(rb"(?:0123456789abcdef){2}")
    hits = [0, 0]
    for data in _own_memory():
        hits[0] += len(secret.findall(data))
        hits[1] += len(nonce.findall(data))
    return tuple(hits)
'''


def test_the_candidate_never_holds_the_tests_or_the_nonce(box, monkeypatch):
    monkeypatch.setattr(sb.secrets, "token_hex", lambda n: "0123456789abcdef" * 2)
    program = RefereedProgram(candidate=MEMORY_SCAN, context="", tests=SECRET_TESTS, entry="scan")
    v = box.run(program)
    assert v.passed, v.detail
    # control: in one interpreter the same scan sees the tests' secret
    control = box.run(_in_one_interpreter(program))
    assert control.status == "failed" and "AssertionError: (" in control.detail and "(0, 0)" not in control.detail


@pytest.mark.parametrize("candidate,tests,detail", [
    ("def f(x):\n    raise ValueError('bad ' + str(x))\n",
     "try:\n    f(3)\nexcept ValueError as e:\n    assert str(e) == 'bad 3'\nelse:\n    raise AssertionError\n", None),
    ("def f(*a, **k):\n    return (a, k)\n", "assert f(1, 2, z=3) == ((1, 2), {'z': 3})\n", None),
    ("def f(n):\n    return (i for i in range(n))\n", "assert tuple(f(3)) == (0, 1, 2)\nassert f(2) != [0, 1]\n", None),
    ("def f():\n    return 2 ** 9000, float('nan'), -0.0\n",
     "a, b, c = f()\nassert a == 2 ** 9000 and b != b and str(c) == '-0.0'\n", None),
    ("calls = []\ndef f(x):\n    calls.append(x)\n    print('called', x)\n    return len(calls)\n",
     "assert [f(0), f(0), f(0)] == [1, 2, 3]\n", None),
    ("def f():\n    return object()\n", "f()\n", "cannot be passed between the tests and the candidate"),
    ("import os\ndef f():\n    os._exit(0)\n", "f()\n", "the candidate process ended during a call"),
    ("x = undefined_name\n", "f()\n", "NameError: name 'undefined_name' is not defined"),
    ("def g():\n    return 1\n", "f()\n", "NameError: name 'f' is not defined"),
    ("def f():\n    raise SystemExit(0)\n", "f()\n", "SystemExit"),
], ids=["exception-type-kept", "kwargs", "generator", "exact-numbers", "state-and-prints", "unsendable",
        "dies-mid-call", "load-error", "missing-entry", "systemexit-is-a-failure"])
def test_referee_semantics(box, candidate, tests, detail):
    v = box.run(RefereedProgram(candidate=candidate, context="", tests=tests, entry="f"))
    if detail is None:
        assert v.passed, v.detail
    else:
        assert v.status == "failed" and detail in v.detail, v.detail


def test_the_tests_use_the_prompt_not_the_completions_helpers(box):
    """The referee runs the trusted prompt (its helpers, its imports); the completion's copies of
    them stay in the candidate. The entry point's own name in the tests means the candidate."""
    context = "import math\ndef helper(x):\n    return x * 2\ndef f(x):\n    \"\"\"stub\"\"\"\n"
    candidate = context + "def helper(x):\n    return 0\ndef f(x):\n    return helper(x) + 1\n"
    tests = "def check(c):\n    assert helper(2) == 4 and math.pi > 3\n    assert c(5) == 1 and f(5) == 1\ncheck(f)\n"
    v = box.run(RefereedProgram(candidate=candidate, context=context, tests=tests, entry="f"))
    assert v.passed, v.detail


def test_nothing_of_the_referee_lingers(box):
    fds = sorted(os.listdir("/proc/self/fd"))
    verdicts = box.run_many([_hostile(n) for n in sorted(HOSTILE)] * 2)
    assert not any(v.passed for v in verdicts)
    assert sorted(os.listdir("/proc/self/fd")) == fds and os.listdir(box._base) == []


UNPRIVILEGED_RUNNER = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from apr_eval.sandbox import Limits, RefereedProgram, Sandbox, available_modes
from apr_eval.sandbox.selftest import self_test
spec = json.load(open(sys.argv[2]))
report = {"uid": os.getuid(), "modes": available_modes(), "results": {}}
for mode in report["modes"]:
    with Sandbox(mode, Limits(timeout_s=5, memory_mb=512, nproc=64, file_mb=1), workers=2) as box:
        r = report["results"][mode] = {"self_test": list(self_test(box))}
        r["good"] = box.run(RefereedProgram(**spec["good"])).passed
        r["hostile_passed"] = [n for n, p in spec["hostile"].items() if box.run(RefereedProgram(**p)).passed]
        r["scan"] = box.run(RefereedProgram(**spec["scan"])).detail
        box.run(spec["survivor"])
        r["survivors"] = [q for q in os.listdir("/proc") if q.isdigit() and
                          spec["marker"].encode() in open(f"/proc/{q}/cmdline", "rb").read()]
        r["dev"] = box.run(spec["dev"]).detail
print(json.dumps(report))
'''


def test_an_unprivileged_apr_gets_the_same_guarantees():
    """Without root: bubblewrap's and our user namespaces, one uid, the referee non-dumpable and
    the candidate without capabilities. Run as ``nobody`` with the system interpreter."""
    import dataclasses
    import json
    import subprocess
    import tempfile
    import time

    from test_sandbox import DEV_PROGRAM, SURVIVOR

    python, plugins = "/usr/bin/python3", str(Path(sb.__file__).parents[2])
    if os.geteuid() != 0 or not os.access(python, os.X_OK):
        pytest.skip("needs root (to become nobody) and a system python3")
    probe = subprocess.run([python, "-c", f"import os, sys; sys.path.insert(0, {plugins!r}); import apr_eval.sandbox"],
                           user=65534, group=65534, capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot import the sandbox from {plugins}: {probe.stderr.decode()[-200:]}")
    marker = f"{os.getpid()}.{time.time_ns() % 10**9}"
    spec = {"good": dataclasses.asdict(build_program(PROBLEM, "    return sum(xs)\n")),
            "hostile": {n: dataclasses.asdict(_hostile(n)) for n in HOSTILE},
            "scan": dict(candidate=MEMORY_SCAN, context="", tests=SECRET_TESTS, entry="scan"),
            "survivor": SURVIVOR.format(marker=f"9{marker}", main_sleep=60), "marker": marker, "dev": DEV_PROGRAM}
    with tempfile.TemporaryDirectory() as where:  # pytest's tmp_path is not readable by nobody
        os.chmod(where, 0o755)
        (Path(where) / "spec.json").write_text(json.dumps(spec))
        (Path(where) / "run.py").write_text(UNPRIVILEGED_RUNNER)
        run = subprocess.run([python, f"{where}/run.py", plugins, f"{where}/spec.json"],
                             user=65534, group=65534, capture_output=True, cwd="/", timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    report = json.loads(run.stdout)
    assert report["uid"] == 65534
    if not report["modes"]:
        pytest.skip("no unprivileged user namespaces here")
    for mode, r in report["results"].items():
        assert r["good"], mode
        assert r["hostile_passed"] == [], mode
        assert r["scan"] == "" and r["dev"] == "" and r["survivors"] == [], (mode, r)
        assert "network" in r["self_test"], (mode, r)
