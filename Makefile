# Shortcuts for the README's commands (the scripts work without make, too).
#
#   make demo                 # = scripts/demo.sh: watch lockscope find a deadlock
#   make demo DEMO_ARGS=--once
#   make test                 # = scripts/test.sh: lint, type-check, the whole test suite
#   make test TEST_ARGS="-k demo -x"
#   make setup                # = scripts/setup-system.sh: the test servers (Debian, sudo)

DEMO_ARGS ?=
TEST_ARGS ?=

.PHONY: demo test setup

demo:
	./scripts/demo.sh $(DEMO_ARGS)

test:
	./scripts/test.sh $(TEST_ARGS)

setup:
	./scripts/setup-system.sh
