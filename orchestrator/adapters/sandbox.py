"""Runs generated code in a sandboxed subprocess: isolation, limits, an empty environment, nothing left behind.

The sandbox never silently weakens. Two backends isolate (`available_protections()` says what each gives):

- `bwrap` (bubblewrap): new network, pid, ipc, uts and mount namespaces (and a user namespace when the worker
  is not root); a new root holding only the system directories and the interpreter (read-only), a private
  /tmp and the sandbox directory (size-capped tmpfs).
- `unshare` (util-linux, as root): the same namespaces and the same kind of root, built by our launcher.

`auto` (the default) takes the first that works here and refuses to run anything when neither does: the
error, and the log, name each backend's reason. `unsafe-plain` (rlimits, an empty environment and, as root,
an own uid; no namespaces) runs only when chosen explicitly, and never runs generated code as root.

Where the host has cgroup controllers (v2 with memory, pids and cpu; else v1 hierarchies of those three),
every run gets a cgroup of its own, created in the worker's: memory and processes are capped for the run as
a whole, it gets at most one CPU, and at its end every process in it is killed (a `setsid` daemon too). An
isolating backend that cannot create one is unavailable, with that as its reason; a host without any cgroup
controller runs without (a warning in the log, no "cgroup-v*" in `protections`).

In every backend a small launcher (the worker's interpreter, run with `-I -S`) forks the program, sets the
rlimits, sets no-new-privs, drops to a uid of its own for this run (when the worker is root: root ignores
RLIMIT_NPROC), execs the program with an empty environment, and reports the exact wait status and CPU time
through a pipe. The worker reads output incrementally with a cap, kills the whole process group (and with
it the namespaces) on the wall limit or an output flood, and then kills whatever is left in the run's cgroup
or runs as the run's uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import random
import re
import resource
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast

logger = logging.getLogger(__name__)

Backend = Literal["bwrap", "unshare", "unsafe-plain"]
BackendChoice = Literal["auto", "bwrap", "unshare", "unsafe-plain"]
BACKENDS: tuple[Backend, ...] = ("bwrap", "unshare", "unsafe-plain")
ISOLATING: tuple[Backend, ...] = ("bwrap", "unshare")  # what `auto` tries, in this order

SANDBOX_DIR = "/sandbox"  # the program's directory (and HOME) inside the namespace backends
_INPUT_DIR = "/.input"  # bwrap: where the written files are bound read-only until the launcher copies them
_UID_BASE, _UID_SPAN = 1_500_000_000, 1_000_000  # per-run uids: far above any real user or subuid range
_FLOOD_FACTOR, _FLOOD_MIN_BYTES = 16, 1 << 20  # hard output cap: max(16 × max_output_bytes, 1 MiB)
_TMPFS_FACTOR, _TMPFS_MIN_MB = 4, 64  # /sandbox and /tmp: max(4 × file_size_mb, 64) MB each
_READ_CHUNK = 65536
_GRACE_S = 2.0  # after the program ended: how long its pipes may take to close
_STATUS_MAX_BYTES = 4096
_REASON_CHARS = 160  # of one backend's reason in an error message (the log has it whole)


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Limits for one run. CPU time and file size apply per process; memory per process (address space) and,
    with a cgroup, to the run as a whole (resident memory and its tmpfs files); processes to the whole run."""

    cpu_s: float = 5
    memory_mb: int = 512
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
class SandboxConfig:
    """How this worker sandboxes: the backend (`auto`: bwrap, else unshare, else refuse) and its binaries."""

    backend: BackendChoice = "auto"
    bwrap: str = "bwrap"  # a name on PATH or a path
    unshare: str = "unshare"


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
    """The sandbox itself could not be set up, or would not isolate (not the program's fault)."""


def available_backends(config: SandboxConfig = SandboxConfig()) -> list[Backend]:
    """The backends that work on this machine, strongest first (probed once, by running a program in each)."""
    return [name for name in BACKENDS if _backend(name, config).backend is not None]


