"""Run untrusted Python (model-written programs plus their tests) in a throw-away box, and prove what ran.

A job is a list of stages, e.g. [("program", code), ("setup", setup), ("test 1", assert1), ...], executed in
order in one namespace. The trap avoided: exit code 0 proves nothing, because `sys.exit(0)`, `os._exit(0)`, an
atexit hook or a thread can end the process "successfully" before an assert ran, and a printed "passed" is just
text. So after each stage that returns normally, the harness writes `<nonce> ok <stage>` to a write-only file
descriptor. The nonce is a fresh random string read from a descriptor that is closed before any untrusted code
runs; it is never in argv, the environment, a file or stdout. A stage counts only with its nonce-stamped marker,
and only the harness's own process writes markers: a forked copy that carries on through the stages after its
parent exited would otherwise pass or fail depending on which of the two the teardown caught first.

The program runs as a module named "solution", not as `__main__`, so an `if __name__ == "__main__":` demo in it
(reading input(), printing self-checks) does not run, as when a test suite imports the program.

How a run is contained (the `Isolation` that `best_isolation()` picks, best first, each verified by a probe run):

    judge thread -Popen-> unshare --pid --mount-proc --net --ipc --fork --kill-child    (namespaces only)
                           `-> python -c <_reaper>: PID 1 of the new namespaces, still root
                                `-> fork: rlimits, no_new_privs, setuid(fresh uid), exec python -c <_harness>

What each layer contains (time, memory, processes, signals, files, secrets, network), what is not contained,
and what the weaker isolations give up: docs/judges.md, "The MBPP sandbox". The program gets the standard
library only (`python -S`) and PYTHONHASHSEED=0, so verdicts are reproducible. Linux only (pidfd, namespaces,
/proc).
"""
from __future__ import annotations

import collections
import inspect
import marshal
import math
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

# Each concurrent run gets a uid of its own, far above any real account: RLIMIT_NPROC (counted per uid) then
# limits this run alone, and "every process of this uid" is exactly the run's leftovers. The judge's pid is
# mixed in so that two judging processes on one machine never share a uid.
UID_BASE = 1 << 30
_SLOTS = 256
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0", "PYTHONUTF8": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall clock for the whole job, seconds
    memory_mb: int = 1024  # address space of each process
    processes: int = 64  # processes and threads of the sandbox uid (enforced only when running as root)
    file_mb: int = 16  # largest file it may write; the captured stdout and stderr count
    scratch_mb: int = 64  # size of the private /tmp (namespaces only)
    output_chars: int = 8192  # how much of stdout and stderr is read back


@dataclass(frozen=True)
class Isolation:
    namespaces: bool  # private PID, mount, network and IPC namespaces (util-linux unshare)
    drop_privileges: bool  # run under a fresh unprivileged uid (needs root)


@dataclass
class Result:
    completed: list[str]  # stages proven to have run to the end, in order
    stage: str | None  # the first stage that did not; None when all did
    error: str  # why not: "AssertionError", "timeout after 5 s", "exited with code 0", ...
    kind: str  # for counting: the exception name, "timeout", "early exit", "killed"; "passed" on success
    returncode: int | None
    timed_out: bool
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")

    @property
    def passed(self) -> bool:
        return self.stage is None


