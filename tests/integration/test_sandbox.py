"""The sandbox with real subprocesses under real limits: each escape attempt is contained with a clear message.

Security cases run on every backend that works on this machine and gives the protection they test
(bwrap and unshare here, as root, each with a cgroup v1 per run); `available_backends()` says which. A
backend that cannot isolate is simulated by a stand-in binary that fails as bwrap does without namespaces;
other installations (a venv under /tmp, the system's Python) run as a separate worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.sandbox import (
    TRUNCATION_MARKER,
    Backend,
    SandboxConfig,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    available_backends,
    available_protections,
    run_python,
)
from orchestrator.errors import ToolError
from orchestrator.settings import SandboxSettings
from orchestrator.tools import code
from orchestrator.tools.code import extract_code_blocks, run_code, run_tests
from tests.support import RedisServer, eventually

pytestmark = pytest.mark.integration

BACKENDS = available_backends()
REPO = Path(__file__).resolve().parents[2]
SMALL = SandboxLimits(cpu_s=1, memory_mb=256, file_size_mb=1, max_processes=8, wall_s=5, max_output_bytes=4096)


def having(*protections: str) -> list[Any]:
    """The backends that give all `protections` (the case is skipped, saying why, where none does)."""
    found = [b for b in BACKENDS if set(available_protections(b)) >= set(protections)]
    return found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no sandbox backend here gives {protections}"))]


def cgrouped(*protections: str) -> list[Any]:
    """The backends giving `protections` that also run each program in a cgroup of its own."""
    found = [b for b in BACKENDS if any(p.startswith("cgroup-v") for p in available_protections(b))
             and set(available_protections(b)) >= set(protections)]
    return found or [pytest.param(None, marks=pytest.mark.skip(reason="no sandbox backend here gives a cgroup"))]


async def run(code: str, backend: Backend, limits: SandboxLimits = SMALL, *args: str) -> SandboxResult:
    return await run_python({"main.py": code}, ["python", "main.py", *args], limits, config=SandboxConfig(backend))


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (the sandboxed program, its children, bwrap, launcher)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


async def gone(marker: str) -> bool:
    return not processes_with(marker)


async def started(marker: str) -> bool:
    return bool(processes_with(marker))


def sandbox_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("orch-sbx-")}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_runs_code_with_its_files_and_stdin_then_removes_its_directory(backend: Backend) -> None:
    before = sandbox_dirs()
    files = {"main.py": "import sys, os\nfrom pkg.util import shout\nprint(shout(sys.stdin.read()))\n"
                        "print('to stderr', file=sys.stderr)\nprint(os.environ['HOME'] == os.getcwd())\n",
             "pkg/__init__.py": "", "pkg/util.py": "def shout(s):\n    return s.upper()\n"}
    result = await run_python(files, ["python", "main.py"], SMALL, stdin="hello", config=SandboxConfig(backend))
    assert (result.exit_code, result.signal, result.violation) == (0, None, None), result
    assert result.stdout == "HELLO\nTrue\n" and result.stderr == "to stderr\n"
    assert not result.truncated and not result.timed_out
    assert {"rlimits", "empty-env", "no-new-privs"} <= set(result.protections)
    assert sandbox_dirs() <= before


async def test_available_protections_name_what_the_default_backend_gives() -> None:
    result = await run_python({"m.py": "pass"}, ["python", "m.py"], SMALL)
    assert result.protections == available_protections()
    if {"bwrap", "unshare"} & set(BACKENDS):
        assert {"netns", "pidns", "private-tmp", "private-fs"} <= set(available_protections())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_infinite_loop_hits_the_cpu_limit(backend: Backend) -> None:
    result = await run("while True:\n    pass\n", backend)
    assert result.violation == "cpu time limit (1s)" and result.signal == "SIGXCPU" and not result.timed_out


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_sleeping_loop_hits_the_wall_limit(backend: Backend) -> None:
    limits = SandboxLimits(cpu_s=1, wall_s=1, max_processes=8)
    result = await run("import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.05)\n", backend, limits)
    assert result.timed_out and result.violation == "wall time limit (1s)" and result.exit_code is None
    assert result.stdout == "started\n"  # output so far is kept


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_memory_bomb_hits_the_memory_limit(backend: Backend) -> None:
    limits = SandboxLimits(memory_mb=128, max_processes=8, wall_s=5)
    result = await run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n", backend, limits)
    assert result.violation == "memory limit (128 MB)" and "MemoryError" in result.stderr


@pytest.mark.parametrize("backend", having("unprivileged-uid"))
async def test_a_fork_bomb_is_capped_and_nothing_of_it_survives(backend: Backend) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    result = await run("import os\nwhile True:\n    os.fork()\n", backend, SMALL, marker)
    assert result.violation == "process limit (8)", result
    assert "Resource temporarily unavailable" in result.stderr
    await eventually(lambda: gone(marker), timeout_s=5, what="no process of the fork bomb left")

    counted = await run("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                        "            time.sleep(60)\n        n += 1\nexcept OSError:\n    print(n)\n", backend)
    assert counted.exit_code == 0 and 0 < int(counted.stdout) < SMALL.max_processes


def cgroup_dir(pid: int, controller: str) -> Path:
    """The directory of `pid`'s cgroup holding `controller` (its v1 hierarchy, else the v2 one)."""
    entries = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    v1 = [path for _, names, path in entries if controller in names.split(",")]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _, options = tail.split()[:3]
        point = fields.split()[4]
        if v1 and fstype == "cgroup" and controller in options.split(","):
            return Path(point + v1[0])
        if not v1 and fstype == "cgroup2":
            return Path(point + next(path for hierarchy, _, path in entries if hierarchy == "0"))
    raise AssertionError(f"no cgroup of {controller} for pid {pid}")