def available_protections(backend: Backend | None = None, config: SandboxConfig = SandboxConfig()) -> list[str]:
    """The protections a backend gives (default: the one `config` chooses), e.g. ["bwrap", "netns", ...].

    Raises:
        SandboxUnavailableError: that backend (or the configured choice) does not work here; says why.
    """
    if backend is not None:
        config = SandboxConfig(backend, config.bwrap, config.unshare)
    return list(_select(config).protections)


async def run_python(files: Mapping[str, str], entrypoint: Sequence[str], limits: SandboxLimits = SandboxLimits(),
                     *, stdin: str | None = None, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Write `files` into a fresh directory, run `entrypoint` there under `limits`, remove the directory.

    Args:
        files: relative path → text; absolute paths and `..` raise ValueError.
        entrypoint: argv, e.g. ["python", "main.py"]; "python"/"python3" mean the worker's own interpreter.
        stdin: text for the program's standard input (none: it reads EOF).
        config: the backend to use (default: the strongest isolating one that works here).
    Raises:
        SandboxUnavailableError: the sandbox could not be set up or would not isolate (the reason is in it).
    """
    names = [_checked_name(name) for name in files]
    if not entrypoint or not all(arg and "\0" not in arg for arg in entrypoint):
        raise ValueError("entrypoint must be a non-empty list of non-empty strings")
    chosen = await asyncio.to_thread(_select, config)
    contents = {name: files[original] for name, original in zip(names, files)}
    return await _run(chosen, contents, list(entrypoint), limits, stdin)


# --- backends -------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Backend:
    name: Backend
    protections: tuple[str, ...]
    drop_uid: bool  # run the program as a uid of its own (needs root)
    binary: str | None  # bwrap or unshare, resolved to a path
    cgroup: _CgroupHost | None  # where each run's cgroup goes; None: the host has no cgroup controllers


@dataclass(frozen=True, slots=True)
class _Probe:
    backend: _Backend | None
    reason: str | None  # why the backend is unavailable


_NAMESPACE_PROTECTIONS = ("netns", "pidns", "ipcns", "private-fs", "private-tmp")
_detect_lock = threading.Lock()
_probed: dict[tuple[Backend, str], _Probe] = {}


def _backend(name: Backend, config: SandboxConfig) -> _Probe:
    """The backend if it works here (probed once per process and binary), else why not."""
    binary = config.bwrap if name == "bwrap" else config.unshare if name == "unshare" else ""
    with _detect_lock:
        if (name, binary) not in _probed:
            _probed[name, binary] = _probe(name, binary)
        return _probed[name, binary]


def _select(config: SandboxConfig) -> _Backend:
    """The backend `config` chooses; SandboxUnavailableError naming each candidate's reason if none works."""
    names = ISOLATING if config.backend == "auto" else (config.backend,)
    reasons: list[str] = []
    for name in names:
        probe = _backend(name, config)
        if probe.backend is not None:
            return probe.backend
        reason = probe.reason or "unknown"
        reasons.append(f"{name}: " + (reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 1] + "…"))
    if config.backend == "auto":
        raise SandboxUnavailableError("sandbox refused: no backend can isolate generated code on this worker ("
                                      + "; ".join(reasons) + ")")
    raise SandboxUnavailableError(f"sandbox refused: the configured backend does not work here ({reasons[0]})")


def _candidate(name: Backend, binary: str, cgroups: _CgroupSupport) -> _Probe:
    """What the backend would give here, before running anything in it; or why it cannot apply."""
    root = os.geteuid() == 0
    common = ("no-new-privs", "rlimits", "empty-env")
    cgroup = (f"cgroup-v{cgroups.host.version}",) if cgroups.host is not None else ()
    if name in ISOLATING:
        path = shutil.which(binary)
        if path is None:
            package = "apt package 'bubblewrap'" if name == "bwrap" else "util-linux"
            return _Probe(None, f"{binary} not found on PATH (install {package})")
        if name == "unshare" and not root:
            return _Probe(None, "needs a worker running as root")
        if cgroups.problem is not None:
            return _Probe(None, f"no per-run cgroup: {cgroups.problem}")
        users = ("unprivileged-uid",) if root else ("userns",)
        front = ("bwrap",) if name == "bwrap" else ()
        return _Probe(_Backend(name, (*front, *_NAMESPACE_PROTECTIONS, *users, *cgroup, *common), drop_uid=root,
                               binary=path, cgroup=cgroups.host), None)
    if not root:
        return _Probe(_Backend(name, (*cgroup, *common), drop_uid=False, binary=None, cgroup=cgroups.host), None)
    # Never run generated code as root. Without a mount namespace another uid can only start the interpreter
    # if its directories are readable by everyone (not so under /root, e.g. pyenv's).
    hidden = [path for path in _python_dirs() if not _world_reachable(path)]
    if hidden:
        return _Probe(None, f"the program would run as root: the interpreter's directory {hidden[0]} is not "
                            "readable by other users")
    return _Probe(_Backend(name, ("unprivileged-uid", *cgroup, *common), drop_uid=True, binary=None,
                           cgroup=cgroups.host), None)


