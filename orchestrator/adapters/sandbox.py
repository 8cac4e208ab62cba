"""Runs generated code in a sandboxed subprocess: limits, an empty environment, its own directory, no network.

Three backends, the strongest the OS allows is chosen at runtime (`available_protections()` says which
protections are active, the README what remains where one is missing):

- `bwrap` (bubblewrap): new network, pid, ipc and uts namespaces, and a new root holding only the system
  directories and the interpreter (read-only), a private /tmp and the sandbox directory (size-capped tmpfs).
- `unshare` (util-linux, as root): the same namespaces and the same kind of root, built by our launcher.
- `plain`: no namespaces; rlimits, an empty environment, a process group and (as root) an own uid only.
  As root it is used only if the interpreter is readable by other users: generated code never runs as root.

In every backend a small launcher (the worker's interpreter, run with `-I -S`) forks the program, sets the
rlimits, sets no-new-privs, drops to a uid of its own for this run (when the worker is root: root ignores
RLIMIT_NPROC), execs the program with an empty environment, and reports the exact wait status and CPU time
through a pipe. The worker reads output incrementally with a cap, kills the whole process group (and with
it the namespaces) on the wall limit or an output flood, and then kills whatever still runs as the run's uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, cast

logger = logging.getLogger(__name__)

Backend = Literal["bwrap", "unshare", "plain"]
BACKENDS: tuple[Backend, ...] = ("bwrap", "unshare", "plain")

SANDBOX_DIR = "/sandbox"  # the program's directory (and HOME) inside the namespace backends
_INPUT_DIR = "/.input"  # bwrap: where the written files are bound read-only until the launcher copies them
_UID_BASE, _UID_SPAN = 1_500_000_000, 1_000_000  # per-run uids: far above any real user or subuid range
_FLOOD_FACTOR, _FLOOD_MIN_BYTES = 16, 1 << 20  # hard output cap: max(16 × max_output_bytes, 1 MiB)
_TMPFS_FACTOR, _TMPFS_MIN_MB = 4, 64  # /sandbox and /tmp: max(4 × file_size_mb, 64) MB each
_READ_CHUNK = 65536
_GRACE_S = 2.0  # after the program ended: how long its pipes may take to close
_STATUS_MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Limits for one run; CPU time, memory and file size apply per process."""

    cpu_s: float = 5
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_size_mb: int = 16
    max_processes: int = 32
    wall_s: float = 10
    max_output_bytes: int = 65536  # kept per stream; the run is killed past max(16 × this, 1 MiB) in all

    def __post_init__(self) -> None:
        for name in ("cpu_s", "memory_mb", "file_size_mb", "max_processes", "wall_s", "max_output_bytes"):
            value = getattr(self, name)
            kinds = (int, float) if name in ("cpu_s", "wall_s") else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < 1e9:
                what = "number" if float in kinds else "integer"
                raise ValueError(f"sandbox limit {name} must be a positive {what}, not {value!r}")


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """What a run did. `violation` names the limit it hit, e.g. "cpu time limit (5s)"; None if none."""

    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    violation: str | None
    duration_s: float
    protections: list[str]


class SandboxUnavailableError(RuntimeError):
    """The sandbox itself could not be set up (not the program's fault)."""


def available_backends() -> list[Backend]:
    """The backends that work on this machine, strongest first (probed once, by running a program in each)."""
    return [name for name in BACKENDS if _backend(name) is not None]


def available_protections(backend: Backend | None = None) -> list[str]:
    """The protections a backend gives (default: the strongest that works), e.g. ["bwrap", "netns", ...].

    Raises:
        SandboxUnavailableError: that backend (or, by default, every backend) does not work here.
    """
    if backend is None:
        return list(_default_backend().protections)
    found = _backend(backend)
    if found is None:
        raise SandboxUnavailableError(f"sandbox backend {backend!r} does not work on this machine")
    return list(found.protections)


