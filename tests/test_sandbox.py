"""The MBPP sandbox against hostile programs: none may pass, the judge must return within timeout + 2 s, and
no process of the program may outlive the run. Each hostile program defines a correct `f` wherever that
would let a successful attack pass, so a pass here means the containment failed."""
import os
import random
import shutil
import subprocess
import socket
import time
from pathlib import Path

import pytest

from ssr.harness import judges, sandbox
from ssr.harness.sandbox import Isolation, Limits

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1.5
TOKEN = f"{1000 + random.random():.9f}"  # argument of the `sleep` children, so they can be found in /proc
TESTS = ["assert f(1) == 2", "assert f(2) == 3", "assert f(5) == 6"]
SECRET = f"hunter2-{random.getrandbits(64):x}"
PROBE = next((entry for entry in Path("/proc/self/environ").read_text().split("\0")
              if "=" in entry and entry.split("=")[0] not in sandbox._ENV), "NO-PROBE=" + SECRET)

# What an attack needs to be contained: a uid of its own (root), namespaces, or either.
NEEDS = {"": lambda iso: True, "uid": lambda iso: iso.drop_privileges, "ns": lambda iso: iso.namespaces,
         "uid or ns": lambda iso: iso.drop_privileges or iso.namespaces}

HOSTILE = {
    "infinite loop": ("", "def f(x): return x + 1\nwhile True: pass"),
    "ignores SIGTERM": ("", "import signal, time\ndef f(x): return x + 1\n"
                            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.01)"),
    "infinite loop in a test": ("", "def f(x):\n    while True: pass"),
    "memory bomb": ("", "def f(x): return x + 1\nblob = bytearray(1 << 40)"),
    "growing memory": ("", "def f(x): return x + 1\nheap = []\nwhile True: heap.append(' ' * 10**7)"),
    "huge output": ("", "import sys\ndef f(x): return x + 1\nwhile True: sys.stdout.write('x' * 100000)"),
    "huge output from a test": ("", "def f(x):\n    while True: print('y' * 100000)"),
    "huge file": ("", "def f(x): return x + 1\nwith open('big', 'w') as out:\n    while True: out.write('z' * 10**6)"),
    "reads stdin": ("", "def f(x): return int(input())"),
    "fork bomb": ("uid", "import os\ndef f(x): return x + 1\nwhile True:\n"
                         "    try: os.fork()\n    except OSError: pass"),
    "lingering children": ("uid or ns", f"import os, subprocess, sys\ndef f(x): return x + 1\n"
                                        f"subprocess.Popen(['sleep', '{TOKEN}'], start_new_session=True)\n"
                                        f"if os.fork() == 0:\n    os.setsid()\n"
                                        f"    os.execv('/bin/sleep', ['sleep', '{TOKEN}'])\nsys.exit(0)"),
    "sys.exit(0)": ("", "import sys\ndef f(x): return x + 1\nsys.exit(0)"),
    "os._exit(0)": ("", "import os\ndef f(x): return x + 1\nos._exit(0)"),
    "atexit hook": ("", "import atexit, os\ndef f(x): return x + 1\natexit.register(os._exit, 0)\n"
                        "raise SystemExit(0)"),
    "exit from a thread": ("", "import os, threading, time\ndef f(x): return x + 1\n"
                               "threading.Thread(target=os._exit, args=(0,)).start()\ntime.sleep(1)"),
    "exit inside a test": ("", "import os\ndef f(x):\n    os._exit(0)"),
    "exit from __del__": ("", "import os\nclass Bye:\n    def __del__(self): os._exit(0)\n"
                              "def f(x): return x + 1\nbye = Bye()\ndel bye"),
    "kills itself": ("", "import os, signal\ndef f(x): return x + 1\nos.kill(os.getpid(), signal.SIGKILL)"),
    "prints passed": ("", "import os\ndef f(x): return x + 1\nprint('passed')\nprint('All 3 tests passed. OK')\n"
                          "os._exit(0)"),
    "forges markers": ("", "import os\ndef f(x): return x + 1\n"
                           "lines = ''.join(f'{w}\\tok\\t{s}\\n' for w in ('ok', '', '0' * 32) "
                           "for s in ('program', 'test 1', 'test 2', 'test 3'))\n"
                           "for fd in range(64):\n    try: os.write(fd, lines.encode())\n    except OSError: pass\n"
                           "os._exit(0)"),
    "sabotages markers": ("", "import os\ndef f(x): return x + 1\nnull = os.open('/dev/null', os.O_WRONLY)\n"
                              "for fd in range(3, 64):\n    if fd != null:\n"
                              "        try: os.dup2(null, fd)\n        except OSError: pass"),
    "patches builtins": ("", "import builtins, os\nbuiltins.exec = lambda *a, **k: None\n"
                             "builtins.compile = lambda *a, **k: None\nos.write = lambda *a: 0\n"
                             "def f(x): return 0"),
    # Inside f, i.e. during test 1, after the harness has written its first marker.
    "steals the nonce": ("uid", "import os, re\ndef f(x):\n    nonce = None\n    for fd in range(64):\n"
                                "        for read in (lambda: os.pread(fd, 1 << 16, 0),\n"
                                "                     lambda: open(f'/proc/self/fd/{fd}', 'rb').read()):\n"
                                "            try: m = re.search(rb'([0-9a-f]{32})\\t(ok|fail)', read())\n"
                                "            except OSError: continue\n"
                                "            nonce = nonce or (m and m.group(1).decode())\n"
                                "    if nonce:\n        forged = ''.join(f'{nonce}\\tok\\t{s}\\n' for s in "
                                "('program', 'test 1', 'test 2', 'test 3')).encode()\n"
                                "        for fd in range(3, 64):\n            try: os.write(fd, forged)\n"
                                "            except OSError: pass\n        os._exit(0)\n    return 0"),
    # The judge's environment, both as inherited (SECRET is set by the tests) and through /proc (PROBE is in
    # this process's environment since it started).
    "reads the caller's secrets": ("uid or ns", f"import glob, os\nneedles = ['{SECRET}', {PROBE!r}]\n"
                                                f"found = any(n in v for n in needles for v in os.environ.values())\n"
                                                f"for path in glob.glob('/proc/*/environ'):\n"
                                                f"    try: found = found or any(n.encode() in open(path, 'rb').read() "
                                                f"for n in needles)\n"
                                                f"    except OSError: pass\n"
                                                f"def f(x): return x + 1 if found else 0"),
}


