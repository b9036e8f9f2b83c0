"""Orchestrator: user turns in, streamed LLM replies out (agents, tone, context hooks, barge-in)."""