def program_pids(marker: str) -> list[int]:
    """The sandboxed program's processes (`python main.py <marker>`), not the launcher or bwrap around them."""
    found = []
    for pid in processes_with(marker):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"main.py", marker.encode()]:
                found.append(pid)
    return found


@pytest.mark.parametrize("backend", cgrouped())
async def test_a_fork_bomb_is_held_by_its_runs_cgroup_and_killed_with_it(backend: Backend) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    bomb = "import os, signal\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        signal.pause()\n"
    task = asyncio.create_task(run(bomb, backend, SandboxLimits(max_processes=8, wall_s=60, memory_mb=256), marker))

    async def all_forked() -> bool:
        return len(program_pids(marker)) == 8

    await eventually(all_forked, what="the fork bomb to reach its process limit")
    pids = program_pids(marker)
    cgroups = {cgroup_dir(pid, "pids") for pid in pids}
    assert len(cgroups) == 1 and next(iter(cgroups)).name.startswith("orch-sbx-")  # one cgroup: the run's own
    cgroup = cgroups.pop()
    assert 8 <= int((cgroup / "pids.max").read_text()) <= 8 + 3  # the program's, and the sandbox's few helpers
    memory = cgroup_dir(pids[0], "memory")
    limit = memory / ("memory.max" if (memory / "memory.max").exists() else "memory.limit_in_bytes")
    assert int(limit.read_text()) == 256 << 20
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_with(marker) == [] and not cgroup.exists() and not memory.exists()


