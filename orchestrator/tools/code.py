"""The `sandbox.run` and `sandbox.test` python-kind tools: run an LLM's code, or its tests, in the sandbox.

Both take raw code or an LLM answer with Markdown fenced blocks. A non-zero exit, a failing test or a
limit hit is a `ToolError` with a short message (e.g. "sandbox: wall time limit (10s) exceeded"); so is a
worker where the sandbox cannot isolate the code (retryable: another worker may have one), naming why.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import cast

from orchestrator.adapters.sandbox import (
    SandboxConfig,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    run_python,
)
from orchestrator.errors import ToolError
from orchestrator.settings import SandboxSettings
from orchestrator.tools.base import JsonValue

logger = logging.getLogger(__name__)

MAX_LIMITS = SandboxLimits()  # a tool input may lower these, never raise them
MAX_SOURCE_CHARS = 200_000
MAX_STDIN_CHARS = 1_000_000
_MESSAGE_CHARS = 300
_UNAVAILABLE_CHARS = 500  # an unavailable sandbox's message names each backend's reason
_PYTHON_LANGUAGES = {"python", "py", "python3", "py3"}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")
_SUMMARY_MARK = "@@orch-test-summary"

_LIMITS_SCHEMA: dict[str, JsonValue] = {
    "type": "object",
    "description": "lower the sandbox's limits for this run (values above the defaults are capped)",
    "properties": {
        "cpu_s": {"type": "number", "exclusiveMinimum": 0},
        "memory_mb": {"type": "integer", "minimum": 32},
        "file_size_mb": {"type": "integer", "minimum": 1},
        "max_processes": {"type": "integer", "minimum": 1},
        "wall_s": {"type": "number", "exclusiveMinimum": 0},
        "max_output_bytes": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}


def extract_code_blocks(text: str) -> list[tuple[str, str]]:
    """The (language, code) of each Markdown fenced block in `text`, in order; language "" if none given.

    Languages are lower-cased and "py"/"python3" become "python". A block the text ends inside (an answer
    cut short) still counts. Indentation of an indented fence (in a list item) is removed from its lines.
    """
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        info = opening["info"].strip()
        if fence[0] == "`" and "`" in info:  # not a fence: inline code such as ```x``` on one line
            continue
        language = info.split()[0].lower().strip("{}.") if info else ""
        language = "python" if language in _PYTHON_LANGUAGES else language
        body: list[str] = []
        while index < len(lines):
            line = lines[index]
            index += 1
            stripped = line.strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence) and \
                    len(line) - len(line.lstrip(" ")) <= 3:
                break
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip(" "))
        blocks.append((language, "\n".join(body) + ("\n" if body else "")))
    return blocks


def python_code(text: str) -> str:
    """The code to run from `text`: its first python (or untagged) fenced block, else `text` itself."""
    blocks = extract_code_blocks(text)
    if not blocks:
        return text
    for wanted in ("python", ""):
        for language, code in blocks:
            if language == wanted:
                return code
    raise ToolError(f"no python code block in the source (found: {', '.join(sorted({b[0] for b in blocks}))})")


def sandbox_limits(requested: object) -> SandboxLimits:
    """The limits for one call: the defaults, lowered where the tool input asks for lower ones."""
    if requested is None:
        return MAX_LIMITS
    if not isinstance(requested, Mapping):
        raise ToolError("limits must be an object")
    known = {f.name for f in fields(SandboxLimits)}
    changes: dict[str, float | int] = {}
    for key, value in cast(Mapping[object, object], requested).items():
        if not isinstance(key, str) or key not in known:
            raise ToolError(f"limits: unknown limit {key!r} (known: {', '.join(sorted(known))})")
        maximum = getattr(MAX_LIMITS, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ToolError(f"limits.{key} must be a positive number")
        capped = min(value, maximum)
        changes[key] = capped if key in ("cpu_s", "wall_s") else int(capped)
    try:
        return replace(MAX_LIMITS, **changes)
    except ValueError as exc:
        raise ToolError(f"limits: {exc}") from None


_config = SandboxConfig()  # this process's; the worker sets it from settings.sandbox


def configure(settings: SandboxSettings) -> None:
    """Set how this process's sandbox tools run code: `settings.sandbox` (the backend, bubblewrap's path)."""
    global _config
    _config = SandboxConfig(backend=settings.backend, bwrap=settings.bwrap)


def _text(tool_input: Mapping[str, JsonValue], key: str, required: bool = True, max_chars: int = MAX_SOURCE_CHARS
          ) -> str | None:
    value = tool_input.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ToolError(f"{key} must be a non-empty string")
    if len(value) > max_chars:
        raise ToolError(f"{key} is too long ({len(value)} characters, at most {max_chars})")
    return value


def _short(text: str, limit: int = _MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _failure(result: SandboxResult, what: str = "") -> ToolError | None:
    """The step error for a run that hit a limit or failed; None if it succeeded."""
    suffix = f" {what}" if what else ""
    if result.violation is not None:
        return ToolError(_short(f"sandbox: {result.violation} exceeded{suffix}"))
    if result.signal is not None:
        return ToolError(_short(f"sandbox: killed by {result.signal}{suffix}"))
    if result.exit_code != 0:
        detail = _last_line(result.stderr) or _last_line(result.stdout)
        return ToolError(_short(f"sandbox: exited with {result.exit_code}{suffix}" + (f": {detail}" if detail else "")))
    return None


async def _sandboxed(files: Mapping[str, str], entrypoint: list[str], limits: SandboxLimits,
                     stdin: str | None = None) -> SandboxResult:
    try:
        return await run_python(files, entrypoint, limits, stdin=stdin, config=_config)
    except SandboxUnavailableError as exc:
        logger.error("sandbox unavailable", extra={"reason": str(exc), "backend": _config.backend})
        # Retryable: another worker may have a sandbox.
        raise ToolError(_short(str(exc), _UNAVAILABLE_CHARS), retryable=True) from None


async def run_code(tool_input: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Run Python code (raw, or an answer's first python block) in the sandbox as `main.py`; its output."""
    source = python_code(_text(tool_input, "source" if "source" in tool_input else "prompt") or "")
    stdin = _text(tool_input, "stdin", required=False, max_chars=MAX_STDIN_CHARS)
    limits = sandbox_limits(tool_input.get("limits"))
    result = await _sandboxed({"main.py": source}, ["python", "main.py"], limits, stdin)
    error = _failure(result)
    if error is not None:
        raise error
    return {"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code,
            "duration_s": result.duration_s, "truncated": result.truncated, "protections": list(result.protections)}


