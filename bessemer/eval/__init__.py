"""Evaluation: MMLU, C-Eval, CMMLU, GSM8K and perplexity from local files, and an lm-eval backend (harness.py)."""
