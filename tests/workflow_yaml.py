"""Pieces of workflow YAML that tests in more than one package build their workflows from."""

from __future__ import annotations

# An LLM step cut off at its token limit (the simulated model writes far more than 5 tokens): the truncated
# state, its badge and the page's "Cut off at the token limit: Too short" warning. An item of a `steps:` list.
TOO_SHORT_STEP = """\
  - key: short
    label: Too short
    kind: llm
    prompt: Write a long story about tide pools.
    max_tokens: 5
"""