run_code.input_schema = {  # pyright: ignore[reportFunctionMemberAccess]
    "type": "object",
    "properties": {
        "source": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                   "description": "Python code, or an answer whose first ```python block is run"},
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                   "description": "the same as source (the CLI's text argument)"},
        "stdin": {"type": "string", "maxLength": MAX_STDIN_CHARS},
        "limits": _LIMITS_SCHEMA,
    },
    "anyOf": [{"required": ["source"]}, {"required": ["prompt"]}],
    "additionalProperties": False,
}


# Runs unittest.TestCase classes and pytest-style `test_*` functions of test_solution.py with the stdlib,
# then prints a summary line tagged with a nonce read from stdin first (so the code under test, which runs
# in the same process and cannot read it any more, does not print a passing summary by accident).
_RUNNER = r'''
import ast, contextlib, io, json, sys, traceback, types, unittest

nonce = sys.stdin.readline().strip()
report = io.StringIO()
suite = unittest.TestSuite()
import_error = None
try:
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the summary; test output is buffered
        import test_solution
except BaseException:
    import_error = traceback.format_exc()
else:
    suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(test_solution))
    for name, fn in sorted(vars(test_solution).items()):
        if name.startswith("test") and isinstance(fn, types.FunctionType) and fn.__module__ == "test_solution":
            suite.addTest(unittest.FunctionTestCase(fn, description=name))
result = unittest.TextTestRunner(stream=report, verbosity=2, buffer=True).run(suite)
def name(test):
    if isinstance(test, unittest.FunctionTestCase):
        return test.shortDescription() or test.id()
    return test.id().removeprefix("test_solution.")
failures = [{"test": name(test), "message": (text.strip().splitlines() or [""])[-1]}
            for test, text in result.failures + result.errors]
failures += [{"test": name(test), "message": "unexpected success"} for test in result.unexpectedSuccesses]
total, skipped = result.testsRun, len(result.skipped)
if import_error is not None:
    failures.insert(0, {"test": "import test_solution", "message": import_error.strip().splitlines()[-1]})
    total += 1
    report.write(import_error)
elif total == 0:
    # Plain module-level asserts: importing ran them, and they passed.
    with open("test_solution.py", encoding="utf-8") as source:
        if any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(source.read()))):
            total = 1
sys.stderr.write(report.getvalue())
summary = {"total": total, "failed": len(failures), "skipped": skipped,
           "passed": total - len(failures) - skipped, "failures": failures[:20]}
sys.__stdout__.write("\n%s:%s %s\n" % ("@@orch-test-summary", nonce, json.dumps(summary)))
sys.__stdout__.flush()
'''