async def run_python(files: Mapping[str, str], entrypoint: Sequence[str], limits: SandboxLimits = SandboxLimits(),
                     *, stdin: str | None = None, backend: Backend | None = None) -> SandboxResult:
    """Write `files` into a fresh directory, run `entrypoint` there under `limits`, remove the directory.

    Args:
        files: relative path → text; absolute paths and `..` raise ValueError.
        entrypoint: argv, e.g. ["python", "main.py"]; "python"/"python3" mean the worker's own interpreter.
        stdin: text for the program's standard input (none: it reads EOF).
        backend: force one backend (tests); default the strongest that works here.
    Raises:
        SandboxUnavailableError: the sandbox could not be set up (the backend failed, not the program).
    """
    names = [_checked_name(name) for name in files]
    if not entrypoint or not all(arg and "\0" not in arg for arg in entrypoint):
        raise ValueError("entrypoint must be a non-empty list of non-empty strings")
    if backend is None:
        chosen = await asyncio.to_thread(_default_backend)
    else:
        found = await asyncio.to_thread(_backend, backend)
        if found is None:
            raise SandboxUnavailableError(f"sandbox backend {backend!r} does not work on this machine")
        chosen = found
    contents = {name: files[original] for name, original in zip(names, files)}
    return await _run(chosen, contents, list(entrypoint), limits, stdin)


# --- backends -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Backend:
    name: Backend
    protections: tuple[str, ...]
    drop_uid: bool  # run the program as a uid of its own (needs root)


_NAMESPACE_PROTECTIONS = ("netns", "pidns", "ipcns", "private-fs", "private-tmp")
_detect_lock = threading.Lock()
_probed: dict[Backend, _Backend | None] = {}


def _backend(name: Backend) -> _Backend | None:
    """The backend if it works here (probed once per process), else None."""
    with _detect_lock:
        if name not in _probed:
            _probed[name] = _probe(name)
        return _probed[name]


def _default_backend() -> _Backend:
    for name in BACKENDS:
        found = _backend(name)
        if found is not None:
            return found
    raise SandboxUnavailableError("no sandbox backend works on this machine: install bubblewrap (apt package "
                                  "'bubblewrap'), or run the worker as root with util-linux 'unshare'")


def _candidate(name: Backend) -> _Backend | None:
    """What the backend would give here, before probing it; None if it cannot apply at all."""
    root = os.geteuid() == 0
    common = ("no-new-privs", "rlimits", "empty-env")
    if name == "bwrap":
        if shutil.which("bwrap") is None:
            return None
        return _Backend(name, ("bwrap", *_NAMESPACE_PROTECTIONS, *(("unprivileged-uid",) if root else ()), *common),
                        drop_uid=root)
    if name == "unshare":
        if not root or shutil.which("unshare") is None:
            return None
        return _Backend(name, (*_NAMESPACE_PROTECTIONS, "unprivileged-uid", *common), drop_uid=True)
    if not root:
        return _Backend(name, common, drop_uid=False)
    # Never run generated code as root. Without a mount namespace another uid can only start the interpreter
    # if its directories are readable by everyone (not so under /root, e.g. pyenv's).
    if not all(_world_reachable(path) for path in _python_dirs()):
        logger.info("sandbox backend unavailable", extra={"backend": name, "reason": "the program would run as "
                    "root: the interpreter's directories are not readable by other users"})
        return None
    return _Backend(name, ("unprivileged-uid", *common), drop_uid=True)


def _probe(name: Backend) -> _Backend | None:
    """Run a tiny program in the backend; it works if that program printed what it should."""
    candidate = _candidate(name)
    if candidate is None:
        return None
    box: list[SandboxResult | BaseException] = []

    def probe() -> None:  # a fresh thread: asyncio.run must not meet the caller's running loop
        try:
            box.append(asyncio.run(_run(candidate, {"probe.py": "print('sandbox-ok')\n"}, ["python", "probe.py"],
                                        SandboxLimits(wall_s=20), None)))
        except BaseException as exc:  # report below; never kill the caller
            box.append(exc)

    thread = threading.Thread(target=probe, name=f"sandbox-probe-{name}", daemon=True)
    thread.start()
    thread.join()
    outcome = box[0] if box else RuntimeError("probe thread died")
    if isinstance(outcome, SandboxResult) and outcome.exit_code == 0 and outcome.stdout.strip() == "sandbox-ok":
        level = logging.INFO if "netns" in candidate.protections else logging.WARNING
        logger.log(level, "sandbox backend works", extra={"backend": name, "protections": candidate.protections})
        return candidate
    why = str(outcome) if isinstance(outcome, BaseException) else (outcome.stderr.strip()[-300:] or outcome.signal)
    logger.info("sandbox backend unavailable", extra={"backend": name, "reason": why})
    return None


