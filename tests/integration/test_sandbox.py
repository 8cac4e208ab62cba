"""The sandbox with real subprocesses under real limits: each escape attempt is contained with a clear message.

Security cases run on every backend that works on this machine and gives the protection they test
(bwrap and unshare here, as root); `available_backends()` says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.sandbox import (
    TRUNCATION_MARKER,
    Backend,
    SandboxLimits,
    SandboxResult,
    available_backends,
    available_protections,
    run_python,
)
from orchestrator.errors import ToolError
from orchestrator.tools.code import extract_code_blocks, run_code, run_tests
from tests.support import eventually

pytestmark = pytest.mark.integration

BACKENDS = available_backends()
REPO = Path(__file__).resolve().parents[2]
SMALL = SandboxLimits(cpu_s=1, memory_mb=256, file_size_mb=1, max_processes=8, wall_s=5, max_output_bytes=4096)


def having(*protections: str) -> list[Any]:
    """The backends that give all `protections` (the case is skipped, saying why, where none does)."""
    found = [b for b in BACKENDS if set(available_protections(b)) >= set(protections)]
    return found or [pytest.param(None, marks=pytest.mark.skip(reason=f"no sandbox backend here gives {protections}"))]


async def run(code: str, backend: Backend, limits: SandboxLimits = SMALL, *args: str) -> SandboxResult:
    return await run_python({"main.py": code}, ["python", "main.py", *args], limits, backend=backend)


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
    result = await run_python(files, ["python", "main.py"], SMALL, stdin="hello", backend=backend)
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


@pytest.mark.parametrize("backend", having("netns"))
async def test_the_network_is_unreachable(backend: Backend) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = ("import socket\ntry:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\n"
                "except OSError as exc:\n    print('blocked', exc)\n")
        result = await run(code, backend)
        assert result.exit_code == 0 and result.stdout.startswith("blocked"), result
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the listening socket


@pytest.mark.parametrize("backend", having("unprivileged-uid"))
async def test_host_environment_secrets_are_invisible(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ORCH_SANDBOX_TEST_SECRET", secret)
    assert os.environ["ORCH_SANDBOX_TEST_SECRET"] == secret
    code = ("import glob, os\nprint(sorted(os.environ.items()))\n"
            f"paths = ['/proc/%d/environ' % os.getppid(), '/proc/1/environ', '/proc/{os.getpid()}/environ']\n"
            "for path in paths + sorted(glob.glob('/proc/*/environ')):\n    try:\n"
            "        print(path, open(path, 'rb').read())\n    except OSError as exc:\n        print(path, exc)\n")
    result = await run(code, backend, SandboxLimits(max_output_bytes=1 << 20))
    assert result.exit_code == 0 and not result.truncated
    assert "/proc/self/environ b'" in result.stdout and "HOME=" in result.stdout  # it could read its own
    assert secret not in result.stdout + result.stderr
    assert "ORCH_SANDBOX_TEST_SECRET" not in result.stdout


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