def _probe(name: Backend, binary: str) -> _Probe:
    """Run a tiny program in the backend; it works if that program printed what it should."""
    cgroups = _cgroups()
    probe = _candidate(name, binary, cgroups)
    candidate = probe.backend
    if candidate is None:
        logger.warning("sandbox backend unavailable", extra={"backend": name, "reason": probe.reason})
        return probe
    box: list[SandboxResult | BaseException] = []

    def run() -> None:  # a fresh thread: asyncio.run must not meet the caller's running loop
        try:
            box.append(asyncio.run(_run(candidate, {"probe.py": "print('sandbox-ok')\n"}, ["python", "probe.py"],
                                        SandboxLimits(wall_s=20), None)))
        except BaseException as exc:  # report below; never kill the caller
            box.append(exc)

    thread = threading.Thread(target=run, name=f"sandbox-probe-{name}", daemon=True)
    thread.start()
    thread.join()
    outcome = box[0] if box else RuntimeError("probe thread died")
    if isinstance(outcome, SandboxResult) and outcome.exit_code == 0 and outcome.stdout.strip() == "sandbox-ok":
        if name in ISOLATING:
            logger.info("sandbox backend works", extra={"backend": name, "protections": candidate.protections})
        else:
            logger.warning("sandbox backend works, without isolation", extra={"backend": name,
                                                                             "protections": candidate.protections})
        if cgroups.host is None and cgroups.problem is None:
            logger.warning("no cgroup controllers on this host: memory and process limits hold per process only",
                           extra={"backend": name})
        return _Probe(candidate, None)
    if isinstance(outcome, BaseException):
        why = str(outcome)
    else:
        why = " ".join(outcome.stderr.split())[-300:] or outcome.signal or f"exit status {outcome.exit_code}"
    logger.warning("sandbox backend unavailable", extra={"backend": name, "reason": why})
    return _Probe(None, why)


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


# --- cgroups --------------------------------------------------------------------------------------------------

_CONTROLLERS = ("memory", "pids", "cpu")
_CPU_PERIOD_US = 100_000  # with a quota of one period: at most one CPU per run
_HELPER_PROCESSES = 3  # besides the program's: bwrap's two (or unshare's one) and the launcher
_CGROUP_PREFIX = "orch-sbx-"


@dataclass(frozen=True, slots=True)
class _CgroupHost:
    version: int
    parents: Mapping[str, str]  # controller → the directory each run's cgroup is created in (v2: one for all)


@dataclass(frozen=True, slots=True)
class _CgroupSupport:
    host: _CgroupHost | None
    problem: str | None  # the host has the controllers, but no per-run cgroup can be made here: why


@dataclass(frozen=True, slots=True)
class _RunCgroup:
    version: int
    dirs: Mapping[str, Path]  # controller → this run's cgroup directory (v2: the same for all)

    @property
    def unique_dirs(self) -> list[Path]:
        return sorted(set(self.dirs.values()))


_cgroup_lock = threading.Lock()
_cgroup_support: list[_CgroupSupport] = []


def _cgroups() -> _CgroupSupport:
    """Where per-run cgroups go on this host (found once per process)."""
    with _cgroup_lock:
        if not _cgroup_support:
            support = _find_cgroups()
            if support.problem is not None:
                logger.warning("no per-run cgroup possible", extra={"reason": support.problem})
            _cgroup_support.append(support)
        return _cgroup_support[0]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)  # mountinfo writes " " as \040