def _caller_attack(pid: int, victim: Path) -> str:
    """Signal the judge and touch the caller's files; `f` is right only if something succeeded."""
    return (f"import os, signal\nhurt = []\n"
            f"for attack in (lambda: os.kill(os.getppid(), signal.SIGKILL),\n"
            f"               lambda: os.kill({pid}, signal.SIGKILL), lambda: os.kill(1, signal.SIGKILL),\n"
            f"               lambda: os.killpg({os.getpgid(pid)}, signal.SIGKILL),\n"
            f"               lambda: open('{victim}/data.txt', 'a').write('pwned'),\n"
            f"               lambda: os.remove('{victim}/data.txt'), lambda: open('{victim}/new.txt', 'w').close(),\n"
            f"               lambda: open('{victim}/secret.txt').read()):\n"
            f"    try: attack(); hurt.append(1)\n    except Exception: pass\n"
            f"def f(x): return x + 1 if hurt else 0")


def _live(pred) -> list[int]:
    """Live (non-zombie) pids whose /proc status satisfies pred(uid, cmdline)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if status["State"].split()[0] not in "ZX" and pred(int(status["Uid"].split()[0]), cmdline):
            pids.append(int(entry.name))
    return pids


def leftovers() -> list[int]:
    """Processes started by this test process's sandbox runs that are still alive."""
    uids = sandbox.sandbox_uids()
    return _live(lambda uid, cmdline: uid in uids or TOKEN.encode() in cmdline)