@pytest.mark.parametrize("backend", cgrouped())
async def test_memory_is_capped_for_the_whole_run_not_per_process(backend: Backend) -> None:
    # Four processes of 96 MB each: every one within its own address-space limit, 384 MB together.
    hog = ("import os, sys\nready, gate_r, gate_w = [], *os.pipe()\nfor _ in range(4):\n    r, w = os.pipe()\n"
           "    if os.fork() == 0:\n        os.close(gate_w)\n        data = b'x' * (96 << 20)\n"
           "        os.write(w, b'1')\n        os.read(gate_r, 1)\n        os._exit(0)\n    os.close(w)\n"
           "    ready.append(r)\nfor r in ready:\n    os.read(r, 1)\nos.close(gate_w)\n"
           "killed = sum(os.WIFSIGNALED(os.wait()[1]) for _ in ready)\nprint('killed', killed)\n"
           "sys.exit(1 if killed else 0)\n")
    result = await run(hog, backend, SandboxLimits(memory_mb=160, max_processes=8, wall_s=20))
    assert result.violation == "memory limit (160 MB)", result
    assert result.stdout.split() in (["killed", "3"], ["killed", "4"])  # at most one held its 96 MB at the end


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_setsid_daemon_does_not_survive_its_run(backend: Backend) -> None:
    marker = f"daemon-{uuid.uuid4().hex}"
    daemon = ("import os, signal\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        null = os.open(os.devnull, os.O_RDWR)\n        for fd in (0, 1, 2):\n"
              "            os.dup2(null, fd)\n        os.write(w, str(os.getpid()).encode())\n"
              "        while True:\n            signal.pause()\n    os._exit(0)\nos.close(w)\n"
              "print('daemon', os.read(r, 32).decode())\n")
    result = await run(daemon, backend, SMALL, marker)
    assert result.exit_code == 0 and result.stdout.startswith("daemon "), result
    assert processes_with(marker) == []  # killed before the run returned, not eventually


