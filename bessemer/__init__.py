"""Bessemer: prepare, convert, train, generate, serve and evaluate open LLMs with PyTorch."""

__version__ = "0.1.0"
