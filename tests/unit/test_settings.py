"""Settings: defaults, env with the ORCH_ prefix, a TOML file, presets, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.settings import Settings


def test_defaults_have_three_pools_and_provider_presets() -> None:
    settings = Settings()
    assert set(settings.pools) == {"reasoning", "codegen", "ml"}
    assert settings.tools["deepseek"].base_url == "https://api.deepseek.com"
    assert settings.tools["deepseek-reasoner"].model == "deepseek-reasoner"
    assert settings.tools["perplexity"].base_url == "https://api.perplexity.ai"
    assert settings.tools["echo"].kind == "echo"


def test_env_overrides_nested_values_and_keeps_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_POOLS__ML__WORKERS", "3")
    monkeypatch.setenv("ORCH_REDIS__URL", "redis://example:6380/1")
    settings = Settings()
    assert settings.pools["ml"].workers == 3 and settings.pools["ml"].slots == 2
    assert set(settings.pools) == {"reasoning", "codegen", "ml"}
    assert settings.redis.url == "redis://example:6380/1"


def test_api_keys_come_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-abc")
    key = Settings().tools["deepseek"].api_key
    assert key is not None and key.get_secret_value() == "sk-abc"
    assert "sk-abc" not in repr(Settings().tools["deepseek"])


def test_config_file_adds_pools_and_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text(
        'namespace = "prod"\n[pools.gpu]\nworkers = 2\nslots = 1\n'
        '[tools.local-llm]\nkind = "openai"\nbase_url = "http://127.0.0.1:11434/v1"\nmodel = "llama3"\n'
        'worker_type = "gpu"\n'
    )
    monkeypatch.setenv("ORCH_CONFIG_FILE", str(config))
    monkeypatch.setenv("ORCH_POOLS__GPU__SLOTS", "4")  # env wins over the file
    settings = Settings()
    assert settings.namespace == "prod"
    assert settings.pools["gpu"].workers == 2 and settings.pools["gpu"].slots == 4
    assert settings.tools["local-llm"].worker_type == "gpu" and "echo" in settings.tools


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no pool"):
        Settings(tools={"x": {"kind": "echo", "worker_type": "gpu"}})
    with pytest.raises(ValidationError, match="unknown preset"):
        Settings(tools={"x": {"kind": "openai", "preset": "nope"}})
    with pytest.raises(ValidationError, match="base_url and model"):
        Settings(tools={"x": {"kind": "openai"}})
    with pytest.raises(FileNotFoundError):
        Settings(config_file=tmp_path / "missing.toml")


def test_tool_registry_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="fallback 'nope' is not another openai tool"):
        Settings(tools={"x": {"kind": "openai", "preset": "deepseek", "fallback": ["nope"]}})
    with pytest.raises(ValidationError, match="not another openai tool"):
        Settings(tools={"x": {"kind": "openai", "preset": "deepseek", "fallback": ["echo"]}})
    with pytest.raises(ValidationError, match="MCP server 'srv', which is not in mcp_servers"):
        Settings(tools={"x": {"kind": "mcp", "server": "srv"}})
    with pytest.raises(ValidationError, match="needs function"):
        Settings(tools={"x": {"kind": "ml"}})
    with pytest.raises(ValidationError, match="function"):
        Settings(tools={"x": {"kind": "python", "function": "no colon here"}})
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        Settings(tools={"x": {"kind": "python", "function": "m:f", "input_schema": {"type": 3}}})
    with pytest.raises(ValidationError, match="exactly one of command"):
        Settings(mcp_servers={"srv": {"command": ["x"], "url": "http://h/mcp"}})
    with pytest.raises(ValidationError, match="extra"):
        Settings(providers={"deepseek": {"rpm": 5}})


def test_presets_share_one_provider_account_for_limits() -> None:
    settings = Settings(providers={"deepseek": {"requests_per_minute": 60, "max_concurrency": 4}})
    assert {settings.provider_of(t) for t in ("deepseek", "deepseek-reasoner", "deepseek-coder")} == {"deepseek"}
    assert settings.provider_of("perplexity") == "perplexity" and settings.provider_of("echo") == "echo"
    config = Settings(tools={"chat": {"kind": "openai", "preset": "deepseek", "fallback": ["perplexity"]}})
    assert config.tools["chat"].fallback == ["perplexity"]