def _find_cgroups() -> _CgroupSupport:
    """cgroup v2 if its hierarchy has memory, pids and cpu; else the v1 hierarchies of those three; else none."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        membership = Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        return _CgroupSupport(None, None) if exc.errno == errno.ENOENT else _CgroupSupport(None, str(exc))
    own: dict[str, str] = {}  # "" (v2) or a v1 controller → the worker's cgroup path
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            own[""] = path
        for controller in filter(None, controllers.split(",")):
            own[controller] = path
    v2_dir: str | None = None
    v1_dirs: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        keys = [""] if tail[0] == "cgroup2" else [c for c in _CONTROLLERS if c in tail[2].split(",")]
        for key in keys:
            path = own.get(key)
            if path is None or (key == "" and v2_dir is not None) or key in v1_dirs:
                continue
            relative = path[len(root):] if root != "/" and (path + "/").startswith(root.rstrip("/") + "/") else path
            directory = point.rstrip("/") + "/" + relative.strip("/")
            if key == "":
                v2_dir = directory.rstrip("/") or "/"
            else:
                v1_dirs[key] = directory.rstrip("/") or "/"
    if v2_dir is not None:
        mount = _mount_root(v2_dir, mountinfo)
        if set(_CONTROLLERS) <= set(_read(Path(mount, "cgroup.controllers")).split()):
            return _v2_support(v2_dir, mount)
    if set(v1_dirs) == set(_CONTROLLERS):
        return _checked(_CgroupHost(1, v1_dirs))
    return _CgroupSupport(None, None)


def _mount_root(directory: str, mountinfo: str) -> str:
    """The mount point of the cgroup2 hierarchy holding `directory`."""
    best = "/"
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and tail[:1] == ["cgroup2"]:
            point = _unescape(fields[4])
            if (directory + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
                best = point
    return best


def _v2_support(own: str, mount: str) -> _CgroupSupport:
    """cgroup v2: runs go under the worker's cgroup if the controllers can be enabled for its children (the
    root cgroup, or one without processes), else beside it when its parent hands them down (as root)."""
    wanted = set(_CONTROLLERS)
    subtree = Path(own, "cgroup.subtree_control")
    if not wanted <= set(_read(subtree).split()):
        try:
            subtree.write_text(" ".join(f"+{c}" for c in _CONTROLLERS))
        except OSError as exc:
            parent = os.path.dirname(own)
            if own.rstrip("/") != mount.rstrip("/") and wanted <= set(_read(Path(own, "cgroup.controllers")).split()):
                support = _checked(_CgroupHost(2, {c: parent for c in _CONTROLLERS}))
                if support.host is not None:
                    return support
            return _CgroupSupport(None, f"cgroup v2: cannot enable {', '.join(_CONTROLLERS)} below {own} "
                                        f"({exc.strerror}); run the worker in a cgroup delegated to it")
    return _checked(_CgroupHost(2, {c: own for c in _CONTROLLERS}))


def _checked(host: _CgroupHost) -> _CgroupSupport:
    """The host if a run's cgroup can really be made, limited and removed there; else why not."""
    try:
        cgroup = _cgroup_create(host, SandboxLimits())
    except OSError as exc:
        return _CgroupSupport(None, f"cgroup v{host.version}: {exc}")
    _cgroup_remove(cgroup)
    return _CgroupSupport(host, None)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _cgroup_create(host: _CgroupHost, limits: SandboxLimits) -> _RunCgroup:
    """A fresh cgroup for one run, with its limits: memory (no swap), processes, one CPU."""
    name = f"{_CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    dirs = {c: Path(parent, name) for c, parent in host.parents.items()}
    cgroup = _RunCgroup(host.version, dirs)
    made: list[Path] = []
    try:
        for directory in cgroup.unique_dirs:
            directory.mkdir(mode=0o755)
            made.append(directory)
        memory, pids = str(limits.memory_mb << 20), str(limits.max_processes + _HELPER_PROCESSES)
        if host.version == 2:
            files = [("memory", "memory.max", memory), ("memory", "memory.swap.max", "0"),
                     ("pids", "pids.max", pids), ("cpu", "cpu.max", f"{_CPU_PERIOD_US} {_CPU_PERIOD_US}")]
        else:
            # v1 without swap accounting has no memsw file: swappiness 0 keeps the run's memory out of swap.
            files = [("memory", "memory.limit_in_bytes", memory), ("memory", "memory.memsw.limit_in_bytes", memory),
                     ("memory", "memory.swappiness", "0"), ("pids", "pids.max", pids),
                     ("cpu", "cpu.cfs_period_us", str(_CPU_PERIOD_US)), ("cpu", "cpu.cfs_quota_us", str(_CPU_PERIOD_US))]
        for controller, filename, value in files:
            path = dirs[controller] / filename
            if filename in ("memory.swap.max", "memory.memsw.limit_in_bytes", "memory.swappiness") \
                    and not path.exists():
                continue  # no swap (accounting) on this host
            path.write_text(value)
    except OSError:
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return cgroup


