"""Helpers for tests: local stand-ins for remote services (chat-completions endpoints)."""