def _python_dirs() -> list[str]:
    """The directories the worker's interpreter needs (prefixes and its bin dirs), outermost only."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                  os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    paths = sorted({os.path.abspath(p) for p in candidates if p} | {os.path.realpath(p) for p in candidates if p})
    kept: list[str] = []
    for path in paths:
        if path == "/" or any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            continue
        kept.append(path)
    return kept


def _world_reachable(path: str) -> bool:
    """Whether any user can reach `path` (every ancestor searchable) and read it."""
    current = Path(path)
    try:
        if not current.stat().st_mode & stat.S_IROTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in [current, *current.parents])
    except OSError:
        return False


# --- the filesystem of the namespace backends -----------------------------------------------------------------

Op = list[str | int]  # ["ro-bind", src, dst] | ["symlink", target, dst] | ["dir", dst, mode] | ["tmpfs", dst, mode,
#                       size_bytes] | ["proc", dst] | ["dev", dst]


def _fs_plan(limits: SandboxLimits) -> list[Op]:
    """The new root: system dirs and the interpreter read-only, own /proc, minimal /dev, private /tmp, /sandbox."""
    ops: list[Op] = [["ro-bind", "/usr", "/usr"]]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            ops.append(["symlink", os.readlink(host), host])
        elif os.path.isdir(host):
            ops.append(["ro-bind", host, host])
    for name in ("ld.so.cache", "localtime"):  # shared-library lookup, local time; no secrets
        host = f"/etc/{name}"
        if os.path.exists(host):
            ops.append(["ro-bind", os.path.realpath(host), host])
    made: set[str] = {"/", "/usr"}
    for path in _python_dirs():
        if path == "/usr" or path.startswith("/usr/"):
            continue
        for parent in reversed(PurePosixPath(path).parents):
            if str(parent) not in made:
                made.add(str(parent))
                ops.append(["dir", str(parent), 0o755])
        ops.append(["ro-bind", path, path])
    size = max(_TMPFS_FACTOR * limits.file_size_mb, _TMPFS_MIN_MB) << 20
    tail: list[Op] = [["proc", "/proc"], ["dev", "/dev"], ["tmpfs", "/tmp", 0o1777, size],
                      ["tmpfs", "/dev/shm", 0o1777, size], ["tmpfs", SANDBOX_DIR, 0o755, size]]
    ops += tail
    return ops


def _bwrap_args(ops: list[Op]) -> list[str]:
    args: list[str] = []
    for op in ops:
        kind, rest = op[0], [str(x) for x in op[1:]]
        if kind == "ro-bind":
            args += ["--ro-bind", rest[0], rest[1]]
        elif kind == "symlink":
            args += ["--symlink", rest[0], rest[1]]
        elif kind == "dir":
            args += ["--perms", f"{int(op[2]):04o}", "--dir", rest[0]]
        elif kind == "tmpfs":
            args += ["--perms", f"{int(op[2]):04o}", "--size", rest[2], "--tmpfs", rest[0]]
        elif kind == "proc":
            args += ["--proc", rest[0]]
        elif kind == "dev":
            args += ["--dev", rest[0]]
    return args


# The launcher: runs inside the sandbox as root (or the worker's user), sets it up, forks the program with
# the limits and reports its wait status on `status_fd`. Plain stdlib; it is passed with `-c`.
_LAUNCHER = r'''
import ctypes, json, os, resource, shutil, signal, sys
cfg = json.loads(sys.argv[1])
status_fd, uid = cfg["status_fd"], cfg["uid"]
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384


def report(**fields):
    try:
        os.write(status_fd, json.dumps(fields).encode())
    except OSError:
        pass


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s: %s" % (dst, os.strerror(err)))


def mountpoint(path, is_dir):
    os.makedirs(path if is_dir else os.path.dirname(path), mode=0o755, exist_ok=True)
    if not is_dir and not os.path.exists(path):
        open(path, "w").close()


def build_root(root, ops):
    """The unshare backend: what bwrap does from its command line, on a tmpfs at `root` (chroot later)."""
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    for op in ops:
        kind = op[0]
        dst = root + (op[2] if kind in ("ro-bind", "symlink") else op[1])
        if kind == "ro-bind":
            mountpoint(dst, os.path.isdir(op[1]))
            mount(op[1], dst, None, MS_BIND | MS_REC)
            mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        elif kind == "symlink":
            os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
            os.symlink(op[1], dst)
        elif kind == "dir":
            os.makedirs(dst, exist_ok=True)
            os.chmod(dst, op[2])
        elif kind == "tmpfs":
            mountpoint(dst, True)
            mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, "mode=%o,size=%d" % (op[2], op[3]))
        elif kind == "proc":
            mountpoint(dst, True)
            mount("proc", dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "dev":
            mountpoint(dst, True)
            mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
            for name in ("null", "zero", "full", "random", "urandom"):
                mountpoint(dst + "/" + name, False)
                mount("/dev/" + name, dst + "/" + name, None, MS_BIND)
            for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
                os.symlink(target, dst + "/" + name)
        else:
            raise ValueError("unknown filesystem op %r" % kind)


def copy_input(src, dst):
    shutil.copytree(src, dst, dirs_exist_ok=True)
    if uid is not None:
        for here, dirs, files in os.walk(dst):
            for name in dirs + files:
                os.chown(os.path.join(here, name), uid, uid)
        os.chown(dst, uid, uid)
        os.chmod(dst, 0o700)


try:
    if cfg["root"]:
        build_root(cfg["root"], cfg["ops"])
        copy_input(cfg["input"], cfg["root"] + cfg["workdir"])
        os.chroot(cfg["root"])
        os.chdir("/")
    elif cfg["input"]:
        copy_input(cfg["input"], cfg["workdir"])
        if libc.umount2(cfg["input"].encode(), 2) == 0:  # MNT_DETACH; needs privileges, so best-effort
            try:
                os.rmdir(cfg["input"])
            except OSError:
                pass
except Exception as exc:
    report(error="%s: %s" % (type(exc).__name__, exc))
    os._exit(125)

os.set_inheritable(status_fd, False)
pid = os.fork()
if pid == 0:
    try:
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries stay unprivileged
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        os.chdir(cfg["workdir"])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by this Python; the program gets the defaults
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # a worker thread's blocked SIGXCPU must not carry over
        os.close(status_fd)
        os.execvpe(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as exc:
        try:
            os.write(2, ("sandbox: cannot start %s: %s\n" % (cfg["argv"][0], exc)).encode())
        finally:
            os._exit(127)
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
cpu_s = usage.ru_utime + usage.ru_stime
if os.WIFSIGNALED(status):
    number = os.WTERMSIG(status)
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "signal %d" % number
    report(exit_code=None, signal=name, cpu_s=cpu_s)
    os._exit(128 + number)
code = os.waitstatus_to_exitcode(status)
report(exit_code=code, signal=None, cpu_s=cpu_s)
os._exit(code)
'''


# --- one run --------------------------------------------------------------------------------------------------

TRUNCATION_MARKER = "[... output truncated by the sandbox"
_LAUNCHER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _checked_name(name: object) -> str:
    """A file name relative to the sandbox directory, normalised; ValueError for anything that could escape it."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"file name {name!r} must be a non-empty string")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"file name {name!r} must be relative to the sandbox directory, without '..'")
    return str(path)


