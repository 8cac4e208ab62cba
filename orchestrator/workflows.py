"""The workflows sagas can run: the built-in `code_pipeline` plus those defined in settings."""

from __future__ import annotations

from orchestrator.saga import Approval, Compensation, Retry, StepDefinition, WorkflowDefinition

PLAN_SYSTEM = (
    "You are a senior engineer. Plan how to implement the requested Python function: the approach, "
    "edge cases, and the tests that prove it. Be brief; do not write the code."
)
CODE_SYSTEM = (
    "Write the Python implementation as one ```python fenced block (the module solution.py), then "
    "unittest tests as a second ```python block (test_solution.py, importing from solution). "
    "No other code blocks."
)


def code_pipeline(planner_tool: str, coder_tool: str, step_timeout_s: float) -> WorkflowDefinition:
    """reasoning → codegen → sandbox exec → test → deploy; deploy's compensation restores the previous version."""
    llm_retry = Retry(max_attempts=2, backoff_s=1.0)
    return WorkflowDefinition(
        name="code_pipeline",
        description="An LLM plans, another writes code and tests; the code runs in the sandbox, its tests pass, "
                    "and it is published as a new version of an artifact (undone by restoring the previous one).",
        input_schema={
            "type": "object",
            "properties": {
                "task": {"type": "string", "minLength": 1, "maxLength": 20_000,
                         "description": "what the code must do"},
                "artifact": {"type": "string", "pattern": "^[A-Za-z0-9_.\\-]{1,128}$",
                             "description": "where the code is published"},
                "require_approval": {"type": "boolean", "default": False,
                                     "description": "deploy waits for someone's approval (input_required)"},
            },
            "required": ["task", "artifact"],
            "additionalProperties": False,
        },
        steps=[
            StepDefinition(name="reasoning", tool=planner_tool, retry=llm_retry, timeout_s=step_timeout_s,
                           input={"system": PLAN_SYSTEM, "prompt": "{{ input.task }}"}),
            StepDefinition(name="codegen", tool=coder_tool, retry=llm_retry, timeout_s=step_timeout_s,
                           input={"system": CODE_SYSTEM,
                                  "prompt": "Task:\n{{ input.task }}\n\nPlan:\n{{ steps.reasoning.output.text }}"}),
            StepDefinition(name="sandbox_exec", tool="sandbox.run", timeout_s=step_timeout_s,
                           input={"source": "{{ steps.codegen.output.text }}"}),
            StepDefinition(name="test", tool="sandbox.test", timeout_s=step_timeout_s,
                           input={"answer": "{{ steps.codegen.output.text }}"}),
            StepDefinition(
                name="deploy", tool="artifacts", timeout_s=step_timeout_s,
                approval=Approval(message="Publish the tested code as a new version of {{ input.artifact }}?",
                                  when="{{ input.require_approval }}"),
                input={"action": "publish", "artifact": "{{ input.artifact }}",
                       "content": {"answer": "{{ steps.codegen.output.text }}", "saga_id": "{{ saga.id }}",
                                   "tests": "{{ steps.test.output }}"}},
                compensation=Compensation(
                    tool="artifacts",
                    input={"action": "restore", "artifact": "{{ input.artifact }}",
                           "version": "{{ steps.deploy.output.previous_version }}"},
                ),
            ),
        ],
    )