def _cgroup_pids(cgroup: _RunCgroup) -> list[int]:
    """Live (not zombie) processes in the run's cgroup."""
    found: set[int] = set()
    for directory in cgroup.unique_dirs:
        found.update(int(line) for line in _read(directory / "cgroup.procs").split() if line.isdigit())
    return [pid for pid in sorted(found) if not _is_zombie(pid)]


def _is_zombie(pid: int) -> bool:
    text = _read(Path(f"/proc/{pid}/stat"))
    return not text or text[text.rfind(")") + 2:][:1] in ("Z", "X")


def _cgroup_kill(cgroup: _RunCgroup, timeout_s: float = 5.0) -> None:
    """SIGKILL every process in the run's cgroup until none is left (pids.max bounds a fork bomb's race)."""
    for directory in cgroup.unique_dirs:
        kill_file = directory / "cgroup.kill"  # cgroup v2, Linux 5.14+: the kernel kills the whole tree at once
        if cgroup.version == 2 and kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
    _kill_all(lambda: _cgroup_pids(cgroup), {"cgroup": str(cgroup.unique_dirs[0])}, timeout_s)


def _kill_all(pids_of: Callable[[], list[int]], where: dict[str, Any], timeout_s: float) -> None:
    """SIGKILL the processes `pids_of` finds until it finds none (a fork bomb keeps adding some for a while)."""
    deadline = time.monotonic() + timeout_s
    while pids := pids_of():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            logger.warning("sandbox processes survive SIGKILL", extra={**where, "pids": pids[:20]})
            return
        time.sleep(0.005)  # let the kills land before looking again


def _cgroup_oom_kills(cgroup: _RunCgroup) -> int:
    """How many of the run's processes the kernel killed for exceeding its memory limit."""
    name = "memory.events" if cgroup.version == 2 else "memory.oom_control"
    for line in _read(cgroup.dirs["memory"] / name).splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_remove(cgroup: _RunCgroup, timeout_s: float = 5.0) -> None:
    """Remove the run's (empty) cgroup; its last processes may take a moment to leave it."""
    for directory in cgroup.unique_dirs:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    logger.warning("sandbox cgroup not removed", extra={"cgroup": str(directory), "error": str(exc)})
                    break
                time.sleep(0.005)


# --- the filesystem of the namespace backends -----------------------------------------------------------------

Op = list[str | int]  # ["ro-bind", src, dst] | ["symlink", target, dst] | ["dir", dst, mode] | ["tmpfs", dst, mode,
#                       size_bytes] | ["proc", dst] | ["dev", dst]


