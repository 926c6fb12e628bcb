"""Benchmarks: mtld's training loop side by side with a bare PyTorch loop and the transformers Trainer.

    python -m bench [--quick] [--out bench/]

A program, not a test: it prints figures and writes bench/results.json and
bench/results.md (see bench/run.py).
"""