def _allocate_uid() -> int:
    """A uid for one run: its processes are then exactly those running as it (limit, cleanup, signals)."""
    with _uid_lock:
        while True:
            uid = _UID_BASE + random.randrange(_UID_SPAN)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _pids_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes whose real, effective or saved uid is `uid`."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if uid in {int(x) for x in fields.get("Uid", "").split()[:3]}:
            found.append(int(entry))
    return found


def _kill_uid(uid: int, timeout_s: float = 5.0) -> None:
    """SIGKILL every process of the run's uid until none is left (a fork bomb outside a pid namespace)."""
    deadline = time.monotonic() + timeout_s
    while pids := _pids_of_uid(uid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            logger.warning("sandbox processes survive SIGKILL", extra={"uid": uid, "pids": pids[:20]})
            return
        time.sleep(0.01)  # let the kills land before looking again


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _prepare(backend: _Backend, files: Mapping[str, str], uid: int | None) -> Path:
    """A fresh private directory with the files: `input/` (copied in by the launcher) or `work/` (plain)."""
    job = Path(tempfile.mkdtemp(prefix="orch-sbx-"))
    try:
        target = job / ("work" if backend.name == "plain" else "input")
        target.mkdir()
        for name, text in files.items():
            path = target / name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            except (NotADirectoryError, IsADirectoryError, FileExistsError):
                raise ValueError(f"file name {name!r} clashes with another file's directory") from None
        if backend.name == "unshare":
            (job / "root").mkdir()
        if backend.name == "plain" and uid is not None:
            job.chmod(0o711)  # the run's uid may pass through to its own directory, nothing else
            for here, dirs, names in os.walk(target):
                for name in [*dirs, *names]:
                    os.chown(os.path.join(here, name), uid, uid)
            os.chown(target, uid, uid)
            target.chmod(0o700)
    except BaseException:
        _remove(job)
        raise
    return job


def _remove(job: Path) -> None:
    def force(_fn: object, path: str, _exc: object) -> None:  # a program may have chmod-ed its dirs to 000
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)

    shutil.rmtree(job, onerror=force)