CANDIDATES = {"best": None, "no namespaces, own uid": Isolation(False, True),
              "no namespaces, same uid": Isolation(False, False)}


@pytest.fixture(autouse=True)
def secret_in_environment(monkeypatch):
    monkeypatch.setenv("SSR_SANDBOX_SECRET", SECRET)


@pytest.fixture(scope="module", params=list(CANDIDATES))
def isolation(request):
    chosen = CANDIDATES[request.param] or sandbox.best_isolation()
    if chosen.drop_privileges and os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    probe = sandbox.run([("probe", "import math")], Limits(timeout=20), chosen)
    if not probe.passed:
        pytest.skip(f"{chosen} does not work here: {probe.error}: {probe.stderr.strip()[-200:]}")
    return chosen


def _run(code: str, isolation: Isolation) -> tuple[sandbox.Result, float]:
    stages = [("program", code)] + [(f"test {i}", t) for i, t in enumerate(TESTS, 1)]
    start = time.monotonic()
    result = sandbox.run(stages, Limits(timeout=TIMEOUT), isolation)
    return result, time.monotonic() - start


def test_honest_program_passes_and_leaves_nothing(isolation):
    result, _ = _run("import math, heapq, collections\nprint('hello')\ndef f(x): return x + 1", isolation)
    assert result.passed, (result, result.stderr)
    assert result.completed == ["program", "test 1", "test 2", "test 3"]
    assert result.stdout == "hello\n"
    assert not leftovers()


def test_failing_test_is_named_with_its_exception(isolation):
    result, _ = _run("def f(x): return x + 1 if x < 2 else 0", isolation)
    assert (result.stage, result.error, result.kind) == ("test 2", "AssertionError", "AssertionError")
    assert result.completed == ["program", "test 1"]
    assert "AssertionError" in result.stderr  # the traceback, for whoever reads the logs


def test_exit_after_the_tests_still_passes(isolation):
    # Passing is about the asserts: atexit hooks, __del__ and busy threads after them do not matter.
    code = ("import atexit, os, threading, time\natexit.register(os._exit, 3)\n"
            "threading.Thread(target=time.sleep, args=(100,)).start()\ndef f(x): return x + 1")
    result, elapsed = _run(code, isolation)
    assert result.passed, result
    assert elapsed < TIMEOUT


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(name, isolation):
    needs, code = HOSTILE[name]
    if not NEEDS[needs](isolation):
        pytest.skip(f"{isolation} does not contain this (needs {needs}); see the sandbox docstring")
    result, elapsed = _run(code, isolation)
    assert not result.passed, f"{name} passed: {result}"
    assert elapsed < TIMEOUT + 2, f"{name} took {elapsed:.1f} s"
    assert not leftovers(), f"{name} left processes behind"
    assert SECRET not in result.stdout


def test_program_cannot_harm_the_judge_or_its_files(isolation):
    if not isolation.drop_privileges:
        pytest.skip(f"{isolation}: without a uid of its own the program could kill the judge and write its files")
    victim = ROOT / "runs" / f"sandbox-victim-{os.getpid()}"
    victim.mkdir(parents=True, mode=0o755)
    try:
        victim.chmod(0o755)  # reachable and readable, as most of a caller's files are
        (victim / "data.txt").write_text("precious")
        (victim / "data.txt").chmod(0o644)
        (victim / "secret.txt").write_text(SECRET)
        (victim / "secret.txt").chmod(0o600)
        result, elapsed = _run(_caller_attack(os.getpid(), victim), isolation)
        assert not result.passed, result
        assert (result.stage, result.error) == ("test 1", "AssertionError")  # every attack failed
        assert (victim / "data.txt").read_text() == "precious"
        assert sorted(p.name for p in victim.iterdir()) == ["data.txt", "secret.txt"]
    finally:
        shutil.rmtree(victim)