async def run_tests(tool_input: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """Run the tests (test_solution.py) against the solution (solution.py) in the sandbox; pass/fail counts."""
    if "answer" in tool_input or "source" not in tool_input:
        answer = _text(tool_input, "answer" if "answer" in tool_input else "prompt") or ""
        blocks = [code for language, code in extract_code_blocks(answer) if language in ("python", "")]
        if len(blocks) < 2:
            raise ToolError(f"answer must hold two python code blocks, the solution then its tests "
                            f"(found {len(blocks)})")
        solution, tests = blocks[0], blocks[1]
    else:
        solution = python_code(_text(tool_input, "source") or "")
        tests = python_code(_text(tool_input, "tests") or "")
    limits = sandbox_limits(tool_input.get("limits"))
    nonce = secrets.token_hex(16)
    files = {"solution.py": solution, "test_solution.py": tests, "_run_tests.py": _RUNNER}
    result = await _sandboxed(files, ["python", "_run_tests.py"], limits, stdin=nonce + "\n")
    summary = _summary(result.stdout, nonce)
    if summary is None:
        raise _failure(result, "while running the tests") or ToolError(
            _short(f"tests: no result (output truncated, or the tests ended the process): "
                   f"{_last_line(result.stderr) or _last_line(result.stdout)}"))
    output = {"passed": summary["passed"], "failed": summary["failed"], "skipped": summary["skipped"],
              "total": summary["total"], "failures": summary["failures"], "output": result.stderr,
              "duration_s": result.duration_s, "truncated": result.truncated,
              "protections": list(result.protections)}
    failed, total = summary["failed"], summary["total"]
    if isinstance(failed, int) and failed > 0:
        details = "; ".join(f"{f['test']}: {f['message']}" for f in _failures(summary))
        raise ToolError(_short(f"tests failed: {failed} of {total}: {details}"))
    if total == 0:
        raise ToolError("tests: no tests found in test_solution.py (write unittest.TestCase classes, "
                        "test_* functions, or asserts)")
    return output


run_tests.input_schema = {  # pyright: ignore[reportFunctionMemberAccess]
    "type": "object",
    "properties": {
        "answer": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                   "description": "an answer with two ```python blocks: the solution (solution.py), then its "
                                  "tests (test_solution.py, importing from solution)"},
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                   "description": "the same as answer (the CLI's text argument)"},
        "source": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                   "description": "the solution (solution.py), when not given as answer"},
        "tests": {"type": "string", "minLength": 1, "maxLength": MAX_SOURCE_CHARS,
                  "description": "the tests (test_solution.py), when not given as answer"},
        "limits": _LIMITS_SCHEMA,
    },
    "anyOf": [{"required": ["answer"]}, {"required": ["prompt"]}, {"required": ["source", "tests"]}],
    "additionalProperties": False,
}


def _summary(stdout: str, nonce: str) -> dict[str, JsonValue] | None:
    """The runner's summary line (the last one carrying our nonce), or None."""
    tag = f"{_SUMMARY_MARK}:{nonce} "
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag):
            try:
                parsed: object = json.loads(line[len(tag):])
            except ValueError:
                return None
            if not isinstance(parsed, dict):
                return None
            summary = cast(dict[str, JsonValue], parsed)
            counts = ("passed", "failed", "skipped", "total")
            return summary if all(isinstance(summary.get(k), int) for k in counts) else None
    return None


def _failures(summary: Mapping[str, JsonValue]) -> list[dict[str, str]]:
    found = summary.get("failures")
    if not isinstance(found, list):
        return []
    entries = [cast(Mapping[str, object], f) for f in cast(list[object], found)[:5] if isinstance(f, dict)]
    return [{"test": str(f.get("test", "?")), "message": str(f.get("message", ""))} for f in entries]
