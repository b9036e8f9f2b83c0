"""The assistant's evaluation set is well-formed, and its judge fails what it should."""

from __future__ import annotations

import datetime as dt
import json
import re

from bench.eval_assistant import CONVERSATIONS, CORPUS, judge

NOW = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC)  # a Friday


def test_the_set_has_forty_conversations_whose_patterns_compile_and_documents_exist() -> None:
    conversations = json.loads(CONVERSATIONS.read_text())
    assert len(conversations) >= 40 and len({c["id"] for c in conversations}) == len(conversations)
    for conversation in conversations:
        assert all((CORPUS / name).exists() for name in conversation.get("upload", []))
        assert any("expect" in turn for turn in conversation["turns"]), conversation["id"]
        for turn in conversation["turns"]:
            for pattern in turn.get("expect", []):
                re.compile(pattern)


def test_the_judge_checks_text_citations_agent_and_failures() -> None:
    turn = {"say": "?", "expect": ["{weekday}"], "cites": "a.md", "agent": "knowledge"}
    good = {"text": "It is Friday.", "citations": [{"source": "a.md"}], "agent": "knowledge", "finish_reason": "stop"}
    assert judge(turn, good, NOW) == ""
    assert "matches none" in judge(turn, {**good, "text": "It is Monday."}, NOW)
    assert "no citation" in judge(turn, {**good, "citations": []}, NOW)
    assert "answered by 'general'" in judge(turn, {**good, "agent": "general"}, NOW)
    assert "the turn failed" in judge(turn, {**good, "finish_reason": "error"}, NOW)