def _rlimit(name: str, value: int) -> list[str | int]:
    """[name, soft, hard], never above the worker's own hard limit (only root may raise it)."""
    hard = resource.getrlimit(getattr(resource, name))[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    return [name, value, value]


def _rlimits(limits: SandboxLimits, uid: int | None) -> list[list[str | int]]:
    cpu = max(1, math.ceil(limits.cpu_s))
    # RLIMIT_NPROC counts every process of the uid: with the worker's own uid, its other processes count too.
    nproc = limits.max_processes if uid is not None else limits.max_processes + len(_pids_of_uid(os.getuid()))
    cpu_limit = _rlimit("RLIMIT_CPU", cpu + 1)
    cpu_limit[1] = min(cpu, int(cpu_limit[2]))  # SIGXCPU at the limit, SIGKILL a second later
    return [cpu_limit, _rlimit("RLIMIT_AS", limits.memory_mb << 20), _rlimit("RLIMIT_FSIZE", limits.file_size_mb << 20),
            _rlimit("RLIMIT_NPROC", nproc), _rlimit("RLIMIT_CORE", 0)]


def _command(backend: _Backend, job: Path, limits: SandboxLimits, uid: int | None, argv: list[str],
             status_fd: int) -> list[str]:
    """The argv that runs the launcher in the backend, with its configuration."""
    workdir = str(job / "work") if backend.name == "plain" else SANDBOX_DIR
    program = [sys.executable if argv[0] in ("python", "python3") else argv[0], *argv[1:]]
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", "HOME": workdir,
           "LANG": "C.UTF-8", "TMPDIR": "/tmp" if backend.name != "plain" else workdir}
    cfg: dict[str, object] = {"status_fd": status_fd, "uid": uid, "rlimits": _rlimits(limits, uid),
                              "workdir": workdir, "argv": program, "env": env, "root": None, "input": None, "ops": []}
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    if backend.name == "bwrap":
        cfg["input"] = _INPUT_DIR
        namespaces = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                      "--hostname", "sandbox", "--die-with-parent"]
        if os.geteuid() != 0:
            namespaces.append("--unshare-user")  # unprivileged bwrap mounts inside a user namespace
        return ["bwrap", *namespaces, *_bwrap_args(_fs_plan(limits)), "--ro-bind", str(job / "input"), _INPUT_DIR,
                "--chdir", "/", *launcher, json.dumps(cfg)]
    if backend.name == "unshare":
        cfg.update(root=str(job / "root"), input=str(job / "input"), ops=_fs_plan(limits))
        return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private",
                "--ipc", "--uts", *launcher, json.dumps(cfg)]
    return [*launcher, json.dumps(cfg)]


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Stream protocol that also tells when the process exited (Process.wait() waits for its pipes too)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2 * _READ_CHUNK, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