def run(stages: list[tuple[str, str]], limits: Limits = Limits(), isolation: Isolation | None = None) -> Result:
    """Execute the stages (name, code) in order, in one namespace of one fresh sandboxed interpreter.

    Thread-safe and meant to be called from a thread pool: nothing runs in a preexec_fn, so Popen is safe."""
    names = [name for name, _ in stages]
    if len(set(names)) != len(names) or any("\t" in n or "\n" in n for n in names):
        raise ValueError(f"stage names must be unique and single-line: {names}")
    isolation = isolation or best_isolation()
    nonce = secrets.token_hex(16)
    slot, uid = _take_uid() if isolation.drop_privileges else (None, None)
    workdir = None if isolation.namespaces else tempfile.mkdtemp(prefix="sandbox-")
    try:
        with tempfile.TemporaryFile() as job, tempfile.TemporaryFile() as markers, \
                tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            job.write(marshal.dumps((nonce, [tuple(stage) for stage in stages])))
            job.flush()
            # The child gets its own descriptors: read-only on the job, write-only on the rest. It must not
            # read its marker file back, since the markers written so far contain the nonce.
            fds = [_reopen(job, os.O_RDONLY), _reopen(markers, os.O_WRONLY),
                   _reopen(out, os.O_WRONLY), _reopen(err, os.O_WRONLY)]
            try:
                returncode, timed_out = _spawn(isolation, limits, uid, workdir, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            if uid is not None and (timed_out or not isolation.namespaces):
                _kill_uid(uid)  # setsid escapees; inside a namespace they are already dying, this waits for it
            marker_lines = os.pread(markers.fileno(), 1 << 20, 0).decode(errors="replace").splitlines()
            stdout = os.pread(out.fileno(), limits.output_chars, 0).decode(errors="replace")
            stderr = os.pread(err.fileno(), limits.output_chars, 0).decode(errors="replace")
    finally:
        if workdir:
            _remove_tree(workdir)
        if slot is not None:
            _return_slot(slot)

    completed, stage, error, kind = _read_markers(marker_lines, nonce, names)
    if stage is not None and not error:  # no exception reported: the process ended, or was ended, early
        error, kind = (f"timeout after {limits.timeout:g} s", "timeout") if timed_out else _describe_exit(returncode)
    return Result(completed=completed, stage=stage, error=error, kind=kind, returncode=returncode,
                  timed_out=timed_out, stdout=stdout, stderr=stderr)


def _read_markers(lines: list[str], nonce: str, names: list[str]) -> tuple[list[str], str | None, str, str]:
    """(completed stages, first stage not completed, exception reported for it or "", kind)."""
    completed, failure = set(), None
    for line in lines:
        fields = line.split("\t")
        if fields[0] != nonce or len(fields) < 3:
            continue  # not the harness's: the program cannot know the nonce
        if fields[1] == "ok":
            completed.add(fields[2])
        elif fields[1] == "fail" and failure is None and len(fields) == 4:
            failure = (fields[2], fields[3])
    done = [name for name in names if name in completed]
    stage = next((name for name in names if name not in completed), None)
    if stage is None:
        return done, None, "", "passed"
    if failure is not None:
        return done, failure[0], failure[1], failure[1]
    return done, stage, "", ""


_isolation: Isolation | None = None
_isolation_lock = threading.Lock()


def best_isolation() -> Isolation:
    """The strongest isolation that works on this machine, found once per process by probe runs."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            root = os.geteuid() == 0
            candidates = [Isolation(True, root)] if shutil.which("unshare", path=_ENV["PATH"]) else []
            candidates += [Isolation(namespaces=False, drop_privileges=True)] if root else []
            candidates += [Isolation(namespaces=False, drop_privileges=False)]
            failures = []
            for candidate in candidates:
                result = run([("probe", "import os, math")], Limits(timeout=20), candidate)
                if result.passed:
                    _isolation = candidate
                    break
                failures.append(f"{candidate}: {result.error}\n{result.stderr.strip()[-1000:]}")
            else:
                raise RuntimeError("no sandbox works on this machine:\n" + "\n".join(failures))
        return _isolation


# ---------------------------------------------------------------------------------------------------------
# judge side


_slots = threading.Condition()
# First in, first out: without a PID namespace, a killed run's zombies wait for the system's init to reap them,
# and they still count against RLIMIT_NPROC of their uid; so a uid rests for as long as possible.
_free_slots = collections.deque(range(_SLOTS))


def sandbox_uids() -> range:
    """The uids that runs started by this process use (when dropping privileges)."""
    first = UID_BASE + (os.getpid() % 65536) * _SLOTS
    return range(first, first + _SLOTS)


def _take_uid() -> tuple[int, int]:
    with _slots:
        while not _free_slots:
            _slots.wait()
        slot = _free_slots.popleft()
    return slot, sandbox_uids()[slot]


def _return_slot(slot: int) -> None:
    with _slots:
        _free_slots.append(slot)
        _slots.notify()


def _reopen(file, mode: int) -> int:
    """A second, independent descriptor on an (anonymous) temp file, with its own mode and offset."""
    return os.open(f"/proc/self/fd/{file.fileno()}", mode)


def _spawn(isolation: Isolation, limits: Limits, uid: int | None, workdir: str | None,
           fds: list[int]) -> tuple[int, bool]:
    """Start the reaper, wait at most the timeout, kill what is left. Returns (returncode, timed_out)."""
    job_fd, marker_fd, out_fd, err_fd = fds
    mb, cpu = 1 << 20, math.ceil(limits.timeout) + 1
    rlimits = [(resource.RLIMIT_AS, limits.memory_mb * mb, limits.memory_mb * mb),
               (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU first, SIGKILL a second later
               (resource.RLIMIT_FSIZE, limits.file_mb * mb, limits.file_mb * mb),
               (resource.RLIMIT_NOFILE, 64, 64), (resource.RLIMIT_CORE, 0, 0)]
    if uid is not None:  # counted per real uid: meaningless for root, exact for a uid of our own
        rlimits.append((resource.RLIMIT_NPROC, limits.processes, limits.processes))
    config = {"namespaces": isolation.namespaces, "uid": uid, "workdir": workdir, "rlimits": rlimits,
              "scratch_mb": limits.scratch_mb, "give_up_after": limits.timeout + 2, "fds": [job_fd, marker_fd],
              "prefix": os.path.realpath(sys.base_prefix), "harness": _box_source(_harness),
              "python": os.path.realpath(getattr(sys, "_base_executable", sys.executable))}
    # marshal, not json: json drags re and enum into every start of the box, ~10 ms each time.
    command = [sys.executable, "-S", "-s", "-P", "-c", _box_source(_reaper), marshal.dumps(config).hex()]
    if isolation.namespaces:
        as_user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        command = ["unshare", *as_user, "--pid", "--mount-proc", "--net", "--ipc", "--fork", "--kill-child",
                   *command]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out_fd, stderr=err_fd,
                            pass_fds=(job_fd, marker_fd), cwd=workdir or "/", env=_ENV, start_new_session=True)
    pidfd = os.pidfd_open(proc.pid)  # readable once the process exits; unlike waitpid it does not reap
    try:
        timed_out = not select.select([pidfd], [], [], limits.timeout)[0]
    finally:
        os.close(pidfd)
    # Not reaped yet, so the leader's pid cannot have been recycled and its process group is still ours to
    # kill: the whole tree on a timeout, stragglers left in the group after a normal exit.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return proc.returncode, timed_out


def _live_pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # exited meanwhile
            continue
        if int(status["Uid"].split()[0]) == uid and status["State"].split()[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _kill_uid(uid: int, patience: float = 1.0) -> None:
    """SIGKILL every process of the sandbox uid, setsid escapees included, until none is left."""
    deadline = time.monotonic() + patience
    while (pids := _live_pids_of(uid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def _describe_exit(returncode: int) -> tuple[str, str]:
    """(error, kind) for a run that ended without the harness reporting an exception."""
    if returncode > 128 and returncode - 128 in signal.valid_signals():  # the reaper's code for a signal
        returncode = 128 - returncode
    if returncode < 0:
        sig = signal.Signals(-returncode)
        why = {signal.SIGXCPU: " (cpu time limit)", signal.SIGXFSZ: " (file size limit)"}.get(sig, "")
        return f"killed by {sig.name}{why}", "killed"
    return f"exited with code {returncode}", "early exit"


def _remove_tree(path: str) -> None:
    """rmtree that also gets through directories the program made unreadable (chmod 000)."""
    def unlock_and_retry(func, target, _):
        os.chmod(os.path.dirname(target), 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)
    shutil.rmtree(path, onerror=unlock_and_retry)


_sources: dict = {}


def _box_source(fn) -> str:
    """The source of a box-side function plus a call to it, to run as `python -c` (imports nothing of ours)."""
    if fn not in _sources:
        _sources[fn] = inspect.getsource(fn) + f"\n{fn.__name__}()\n"
    return _sources[fn]


# ---------------------------------------------------------------------------------------------------------
# box side: two self-contained functions shipped as source. The reaper (root) prepares the box and starts
# the worker; the worker drops to the sandbox uid and becomes the harness, which runs the stages.


def _reaper():
    """PID 1 of the new namespaces, still root: prepare scratch space, start the worker, wait for it, exit
    with its status. In a PID namespace that exit kills every process left inside."""
    import ctypes
    import marshal
    import os
    import resource
    import select
    import sys
    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    libc = ctypes.CDLL(None, use_errno=True)
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, PR_SET_NO_NEW_PRIVS = 1, 2, 4, 32, 4096, 38

    def mount(source, target, fstype, flags, options=""):
        if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"mount {target}: {os.strerror(errno)}")

    python, workdir, uid = config["python"], config["workdir"], config["uid"]
    if config["namespaces"]:
        # Fresh tmpfs over the world-writable dirs, and a read-only view of the Python installation: the
        # interpreter may sit where the sandbox uid cannot reach (pyenv under a 0700 /root), and binding
        # just its prefix makes it reachable without exposing what is next to it.
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['scratch_mb']}m,mode=1777")
        for path in ("/var/tmp", "/dev/shm", "/run/lock"):
            if os.path.isdir(path):
                mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=1777")
        os.mkdir("/tmp/python", 0o755)
        mount(config["prefix"], "/tmp/python", "none", MS_BIND)
        mount("none", "/tmp/python", "none", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        python = os.path.join("/tmp/python", os.path.relpath(python, config["prefix"]))
        workdir = "/tmp/work"
        os.mkdir(workdir, 0o700)

    worker = os.fork()
    if worker == 0:
        try:
            for limit, soft, hard in config["rlimits"]:
                resource.setrlimit(limit, (soft, hard))
            os.chdir(workdir)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries (su, mount, ...) stay harmless
            if uid is not None:
                os.chown(workdir, uid, uid)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            env = dict(os.environ, HOME=workdir, TMPDIR=workdir)
            # -S: stdlib only; -s: no user site; -P: nothing in the cwd shadows a stdlib module. Not -I: it
            # would also ignore PYTHONHASHSEED, and the environment is entirely ours anyway.
            os.execve(python, [python, "-S", "-s", "-P", "-c", config["harness"], *map(str, config["fds"])], env)
        except BaseException as e:  # after setuid even `import traceback` may be out of reach
            os.write(2, f"sandbox: could not start the worker: {e!r}\n".encode())
        os._exit(126)

    # Normally the judge kills the box at the timeout; this is for a judge that died first.
    pidfd = os.pidfd_open(worker)
    if not select.select([pidfd], [], [], config["give_up_after"])[0]:
        if not config["namespaces"]:
            os.killpg(0, 9)  # SIGKILL to our process group, ourselves included
        os._exit(137)
    _, status = os.waitpid(worker, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _harness():
    """The worker, as the sandbox uid: run the stages in one namespace, reporting each that finishes."""
    import marshal
    import os
    import sys
    # Bind all the harness needs before untrusted code can monkeypatch builtins or modules. From then on the
    # nonce meets only builtin str methods and this os.write, so no hook the program installs ever sees it.
    write, exit_, getpid, compile_, exec_, type_ = os.write, os._exit, os.getpid, compile, exec, type
    out, err = sys.stdout, sys.stderr
    job_fd, marker_fd = int(sys.argv[1]), int(sys.argv[2])
    with open(job_fd, "rb") as f:
        nonce, stages = marshal.loads(f.read())
    harness_pid = getpid()

    def report(*fields):
        # Only the harness's own process speaks. A forked copy of it would go on through the stages too, and
        # whether its markers landed before the box was torn down would be a race: the verdict would vary.
        if getpid() == harness_pid:
            write(marker_fd, ("\t".join((nonce,) + fields) + "\n").encode())

    def finish(code):  # os._exit: atexit hooks, __del__ and lingering threads get no say after the verdict
        for stream in (out, err):
            try:
                stream.flush()
            except BaseException:
                pass
        exit_(code)

    # The program is a module named "solution", not __main__: an `if __name__ == "__main__":` demo (reading
    # input(), printing its own checks) does not run, as when a test suite imports it. Registered in
    # sys.modules, so that pickle, dataclasses and typing find the module its classes claim to live in.
    solution = type_(sys)("solution")
    sys.modules["solution"] = solution
    namespace = solution.__dict__
    for name, code in stages:
        try:
            exec_(compile_(code, f"<{name}>", "exec"), namespace)
        except BaseException as e:  # SystemExit included: exiting is not passing
            report("fail", name, type_(e).__name__)
            try:
                import traceback
                traceback.print_exception(e)
            except BaseException:
                pass
            finish(1)
        report("ok", name)
    finish(0)
