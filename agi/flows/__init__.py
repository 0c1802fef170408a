"""Call flows: what a caller hears and presses, step by step (no SQL, no sockets)."""