def _fs_plan(limits: SandboxLimits) -> list[Op]:
    """The new root: system dirs read-only, own /proc, minimal /dev, private /tmp, /sandbox, then the interpreter.

    The interpreter's directories come last, bound over the private mounts: a venv under /tmp stays visible.
    Raises:
        SandboxUnavailableError: an interpreter directory would cover one of the private mounts (say /tmp itself).
    """
    ops: list[Op] = [["ro-bind", "/usr", "/usr"]]
    made: set[str] = {"/", "/usr"}
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            ops.append(["symlink", os.readlink(host), host])
        elif os.path.isdir(host):
            ops.append(["ro-bind", host, host])
        made.add(host)
    for name in ("ld.so.cache", "localtime"):  # shared-library lookup, local time; no secrets
        host = f"/etc/{name}"
        if os.path.exists(host):
            ops.append(["ro-bind", os.path.realpath(host), host])
    size = max(_TMPFS_FACTOR * limits.file_size_mb, _TMPFS_MIN_MB) << 20
    private: list[Op] = [["proc", "/proc"], ["dev", "/dev"], ["tmpfs", "/tmp", 0o1777, size],
                         ["tmpfs", "/dev/shm", 0o1777, size], ["tmpfs", SANDBOX_DIR, 0o755, size]]
    ops += private
    mounts = [str(op[1]) for op in private]
    made.update(mounts)
    for path in _python_dirs():
        if path == "/usr" or path.startswith("/usr/"):
            continue
        covered = [m for m in mounts if m == path or m.startswith(path + "/")]
        if covered:
            raise SandboxUnavailableError(f"the interpreter's directory {path} would cover the sandbox's private "
                                          f"{covered[0]}: install Python (or the venv) in a directory of its own")
        for parent in reversed(PurePosixPath(path).parents):
            if str(parent) not in made:
                made.add(str(parent))
                ops.append(["dir", str(parent), 0o755])
        made.add(path)
        ops.append(["ro-bind", path, path])
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
        for here, dirs, files in os.walk(src):  # what was copied only: an interpreter may be bound inside dst
            for name in dirs + files:
                os.chown(os.path.join(dst, os.path.relpath(os.path.join(here, name), src)), uid, uid)
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
    _kill_all(lambda: _pids_of_uid(uid), {"uid": uid}, timeout_s)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _prepare(backend: _Backend, files: Mapping[str, str], uid: int | None) -> Path:
    """A fresh private directory with the files: `input/` (copied in by the launcher) or `work/` (plain)."""
    job = Path(tempfile.mkdtemp(prefix="orch-sbx-"))
    try:
        target = job / ("work" if backend.name == "unsafe-plain" else "input")
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
        if backend.name == "unsafe-plain" and uid is not None:
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


# Enters the run's cgroup (each `cgroup.procs` before `--`), then execs the backend: everything the run starts
# is in the cgroup from its first instruction on.
_ENTER_CGROUP = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


def _command(backend: _Backend, job: Path, limits: SandboxLimits, uid: int | None, argv: list[str],
             status_fd: int, cgroup: _RunCgroup | None) -> list[str]:
    """The argv that runs the launcher in the backend (in the run's cgroup), with its configuration."""
    enter = ["/bin/sh", "-c", _ENTER_CGROUP, "sh", *(str(d / "cgroup.procs") for d in cgroup.unique_dirs), "--"] \
        if cgroup is not None else []
    workdir = str(job / "work") if backend.name == "unsafe-plain" else SANDBOX_DIR
    program = [sys.executable if argv[0] in ("python", "python3") else argv[0], *argv[1:]]
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", "HOME": workdir,
           "LANG": "C.UTF-8", "TMPDIR": "/tmp" if backend.name != "unsafe-plain" else workdir}
    cfg: dict[str, object] = {"status_fd": status_fd, "uid": uid, "rlimits": _rlimits(limits, uid),
                              "workdir": workdir, "argv": program, "env": env, "root": None, "input": None, "ops": []}
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    if backend.name == "bwrap":
        assert backend.binary is not None
        cfg["input"] = _INPUT_DIR
        namespaces = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                      "--hostname", "sandbox", "--die-with-parent"]
        if os.geteuid() != 0:
            namespaces.append("--unshare-user")  # unprivileged bwrap mounts inside a user namespace
        return [*enter, backend.binary, *namespaces, *_bwrap_args(_fs_plan(limits)), "--ro-bind", str(job / "input"),
                _INPUT_DIR, "--chdir", "/", *launcher, json.dumps(cfg)]
    if backend.name == "unshare":
        assert backend.binary is not None
        cfg.update(root=str(job / "root"), input=str(job / "input"), ops=_fs_plan(limits))
        return [*enter, backend.binary, "--net", "--pid", "--fork", "--kill-child", "--mount", "--propagation",
                "private", "--ipc", "--uts", "--cgroup", *launcher, json.dumps(cfg)]
    return [*enter, *launcher, json.dumps(cfg)]


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
    cgroup: _RunCgroup | None = None
    try:
        # A thread runs on when its awaiter is cancelled: wait for what it made, so that it is removed below.
        setup = asyncio.ensure_future(asyncio.to_thread(_set_up, backend, files, uid, limits))
        try:
            job, cgroup = await asyncio.shield(setup)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                job, cgroup = await asyncio.shield(setup)
            raise
        return await _execute(backend, job, argv, limits, stdin, uid, cgroup)
    finally:
        # On cancellation too, and to its end even if cancelled again: nothing of the run outlives it.
        await asyncio.shield(asyncio.to_thread(_clean_up, job, cgroup, uid))