class _Capture:
    """Keeps the first `keep` bytes of each stream; drains the rest; flags a flood past `flood` bytes in all."""

    def __init__(self, keep: int, flood: int) -> None:
        self.keep, self.flood = keep, flood
        self.kept = {1: bytearray(), 2: bytearray()}
        self.total = {1: 0, 2: 0}
        self.flooded = asyncio.Event()

    async def pump(self, fd: int, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        kept = self.kept[fd]
        while chunk := await stream.read(_READ_CHUNK):
            if len(kept) < self.keep:
                kept += chunk[: self.keep - len(kept)]
            self.total[fd] += len(chunk)
            if self.total[1] + self.total[2] > self.flood:
                self.flooded.set()  # keep draining: the kill follows, and a full pipe would block it

    def text(self, fd: int) -> str:
        text = self.kept[fd].decode("utf-8", errors="replace")
        if self.total[fd] > self.keep:
            more = "+" if self.flooded.is_set() else ""
            text += f"\n{TRUNCATION_MARKER}: {self.total[fd] - self.keep}{more} more bytes ...]\n"
        return text

    @property
    def truncated(self) -> bool:
        return any(self.total[fd] > self.keep for fd in (1, 2))


async def _feed(writer: asyncio.StreamWriter | None, data: bytes) -> None:
    if writer is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
    writer.close()


def _read_status(fd: int) -> dict[str, object] | None:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, _STATUS_MAX_BYTES):
            data += chunk
            if len(data) > _STATUS_MAX_BYTES:
                break
    try:
        status = json.loads(data)
    except ValueError:
        return None
    return cast(dict[str, object], status) if isinstance(status, dict) else None


async def _run(backend: _Backend, files: Mapping[str, str], argv: list[str], limits: SandboxLimits,
               stdin: str | None) -> SandboxResult:
    uid = _allocate_uid() if backend.drop_uid else None
    job: Path | None = None
    try:
        job = await asyncio.to_thread(_prepare, backend, files, uid)
        return await _execute(backend, job, argv, limits, stdin, uid)
    finally:
        if uid is not None:  # runs on cancellation too: nothing of the run outlives it
            await asyncio.to_thread(_kill_uid, uid)
        if job is not None:
            await asyncio.to_thread(_remove, job)
        if uid is not None:
            _release_uid(uid)


