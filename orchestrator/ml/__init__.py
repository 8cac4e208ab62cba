"""ML tool functions run by `ml` tools (see `orchestrator.tools.python.MlTool`); sklearn is imported lazily."""
