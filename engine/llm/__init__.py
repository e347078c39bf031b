"""LLM steps: prompt templates, providers (OpenAI-compatible and simulated), and the `llm` step kind."""