async def _execute(backend: _Backend, job: Path, argv: list[str], limits: SandboxLimits, stdin: str | None,
                   uid: int | None) -> SandboxResult:
    loop = asyncio.get_running_loop()
    capture = _Capture(limits.max_output_bytes, max(_FLOOD_FACTOR * limits.max_output_bytes, _FLOOD_MIN_BYTES))
    status_r, status_w = os.pipe()
    try:
        command = await asyncio.to_thread(_command, backend, job, limits, uid, argv, status_w)
        started = time.monotonic()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(loop), *command, stdin=PIPE if stdin is not None else DEVNULL, stdout=PIPE, stderr=PIPE,
                pass_fds=(status_w,), start_new_session=True, env=_LAUNCHER_ENV, cwd="/")
        except OSError as exc:
            raise SandboxUnavailableError(f"sandbox ({backend.name}) could not start: {exc}") from None
        finally:
            os.close(status_w)
        pgid = transport.get_pid()
        readers = [asyncio.create_task(capture.pump(1, protocol.stdout)),
                   asyncio.create_task(capture.pump(2, protocol.stderr))]
        helpers: list[asyncio.Task[object]] = [asyncio.create_task(protocol.exited.wait()),
                                               asyncio.create_task(capture.flooded.wait())]
        if stdin is not None:
            helpers.append(asyncio.create_task(_feed(protocol.stdin, stdin.encode("utf-8", errors="replace"))))
        killed: Literal["wall", "output"] | None = None
        try:
            await asyncio.wait(helpers[:2], timeout=limits.wall_s, return_when=asyncio.FIRST_COMPLETED)
            if not protocol.exited.is_set():
                killed = "output" if capture.flooded.is_set() else "wall"
            # The whole process group (with bwrap/unshare: the namespaces die with it), then the run's uid.
            _kill_group(pgid)
            if uid is not None:
                await asyncio.to_thread(_kill_uid, uid)
            await asyncio.wait(helpers[:1], timeout=_GRACE_S)
            await asyncio.wait(readers, timeout=_GRACE_S)
        finally:
            for task in (*readers, *helpers):
                task.cancel()
            if not protocol.exited.is_set():
                _kill_group(pgid)
            transport.close()
        duration_s = time.monotonic() - started
        status = _read_status(status_r)
    finally:
        os.close(status_r)
    return _result(backend, limits, capture, status, killed, transport.get_returncode(), duration_s)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _result(backend: _Backend, limits: SandboxLimits, capture: _Capture, status: Mapping[str, object] | None,
            killed: Literal["wall", "output"] | None, returncode: int | None, duration_s: float) -> SandboxResult:
    stdout, stderr = capture.text(1), capture.text(2)
    if status is not None and isinstance(status.get("error"), str):
        raise SandboxUnavailableError(f"sandbox ({backend.name}) setup failed: {status['error']}")
    if status is None and killed is None:
        last = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        raise SandboxUnavailableError(f"sandbox ({backend.name}) failed before the program ran: {last[0][:300]}")
    exit_code: int | None = None
    signal_name: str | None = "SIGKILL" if killed else None
    cpu_s = 0.0
    if status is not None:
        code, sig, cpu = status.get("exit_code"), status.get("signal"), status.get("cpu_s")
        exit_code = code if isinstance(code, int) else None
        signal_name = sig if isinstance(sig, str) else signal_name
        cpu_s = float(cpu) if isinstance(cpu, int | float) else 0.0
    violation: str | None = None
    if capture.flooded.is_set():
        violation = "output limit"
    elif killed == "wall":
        violation = f"wall time limit ({_fmt(limits.wall_s)}s)"
    elif exit_code != 0:
        violation = _violation(limits, signal_name, cpu_s, stderr)
    return SandboxResult(exit_code=exit_code, signal=signal_name, stdout=stdout, stderr=stderr,
                         truncated=capture.truncated, timed_out=killed == "wall", violation=violation,
                         duration_s=round(duration_s, 3), protections=list(backend.protections))


def _violation(limits: SandboxLimits, signal_name: str | None, cpu_s: float, stderr: str) -> str | None:
    """Which limit a failed program hit: from its signal and CPU time, else from the error it died with."""
    cpu_limit = max(1, math.ceil(limits.cpu_s))
    if signal_name == "SIGXCPU" or (signal_name == "SIGKILL" and cpu_s >= cpu_limit - 0.05):
        return f"cpu time limit ({_fmt(limits.cpu_s)}s)"
    if signal_name == "SIGXFSZ":
        return f"file size limit ({limits.file_size_mb} MB)"
    tail = stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail:
        return f"memory limit ({limits.memory_mb} MB)"
    if "File too large" in tail:
        return f"file size limit ({limits.file_size_mb} MB)"
    if "Resource temporarily unavailable" in tail or "can't start new thread" in tail:
        return f"process limit ({limits.max_processes})"
    return None
