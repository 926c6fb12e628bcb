"""CUDA checks (placeholder until written)."""
CHECKS: list = []
