"""Runnable examples: the agent loop (`python -m examples.agents`); the filter plugin is its own package."""
