"""macOS checks (placeholder until written)."""
CHECKS: list = []
