"""ray_cluster.yaml: valid for Ray's own cluster launcher, and safe to `ray up` (no `ray stop`, no secrets)."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml
from ray._private.label_utils import validate_node_label_syntax
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.cli import app

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
RAY_STOP = re.compile(r"\bray\s+stop\b")
SECRET_VALUE = re.compile(r"\b(?:sk|pplx)-[A-Za-z0-9_-]{10,}|\bAKIA[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY")
SECRET_ASSIGNMENT = re.compile(r"\b([A-Z][A-Z0-9_]*(?:API_KEY|TOKEN|SECRET|PASSWORD)[A-Z0-9_]*)=(\S*)")


def load_raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def launch(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to the file before it contacts the cloud (commands._bootstrap_config): merge the
    provider's defaults, merge the setup commands, fill per-type worker limits, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_raw()


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    return launch(raw)


def commands(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key in COMMAND_KEYS:
        for command in config.get(key) or []:
            yield key, command


def command_with(config_commands: list[str], needle: str) -> str:
    found = [c for c in config_commands if needle in c]
    assert len(found) == 1, f"expected one command containing {needle!r}, found {len(found)}"
    return found[0]


def option_value(words: list[str], option: str) -> str:
    for i, word in enumerate(words):
        if word == option:
            return words[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{option} not given in {' '.join(words)}")


def words_after(command: str, start: str) -> list[str]:
    """The shell words of the simple command beginning at `start` (up to the next `;`)."""
    tail = command[command.index(start):]
    return shlex.split(tail.split(";")[0])


# ---------------------------------------------------------------- Ray's own validation


def test_ray_accepts_the_file_as_ray_up_would(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["cluster_name"] == "mcp-orchestrator"


def test_every_command_is_valid_bash(prepared: dict[str, Any]) -> None:
    # YAML folds the multi-line commands into one line: a forgotten `;` shows up here, not on the cluster.
    for key, command in commands(prepared):
        checked = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{key}: {command}\n{checked.stderr}"


Mutation = Callable[[dict[str, Any]], None]


def _bogus_top_level_key(c: dict[str, Any]) -> None:
    c["max_worker_nodes"] = 3


def _wrong_type(c: dict[str, Any]) -> None:
    c["max_workers"] = "ten"


def _fractional_cpu(c: dict[str, Any]) -> None:
    c["available_node_types"]["cpu-general"]["resources"]["CPU"] = 0.5


def _typo_in_node_type(c: dict[str, Any]) -> None:
    c["available_node_types"]["cpu-ml"]["min_worker"] = 1


def _unknown_head_type(c: dict[str, Any]) -> None:
    c["head_node_type"] = "ray.head.default"


def _min_workers_beyond_max(c: dict[str, Any]) -> None:
    c["available_node_types"]["cpu-general"]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (_bogus_top_level_key, jsonschema.ValidationError, "max_worker_nodes"),
        (_wrong_type, jsonschema.ValidationError, "'ten' is not of type 'integer'"),
        (_fractional_cpu, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
        (_typo_in_node_type, jsonschema.ValidationError, "min_worker"),
        (_unknown_head_type, ValueError, "head_node_type"),
        (_min_workers_beyond_max, ValueError, "min_workers"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_ray_rejects_a_broken_copy(
    raw: dict[str, Any], mutate: Mutation, error: type[Exception], message: str
) -> None:
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(error, match=re.escape(message)):
        launch(broken)


# ---------------------------------------------------------------- node types


def test_head_type_exists_and_launches_no_workers_of_its_own(prepared: dict[str, Any]) -> None:
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    assert types[prepared["head_node_type"]]["max_workers"] == 0


def test_every_type_has_min_at_most_max_at_most_the_cluster_max(prepared: dict[str, Any]) -> None:
    cluster_max = prepared["max_workers"]
    for name, node_type in prepared["available_node_types"].items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= cluster_max, name
    assert sum(t["min_workers"] for t in prepared["available_node_types"].values()) <= cluster_max


def test_a_general_pool_type_and_a_bigger_ml_type(prepared: dict[str, Any]) -> None:
    by_role = {t["labels"]["orchestrator/role"]: t for t in prepared["available_node_types"].values()}
    general, ml = by_role["general"], by_role["ml"]
    assert general["min_workers"] >= 1, "the reasoning and codegen pools need a node from the start"
    assert ml["resources"]["CPU"] > general["resources"]["CPU"]
    assert by_role["head"]["resources"]["CPU"] == 0, "worker actors and ML tasks must not crowd the head"


def test_node_labels_are_valid_ray_labels(prepared: dict[str, Any]) -> None:
    for node_type in prepared["available_node_types"].values():
        validate_node_label_syntax(node_type.get("labels"))


# ---------------------------------------------------------------- commands


def test_no_command_runs_ray_stop(prepared: dict[str, Any]) -> None:
    for key, command in commands(prepared):
        assert not RAY_STOP.search(command), f"{key} runs `ray stop`: {command}"


def test_without_our_start_commands_ray_would_run_ray_stop(raw: dict[str, Any]) -> None:
    # Why the file must keep its own start commands: Ray's AWS defaults begin with `ray stop`.
    trimmed = {k: v for k, v in raw.items() if k not in ("head_start_ray_commands", "worker_start_ray_commands")}
    defaults = launch(trimmed)
    assert any(RAY_STOP.search(c) for c in defaults["head_start_ray_commands"])


def test_every_node_installs_redis_and_the_mounted_project(prepared: dict[str, Any]) -> None:
    mounts = prepared["file_mounts"]
    project = next(remote for remote, local in mounts.items() if (REPO / local).resolve() == REPO)
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged into both
        setup = prepared[key]
        redis = command_with(setup, "redis-server")
        assert "apt-get" in redis and "install" in redis
        pip = command_with(setup, "pip install -q -e")
        assert f"-e {project}" in pip
        assert "ray[default,serve]==" in pip, "nodes launched later must get the same Ray"


def test_workers_join_with_the_heads_token(prepared: dict[str, Any]) -> None:
    assert "~/.ray/auth_token" in prepared["cluster_synced_files"]
    assert any("ray get-auth-token --generate >/dev/null" in c for c in prepared["head_setup_commands"])
    assert any("export RAY_AUTH_MODE=token" in c for c in prepared["worker_setup_commands"])


def test_ray_ports_agree(prepared: dict[str, Any]) -> None:
    head = words_after(command_with(prepared["head_start_ray_commands"], "ray start --head"), "ray start")
    worker = words_after(command_with(prepared["worker_start_ray_commands"], "ray start"), "ray start")
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head, "without it the head never scales"
    assert option_value(worker, "--address") == "$RAY_HEAD_IP:" + option_value(head, "--port")


def test_head_starts_redis_with_aof_and_the_orchestrator_on_it(prepared: dict[str, Any]) -> None:
    start = prepared["head_start_ray_commands"]
    redis = words_after(command_with(start, "redis-server --port"), "redis-server")
    assert option_value(redis, "--appendonly") == "yes"
    orchestrator = command_with(start, "orchestrator up")
    up = words_after(orchestrator, "orchestrator up")
    assert option_value(up, "--address") == "auto"
    assert option_value(up, "--redis-url") == f"redis://$HEAD_IP:{option_value(redis, '--port')}/0"
    assert start.index(orchestrator) > start.index(command_with(start, "ray start --head"))


def test_orchestrator_up_options_exist_in_the_cli(prepared: dict[str, Any]) -> None:
    up_command = typer.main.get_command(app).commands["up"]  # type: ignore[attr-defined]
    known = {opt for param in up_command.params for opt in (*param.opts, *param.secondary_opts)}
    used = [w.split("=", 1)[0] for w in words_after(command_with(prepared["head_start_ray_commands"],
                                                                 "orchestrator up"), "orchestrator up")
            if w.startswith("--")]
    assert used and set(used) <= known, f"unknown options: {set(used) - known}"


# ---------------------------------------------------------------- secrets


def test_no_secret_value_anywhere_in_the_file() -> None:
    text = CLUSTER_YAML.read_text()
    assert not SECRET_VALUE.search(text)


def test_commands_never_assign_a_literal_secret(prepared: dict[str, Any]) -> None:
    for key, command in commands(prepared):
        for name, value in SECRET_ASSIGNMENT.findall(command):
            assert value.lstrip("\"'").startswith("$"), f"{key} sets {name} to a literal"


def test_keys_reach_the_orchestrator_from_a_file_outside_the_repo(prepared: dict[str, Any]) -> None:
    orchestrator = command_with(prepared["head_start_ray_commands"], "orchestrator up")
    sourced = re.search(r"\.\s+(\S+cluster\.env)", orchestrator)
    assert sourced is not None, "the orchestrator's command must source the secrets file"
    local = Path(prepared["file_mounts"][sourced.group(1)]).expanduser().resolve()
    assert not local.is_relative_to(REPO), "secrets must not live in the synced project tree"
    for key in ("$DEEPSEEK_API_KEY", "$PERPLEXITY_API_KEY"):
        assert key in orchestrator


# ---------------------------------------------------------------- switching providers


def test_the_documented_local_provider_switch_is_valid_and_keeps_ray_stop_out(raw: dict[str, Any]) -> None:
    # As the file's header says: provider local with head_ip/worker_ips, auth, and no node types.
    on_prem = {k: v for k, v in raw.items() if k not in ("available_node_types", "head_node_type")}
    on_prem["provider"] = {"type": "local", "head_ip": "10.0.0.10", "worker_ips": ["10.0.0.11", "10.0.0.12"]}
    on_prem["auth"] = {"ssh_user": "orchestrator", "ssh_private_key": "~/.ssh/id_ed25519"}
    on_prem["max_workers"] = 2
    prepared = launch(on_prem)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 2
    for key, command in commands(prepared):
        assert not RAY_STOP.search(command), f"{key} runs `ray stop` on a possibly shared host: {command}"
