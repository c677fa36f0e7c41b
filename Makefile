# Shortcuts for the README's commands (the scripts work without make, too).
#
#   make demo                 # = scripts/demo.sh: watch lockscope find a deadlock
#   make demo DEMO_ARGS=--once
#   make test                 # = scripts/test.sh: lint, type-check, the whole test suite
#   make test TEST_ARGS="-k demo -x"
#   make setup                # = scripts/setup-system.sh: the test servers (Debian, sudo)
#   make soak                 # = benchmarks/soak.py: lossy delivery, restarts, 1M-name attack
#   make soak SOAK_ARGS="--only loss"

DEMO_ARGS ?=
TEST_ARGS ?=
SOAK_ARGS ?=

.PHONY: demo test setup soak

demo:
	./scripts/demo.sh $(DEMO_ARGS)

test:
	./scripts/test.sh $(TEST_ARGS)

setup:
	./scripts/setup-system.sh

soak:
	.venv/bin/python benchmarks/soak.py $(SOAK_ARGS)
