"""Shared test configuration: the server fixtures come from lockscope's own pytest plugin."""

pytest_plugins = ["pytester"]
