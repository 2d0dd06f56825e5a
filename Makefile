# Two set-up commands for a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-chat test lint format clean

$(STAMP): pyproject.toml
	@# Keep a CUDA build of PyTorch >= 2.11 that this machine already has; otherwise use the CPU wheel.
	@if python3 -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(0 if torch.version.cuda and v >= (2, 11) else 1)" 2>/dev/null; then \
		echo "using this machine's CUDA PyTorch"; python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV) && $(VENV)/bin/pip install -q torch==2.13.0; \
	fi
	$(VENV)/bin/pip install -q -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bessemer demo

demo-chat: $(STAMP)
	$(PY) -m bessemer.cli.demo_chat

test: $(STAMP)
	@# the chat page's browser test needs Debian's chromium (the test installs it too, or says why it skips)
	@command -v chromium >/dev/null || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -q chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) || true
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf build runs .pytest_cache .ruff_cache