def test_program_has_no_network(isolation):
    if not isolation.namespaces:
        pytest.skip(f"{isolation}: without a network namespace the program shares the caller's network")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5).close()\n"
                f"    reached = True\nexcept OSError:\n    reached = False\ndef f(x): return x + 1 if reached else 0")
        result, _ = _run(code, isolation)
    assert (result.stage, result.error) == ("test 1", "AssertionError")


def test_honest_program_with_background_children_passes_and_leaves_nothing(isolation):
    if not NEEDS["uid or ns"](isolation):
        pytest.skip(f"{isolation}: setsid children escape the process group")
    code = (f"import os, subprocess\nsubprocess.Popen(['sleep', '{TOKEN}'], start_new_session=True)\n"
            f"if os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', ['sleep', '{TOKEN}'])\n"
            f"def f(x): return x + 1")
    result, _ = _run(code, isolation)
    assert result.passed, (result, result.stderr)
    assert not leftovers()


# The parent ends while a forked copy of the harness goes on through the tests. Only the harness's own
# process writes markers, so the verdict never depends on whether the child got there before the teardown.
FORKS = {
    "parent os._exit after the program": ("import os\ndef f(x): return x + 1\nif os.fork():\n    os._exit(0)",
                                          "exited with code 0 in program"),
    "parent sys.exit after the program": ("import os, sys\ndef f(x): return x + 1\nif os.fork():\n    sys.exit(0)",
                                          "SystemExit in program"),
    "parent exits inside a test": ("import os\ndef f(x):\n    if os.fork():\n        os._exit(0)\n    return x + 1",
                                   "exited with code 0 in test 1"),
    "child exits, parent goes on": ("import os\ndef f(x): return x + 1\nif os.fork() == 0:\n    os._exit(0)",
                                    "passed 3 tests"),
}


@pytest.mark.parametrize("name", list(FORKS))
def test_forking_program_gets_the_same_verdict_every_time(name):
    code, reason = FORKS[name]
    verdicts = judges.mbpp_batch([(code, TESTS, "")] * 10, workers=2, timeout=TIMEOUT)
    assert {v.reason for v in verdicts} == {reason}, verdicts
    assert not leftovers()


def test_stage_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        sandbox.run([("program", "pass"), ("program", "pass")])


def test_best_isolation_uses_root_when_it_has_it():
    chosen = sandbox.best_isolation()
    if os.geteuid() != 0:
        assert chosen == Isolation(namespaces=chosen.namespaces, drop_privileges=False), chosen
        return
    assert chosen.drop_privileges, chosen  # root can always run the program under another uid
    os_allows = shutil.which("unshare") and subprocess.run(
        ["unshare", "--pid", "--mount", "--net", "--ipc", "--fork", "true"], capture_output=True).returncode == 0
    if not os_allows:
        pytest.skip("this kernel or container does not let root create namespaces; the uid drop still holds")
    # Namespaces work here: anything weaker means the sandbox broke; say so rather than degrade quietly.
    assert chosen == Isolation(namespaces=True, drop_privileges=True), chosen


def test_hostile_batch_in_parallel_through_the_judge():
    """The MBPP judge API on a mix of hostile and honest programs, several at a time."""
    best = sandbox.best_isolation()
    hostile = [code for needs, code in HOSTILE.values() if NEEDS[needs](best)]
    honest = ["def f(x):\n    return x + 1", "```python\ndef f(x):\n    return x + 1\n```"]
    items = [(code, TESTS, "") for code in hostile + honest]
    start = time.monotonic()
    verdicts = judges.mbpp_batch(items, workers=4, timeout=TIMEOUT)
    elapsed = time.monotonic() - start
    assert [v.correct for v in verdicts] == [False] * len(hostile) + [True] * len(honest), verdicts
    assert elapsed < len(items) / 4 * (TIMEOUT + 2) + 5
    assert not leftovers()