def _set_up(backend: _Backend, files: Mapping[str, str], uid: int | None,
            limits: SandboxLimits) -> tuple[Path, _RunCgroup | None]:
    """The run's directory with its files, and its cgroup (if the host has them)."""
    job = _prepare(backend, files, uid)
    if backend.cgroup is None:
        return job, None
    try:
        return job, _cgroup_create(backend.cgroup, limits)
    except OSError as exc:
        _remove(job)
        raise SandboxUnavailableError(f"sandbox ({backend.name}) cannot create the run's cgroup: {exc}") from None


def _clean_up(job: Path | None, cgroup: _RunCgroup | None, uid: int | None) -> None:
    """Kill what is left of a run (in its cgroup, as its uid), then remove its cgroup and directory."""
    if cgroup is not None:
        _cgroup_kill(cgroup)
    if uid is not None:
        _kill_uid(uid)
    if cgroup is not None:
        _cgroup_remove(cgroup)
    if job is not None:
        _remove(job)
    if uid is not None:
        _release_uid(uid)


async def _execute(backend: _Backend, job: Path, argv: list[str], limits: SandboxLimits, stdin: str | None,
                   uid: int | None, cgroup: _RunCgroup | None) -> SandboxResult:
    loop = asyncio.get_running_loop()
    capture = _Capture(limits.max_output_bytes, max(_FLOOD_FACTOR * limits.max_output_bytes, _FLOOD_MIN_BYTES))
    status_r, status_w = os.pipe()
    try:
        command = await asyncio.to_thread(_command, backend, job, limits, uid, argv, status_w, cgroup)
        started = time.monotonic()
        spawn = asyncio.ensure_future(loop.subprocess_exec(
            lambda: _Protocol(loop), *command, stdin=PIPE if stdin is not None else DEVNULL, stdout=PIPE, stderr=PIPE,
            pass_fds=(status_w,), start_new_session=True, env=_LAUNCHER_ENV, cwd="/"))
        try:
            transport, protocol = await asyncio.shield(spawn)
        except OSError as exc:
            raise SandboxUnavailableError(f"sandbox ({backend.name}) could not start: {exc}") from None
        except asyncio.CancelledError:
            # Cancelled mid-spawn, asyncio would kill the direct child only and then wait for pipes the rest of
            # the tree holds open: let the spawn finish, then kill the whole group (and the caller the cgroup).
            with contextlib.suppress(Exception):
                spawned, _ = await asyncio.shield(spawn)
                _kill_group(spawned.get_pid())
                spawned.close()
            raise
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
            # The whole process group (with bwrap/unshare: the namespaces die with it), then whatever is left in
            # the run's cgroup (a daemon that left the group) or runs as its uid.
            _kill_group(pgid)
            if cgroup is not None:
                await asyncio.to_thread(_cgroup_kill, cgroup)
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
        oom_kills = await asyncio.to_thread(_cgroup_oom_kills, cgroup) if cgroup is not None else 0
    finally:
        os.close(status_r)
    return _result(backend, limits, capture, status, killed, transport.get_returncode(), duration_s, oom_kills)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _result(backend: _Backend, limits: SandboxLimits, capture: _Capture, status: Mapping[str, object] | None,
            killed: Literal["wall", "output"] | None, returncode: int | None, duration_s: float,
            oom_kills: int = 0) -> SandboxResult:
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
    elif exit_code != 0 and oom_kills > 0:
        violation = f"memory limit ({limits.memory_mb} MB)"  # the run's cgroup: the kernel killed a process
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