@pytest.mark.parametrize("backend", having("netns"))
async def test_the_network_is_unreachable(backend: Backend, redis_server: RedisServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = ("import socket, sys\nfor port in sys.argv[1:]:\n    try:\n"
                "        socket.create_connection(('127.0.0.1', int(port)), timeout=2)\n        print('connected')\n"
                "    except OSError as exc:\n        print('blocked', exc)\n")
        result = await run(code, backend, SMALL, str(port), str(redis_server.port))  # ours, and the tests' Redis
        lines = result.stdout.splitlines()
        assert result.exit_code == 0 and len(lines) == 2 and all(x.startswith("blocked") for x in lines), result
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the listening socket


@pytest.mark.parametrize("backend", having("pidns", "private-fs"))
async def test_the_workers_environment_and_files_are_out_of_reach(backend: Backend, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ORCH_SANDBOX_TEST_SECRET", secret)
    assert os.environ["ORCH_SANDBOX_TEST_SECRET"] == secret
    private = tmp_path / "worker-only.txt"  # a file only the worker's user can read
    private.write_text(secret)
    private.chmod(0o600)
    code = ("import glob, os, sys\nprint(sorted(os.environ.items()))\n"
            "paths = ['/proc/%d/environ' % os.getppid(), '/proc/1/environ'] + sys.argv[1:]\n"
            "for path in paths + sorted(glob.glob('/proc/*/environ')):\n    try:\n"
            "        print(path, open(path, 'rb').read())\n    except OSError as exc:\n        print(path, exc)\n")
    worker = [f"/proc/{os.getpid()}/environ", str(private), f"/proc/{os.getpid()}/root{private}"]
    result = await run(code, backend, SandboxLimits(max_output_bytes=1 << 20), *worker)
    assert result.exit_code == 0 and not result.truncated
    assert "/proc/self/environ b'" in result.stdout and "HOME=" in result.stdout  # it could read its own
    assert secret not in result.stdout + result.stderr
    assert "ORCH_SANDBOX_TEST_SECRET" not in result.stdout
    for path in worker:
        assert f"{path} [Errno 2] No such file or directory" in result.stdout  # not even there to be denied


@pytest.mark.parametrize("backend", having("private-fs", "private-tmp"))
async def test_it_cannot_write_outside_its_directory(backend: Backend) -> None:
    name = f"sandbox-escape-{uuid.uuid4().hex}"
    targets = [Path(tempfile.gettempdir()) / name, REPO / name, Path.home() / name]
    code = (f"import os\nfor path in {[str(t) for t in targets]!r} + ['inside.txt']:\n    try:\n"
            "        with open(path, 'w') as f:\n            f.write('x')\n        print('wrote', path)\n"
            "    except OSError as exc:\n        print('denied', path, exc.strerror)\n")
    result = await run(code, backend)
    assert result.exit_code == 0, result
    assert "wrote inside.txt" in result.stdout  # its own directory is writable
    assert f"denied {REPO / name}" in result.stdout and f"denied {Path.home() / name}" in result.stdout
    assert [t for t in targets if t.exists()] == []  # /tmp inside is private: nothing reached the host's


@pytest.mark.parametrize("backend", BACKENDS)
async def test_large_output_is_truncated_and_a_flood_is_killed(backend: Backend) -> None:
    big = await run("print('y' * 10000)\nprint('done')\n", backend)
    assert big.exit_code == 0 and big.violation is None and big.truncated
    assert big.stdout.startswith("y" * 4096) and TRUNCATION_MARKER in big.stdout and "done" not in big.stdout
    assert len(big.stdout) < 4096 + 200

    flood = await run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", backend)
    assert flood.violation == "output limit" and flood.truncated and flood.signal == "SIGKILL"
    assert len(flood.stdout) < 4096 + 200 and TRUNCATION_MARKER in flood.stdout

    after = await run("print('still here')", backend)  # the worker survives and runs the next program
    assert after.stdout == "still here\n"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_big_file_hits_the_file_size_limit(backend: Backend) -> None:
    result = await run("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (2 << 20))\n", backend)
    assert result.violation == "file size limit (1 MB)" and "File too large" in result.stderr


@pytest.mark.parametrize("backend", having("pidns"))
async def test_cancelling_a_run_kills_it(backend: Backend) -> None:
    marker = f"cancel-{uuid.uuid4().hex}"
    task = asyncio.create_task(run("import time\ntime.sleep(60)\n", backend,
                                   SandboxLimits(wall_s=60, max_processes=8), marker))
    await eventually(lambda: started(marker), what="the sandboxed program to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: gone(marker), timeout_s=5, what="the cancelled program to be gone")


def failing(tmp_path: Path, name: str, message: str) -> str:
    """A stand-in for `name` that fails as it would where namespaces are not allowed."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    path.chmod(0o755)
    return str(path)


async def test_without_isolation_the_sandbox_refuses_and_says_why(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    bwrap = failing(tmp_path, "bwrap", "bwrap: No permissions to create new namespace")
    unshare = failing(tmp_path, "unshare", "unshare: unshare failed: Operation not permitted")
    with pytest.raises(SandboxUnavailableError) as refused:
        await run_python({"m.py": "print(1)"}, ["python", "m.py"], SMALL,
                         config=SandboxConfig(bwrap=bwrap, unshare=unshare))
    message = str(refused.value)
    assert message.startswith("sandbox refused: no backend can isolate generated code on this worker (bwrap: ")
    assert "bwrap: No permissions to create new namespace" in message and "; unshare: " in message
    logged = [r for r in caplog.records if r.getMessage() == "sandbox backend unavailable"]
    assert any(r.__dict__["backend"] == "bwrap" and "No permissions" in r.__dict__["reason"] for r in logged)

    with pytest.raises(SandboxUnavailableError, match=r"^sandbox refused: the configured backend does not work "
                                                      r"here \(bwrap: .* not found on PATH"):
        await run_python({"m.py": "print(1)"}, ["python", "m.py"], config=SandboxConfig("bwrap", str(tmp_path / "no")))

    code.configure(SandboxSettings(backend="bwrap", bwrap=bwrap))  # what the worker does with settings.sandbox
    try:
        with pytest.raises(ToolError, match="^sandbox refused: .*No permissions to create new namespace") as failed:
            await run_code({"source": "print(1)"})
        assert failed.value.tool_retryable  # another worker may have a sandbox
        with pytest.raises(ToolError, match="^sandbox refused: .*No permissions to create new namespace"):
            await run_tests({"answer": ANSWER})
    finally:
        code.configure(SandboxSettings())
    assert any(r.getMessage() == "sandbox unavailable" and "No permissions" in r.__dict__["reason"]
               for r in caplog.records)


def run_script(python: str, script: str, *args: str) -> dict[str, Any]:
    """Run `script` with another interpreter (a worker installed elsewhere); the JSON its last line prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "PYTHON"))} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([python, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir(), check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


FROM_VENV = r"""
import asyncio, json, sys
from orchestrator.adapters.sandbox import SandboxConfig, available_backends, run_python
from orchestrator.tools.code import run_code

PROGRAM = "import sys\nprint(sys.prefix)\ntry:\n    open(sys.argv[1]).read()\nexcept OSError as exc:\n    print(exc.strerror)\n"

async def main():
    backends = [b for b in available_backends() if b != "unsafe-plain"]
    runs = {b: await run_python({"m.py": PROGRAM}, ["python", "m.py", sys.argv[1]], config=SandboxConfig(b))
            for b in backends}
    tool = await run_code({"source": "print(6 * 7)"})
    return {"runs": {b: [r.exit_code, r.stdout, r.stderr] for b, r in runs.items()}, "tool": tool["stdout"]}

print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.skipif(not {"bwrap", "unshare"} & set(BACKENDS), reason="no isolating sandbox backend here")
def test_it_works_from_a_venv_under_tmp(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # under /tmp: the sandbox's private /tmp must not hide its interpreter
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    private = venv / "worker-only.txt"  # in a directory the sandbox sees, readable by the worker's user only
    private.write_text("secret")
    private.chmod(0o600)
    out = run_script(str(venv / "bin" / "python"), FROM_VENV, str(private))
    assert set(out["runs"]) == {"bwrap", "unshare"} & set(BACKENDS)  # every isolating backend works from there
    for exit_code, stdout, stderr in out["runs"].values():
        assert exit_code == 0 and stdout.splitlines()[0] == str(venv), stderr
        if os.geteuid() == 0:
            assert stdout.splitlines()[1] == "Permission denied"  # the run's own uid: not the worker's
    assert out["tool"] == "42\n"


UNSAFE = r"""
import asyncio, json
from orchestrator.adapters.sandbox import SandboxConfig, available_protections, run_python

result = asyncio.run(run_python({"m.py": "import os\nprint(os.getuid())\n"}, ["python", "m.py"],
                                config=SandboxConfig("unsafe-plain")))
print(json.dumps({"default": available_protections(), "unsafe": [result.exit_code, result.stdout, result.protections]}))
"""


def test_the_unsafe_backend_runs_only_when_chosen() -> None:
    # As root, unsafe-plain needs an interpreter other users can run: the system's (this one may be under /root).
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                                        check=False).returncode != 0:
        pytest.skip("no system Python 3.11+ to run a worker with")
    out = run_script(python, UNSAFE)
    exit_code, stdout, protections = out["unsafe"]
    assert exit_code == 0 and int(stdout) != 0 and "netns" not in protections and "empty-env" in protections
    if {"bwrap", "unshare"} & set(BACKENDS):
        assert "netns" in out["default"]  # never chosen by default


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape.py", "pkg/../../escape.py", "", "."])
async def test_file_names_that_could_escape_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        await run_python({name: "print(1)"}, ["python", "main.py"], SMALL)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=1.5)  # type: ignore[arg-type]


# --- the tools ------------------------------------------------------------------------------------------------

ANSWER = '''Here is the code.
```python
def add(a, b):
    return a + b


if __name__ == "__main__":
    print(add(2, 3))
```
And the tests:
```py
import unittest

from solution import add


class AddTest(unittest.TestCase):
    def test_adds(self):
        self.assertEqual(add(2, 3), 5)

    def test_negative(self):
        self.assertEqual(add(-1, -1), -2)


def test_zero():
    assert add(0, 0) == 0
```
'''


async def test_run_code_runs_the_first_python_block() -> None:
    output = await run_code({"source": ANSWER})
    assert output["stdout"] == "5\n" and output["exit_code"] == 0 and output["truncated"] is False
    assert output["protections"] == available_protections()


async def test_run_code_reads_stdin_and_reports_failures_clearly() -> None:
    echoed = await run_code({"prompt": "print(input()[::-1])", "stdin": "abc\n"})  # prompt: as the CLI sends it
    assert echoed["stdout"] == "cba\n"
    with pytest.raises(ToolError, match=r"^sandbox: exited with 1: ValueError: bad input$"):
        await run_code({"source": "raise ValueError('bad input')"})
    with pytest.raises(ToolError, match=r"^sandbox: wall time limit \(1s\) exceeded$"):
        await run_code({"source": "import time\ntime.sleep(30)", "limits": {"wall_s": 1, "cpu_s": 60}})
    with pytest.raises(ToolError, match="unknown limit 'network'"):
        await run_code({"source": "print(1)", "limits": {"network": 1}})
    with pytest.raises(ToolError, match="no python code block"):
        await run_code({"source": "```bash\nrm -rf /\n```"})


async def test_run_tests_counts_passing_tests() -> None:
    output = await run_tests({"answer": ANSWER})
    assert (output["passed"], output["failed"], output["total"]) == (3, 0, 3)
    assert "test_adds" in output["output"] and "OK" in output["output"]


async def test_run_tests_fails_the_step_with_the_failing_tests() -> None:
    with pytest.raises(ToolError) as failed:
        await run_tests({"answer": ANSWER.replace("return a + b", "return a - b")})
    assert str(failed.value).startswith("tests failed: 2 of 3: ")
    assert "AddTest.test_adds: AssertionError: -1 != 5" in str(failed.value)
    assert failed.value.tool_retryable is False


async def test_run_tests_takes_separate_source_and_tests() -> None:
    output = await run_tests({"source": "def double(x):\n    return 2 * x\n",
                              "tests": "from solution import double\nassert double(4) == 8\n"})
    assert (output["passed"], output["failed"]) == (1, 0)
    with pytest.raises(ToolError, match="tests failed: 1 of 1: import test_solution: AssertionError"):
        await run_tests({"source": "def double(x):\n    return x\n",
                         "tests": "from solution import double\nassert double(4) == 8\n"})
    with pytest.raises(ToolError, match="answer must hold two python code blocks"):
        await run_tests({"answer": "```python\nprint(1)\n```"})
    with pytest.raises(ToolError, match=r"^sandbox: wall time limit \(1s\) exceeded while running the tests$"):
        await run_tests({"source": "import time\ntime.sleep(30)\n", "tests": "import solution\n",
                         "limits": {"wall_s": 1}})


@pytest.mark.parametrize(("text", "blocks"), [
    ("no code here", []),
    ("```python\nprint(1)\n```", [("python", "print(1)\n")]),
    ("intro\n```py\na = 1\n```\ntext\n```\nb = 2\n```\n", [("python", "a = 1\n"), ("", "b = 2\n")]),
    ("```Python3 title=x\nc = 3\n```", [("python", "c = 3\n")]),
    ("```bash\nls\n```\n~~~python\nd = '```'\n~~~", [("bash", "ls\n"), ("python", "d = '```'\n")]),
    ("````python\ne = '''\n```\n'''\n````", [("python", "e = '''\n```\n'''\n")]),
    ("1. step\n   ```python\n   if x:\n       y()\n   ```", [("python", "if x:\n    y()\n")]),
    ("cut short:\n```python\nf = 1\n", [("python", "f = 1\n")]),
    ("inline ```python x``` only", []),
    ("```python\n```", [("python", "")]),
])
def test_extract_code_blocks(text: str, blocks: list[tuple[str, str]]) -> None:
    assert extract_code_blocks(text) == blocks
