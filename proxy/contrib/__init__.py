"""Optional helpers for clients of Slipstream (standard library only; no proxy imports)."""
