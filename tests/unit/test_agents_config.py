"""Agents as configuration (docs/agents.md): the shipped agents.toml, the validation of a team's file
with one clear line per mistake, handoff targets, the agent's default tone, and an orchestrator that
will not start with a bad file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.events import Tone
from contracts.tools import BY_TOOL
from workers.orchestrator import agents as agents_module
from workers.orchestrator.agents import (
    SHIPPED_FILE,
    TONES,
    AgentRegistry,
    AgentsFileError,
    Router,
    handoff_target,
    handoff_tool,
    load_agents,
)
from workers.orchestrator.prompt import build_prompt
from workers.orchestrator.worker import OrchestratorSettings
from workers.runtime.settings import load_settings

TRAVEL = """
[[agent]]
name = "travel"
description = "Trips, bookings and timetables"
system_prompt = "You plan trips. Ask where and when before suggesting anything."
tools = ["memory", "get_time", "handoff"]
tone = "friendly"
"""

VALID = """
default = "general"

[[agent]]
name = "general"
description = "Everyday questions"
system_prompt = "You are helpful."
tools = ["memory", "handoff"]

[[agent]]
name = "coach"
description = "Practice"
system_prompt = "You are a coach."
tools = ["memory", "calculate", "handoff"]
"""


def write(tmp_path: Path, text: str, name: str = "agents.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(AgentsFileError) as caught:
        load_agents(path)
    return str(caught.value)


# ---------------------------------------------------------------- the shipped file


def test_the_shipped_file_gives_todays_three_agents_and_their_tools() -> None:
    config = load_agents(SHIPPED_FILE)
    registry = AgentRegistry.from_file(None)
    assert config.default_agent == "general" and registry.default.name == "general"
    assert registry.names() == ["coach", "general", "knowledge"]
    tools = {name: agent.tools for name in registry.names() if (agent := registry.get(name))}
    assert tools == {
        "general": {
            *("memory", "camera", "get_time", "calculate", "convert_units", "search_knowledge"),
            *("recall_memory", "set_reminder", "handoff"),
        },
        "knowledge": {"memory", "retrieval", "handoff"},
        "coach": {"memory", "calculate", "convert_units", "handoff"},
    }
    for name in registry.names():
        agent = registry.get(name)
        assert agent is not None
        assert (agent.model, agent.handoff_targets, agent.tone) == (None, None, None)
    general, knowledge = registry.get("general"), registry.get("knowledge")
    assert general is not None and knowledge is not None
    assert general.system_prompt.startswith(
        "You are Switchboard, a helpful voice and chat assistant. Replies are spoken aloud, so keep them "
        "short and natural, without markdown. Use a tool only when the question needs one"
    )
    assert knowledge.system_prompt == (
        "You answer from the provided passages only and cite them as [1], [2]. If the passages do not "
        "contain the answer, say so."
    )
    assert config.to_agents() == agents_module.DEFAULT_AGENTS  # read from the file: no copy in code
    assert [a.name for a in AgentRegistry().targets(registry.default)] == ["coach", "knowledge"]


def test_settings_read_the_shipped_file_when_no_file_is_set() -> None:
    settings = OrchestratorSettings()
    assert settings.agents_file is None and settings.agent_registry().names() == ["coach", "general", "knowledge"]
    assert OrchestratorSettings(default_agent="coach").agent_registry().default.name == "coach"


# ---------------------------------------------------------------- a team's file


def test_a_teams_extra_agent_is_routed_to_and_offered_in_the_handoff_tool(tmp_path: Path) -> None:
    path = write(tmp_path, SHIPPED_FILE.read_text() + TRAVEL)
    registry = OrchestratorSettings(agents_file=path).agent_registry()
    assert registry.names() == ["coach", "general", "knowledge", "travel"]
    router = Router(registry)
    route = router.route("can I talk to travel please", "general")
    assert (route.agent.name, route.handoff) == ("travel", True)
    tool = handoff_tool(registry, registry.default)
    assert tool is not None
    assert tool["function"]["parameters"]["properties"]["agent"]["enum"] == ["coach", "knowledge", "travel"]
    assert "travel: Trips, bookings and timetables" in tool["function"]["description"]
    assert handoff_target(registry, registry.default, '{"agent": "travel"}') == registry.get("travel")


def test_handoff_targets_restrict_the_tool_the_target_and_the_router(tmp_path: Path) -> None:
    text = SHIPPED_FILE.read_text().replace(
        'tools = ["memory", "calculate", "convert_units", "handoff"]',
        'tools = ["memory", "calculate", "convert_units", "handoff"]\nhandoff_targets = ["general"]',
    )
    assert text != SHIPPED_FILE.read_text()
    registry = AgentRegistry.from_file(write(tmp_path, text))
    coach, general = registry.get("coach"), registry.get("general")
    assert coach is not None and general is not None
    tool = handoff_tool(registry, coach)
    assert tool is not None and tool["function"]["parameters"]["properties"]["agent"]["enum"] == ["general"]
    refused = handoff_target(registry, coach, '{"agent": "knowledge"}')
    assert refused == "no other agent named 'knowledge'; agents: general"
    assert handoff_target(registry, coach, '{"agent": "general"}') == general
    router = Router(registry)
    assert router.route("switch to knowledge", "coach") == router.route("hello", "coach")  # stays with coach
    assert router.route("switch to knowledge", "coach").agent.name == "coach"
    assert router.route("switch to general", "coach").agent.name == "general"
    assert router.route("switch to knowledge", "general").agent.name == "knowledge"  # general: all others


def test_an_agent_with_no_handoff_targets_is_offered_no_handoff(tmp_path: Path) -> None:
    registry = AgentRegistry.from_file(
        write(tmp_path, VALID.replace('"calculate", "handoff"]', '"handoff"]\nhandoff_targets = []'))
    )
    coach = registry.get("coach")
    assert coach is not None and handoff_tool(registry, coach) is None
    assert Router(registry).route("talk to general", "coach").agent.name == "coach"


def test_the_agents_tone_is_used_when_the_session_chose_none(tmp_path: Path) -> None:
    registry = AgentRegistry.from_file(write(tmp_path, SHIPPED_FILE.read_text() + TRAVEL))
    travel = registry.get("travel")
    assert travel is not None and travel.tone == "friendly"

    def system(tone: Tone | None) -> str:
        return str(build_prompt(travel, tone, "hi", [], None, []).messages[0]["content"])

    assert TONES["friendly"] in system(None)
    assert TONES["formal"] in system("formal") and TONES["friendly"] not in system("formal")
    assert TONES["friendly"] not in system("neutral")  # a session's explicit choice wins


def test_the_model_field_and_default_are_read(tmp_path: Path) -> None:
    text = VALID.replace('default = "general"', 'default = "coach"').replace(
        'system_prompt = "You are a coach."', 'system_prompt = "You are a coach."\nmodel = "qwen2.5-1.5b-instruct"'
    )
    registry = AgentRegistry.from_file(write(tmp_path, text))
    coach = registry.get("coach")
    assert registry.default is coach and coach is not None and coach.model == "qwen2.5-1.5b-instruct"
    assert AgentRegistry.from_file(write(tmp_path, VALID.replace('default = "general"', ""))).default.name == "general"


# ---------------------------------------------------------------- mistakes, one clear line each


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('"calculate", "handoff"]', '"calcualte", "handoff"]'),
            "agent 'coach': tools: unknown tool 'calcualte' (known: calculate, camera, ",
        ),
        (('name = "coach"', 'name = "coach"\ncolour = "red"'), "agent 'coach': colour: unknown field (fields: name, "),
        (
            ('default = "general"', 'default = "general"\nversion = 2'),
            "version: unknown field (fields: default, agent)",
        ),
        (('name = "coach"', 'name = "general"'), "agent 'general': name: defined more than once"),
        (('default = "general"', 'default = "boss"'), "default: 'boss' is not an agent (agents: general, coach)"),
        (('"You are a coach."', '"   "'), "agent 'coach': system_prompt: is empty"),
        (('system_prompt = "You are a coach."', ""), "agent 'coach': system_prompt: missing"),
        (('name = "coach"', 'name = "coach"\ntone = "grumpy"'), "agent 'coach': tone: Input should be 'neutral', "),
        (
            ('name = "coach"', 'name = "coach"\nhandoff_targets = ["genral"]'),
            "agent 'coach': handoff_targets: unknown agent 'genral' (agents: general, coach)",
        ),
        (
            ('name = "coach"', 'name = "coach"\nhandoff_targets = ["coach"]'),
            "agent 'coach': handoff_targets: 'coach' is the agent itself",
        ),
        (('name = "coach"', 'name = "Coach Bot"'), "agent 'Coach Bot': name: 'Coach Bot' is not a name"),
        (('tools = ["memory", "handoff"]', 'tools = "memory"'), "agent 'general': tools: Input should be a valid list"),
    ],
)
def test_each_mistake_is_one_line_naming_file_agent_and_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    message = error_of(path)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message


def test_a_file_that_is_not_toml_or_not_there_or_has_no_agents(tmp_path: Path) -> None:
    assert "is not valid TOML" in error_of(write(tmp_path, "default = \n"))
    assert (
        error_of(tmp_path / "absent.toml") == f"{tmp_path / 'absent.toml'}: cannot be read: No such file or directory"
    )
    assert "agent: missing" in error_of(write(tmp_path, 'default = "general"\n'))
    assert "agent: List should have at least 1 item" in error_of(write(tmp_path, "agent = []\n"))


def test_every_tool_of_the_contracts_and_each_context_source_is_allowed(tmp_path: Path) -> None:
    tools = ", ".join(f'"{t}"' for t in [*BY_TOOL, "memory", "retrieval", "camera", "handoff"])
    registry = AgentRegistry.from_file(write(tmp_path, VALID.replace('["memory", "handoff"]', f"[{tools}]")))
    general = registry.get("general")
    assert general is not None and general.uses_camera and general.uses_retrieval


# ---------------------------------------------------------------- the orchestrator refuses to start


def test_settings_refuse_a_bad_agents_file_or_a_default_it_lacks(tmp_path: Path) -> None:
    bad = write(tmp_path, VALID.replace('"calculate", "handoff"]', '"calcualte"]'))
    with pytest.raises(ValidationError, match="agent 'coach': tools: unknown tool 'calcualte'"):
        OrchestratorSettings(agents_file=bad)
    with pytest.raises(ValidationError, match="SB_DEFAULT_AGENT='travel' is not an agent of the file"):
        OrchestratorSettings(default_agent="travel")


def test_load_settings_stops_with_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, VALID.replace('"calculate", "handoff"]', '"calcualte"]'))
    monkeypatch.setenv("SB_AGENTS_FILE", str(bad))
    with pytest.raises(SystemExit) as stopped:
        load_settings(OrchestratorSettings)
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"invalid configuration: SB_AGENTS_FILE='{bad}': ")
    assert f"{bad}: agent 'coach': tools: unknown tool 'calcualte' (known: " in line and "\n" not in line


def test_the_orchestrator_process_will_not_start_with_a_bad_file(tmp_path: Path) -> None:
    bad = write(tmp_path, VALID.replace('name = "coach"', 'name = "coach"\ntone = "grumpy"'))
    env = {**os.environ, "SB_AGENTS_FILE": str(bad), "SB_NATS_URL": "nats://127.0.0.1:1", "SB_CONNECT_TIMEOUT_S": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "workers.orchestrator"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "agent 'coach': tone: Input should be 'neutral', 'concise', 'friendly' or 'formal'" in done.stderr
