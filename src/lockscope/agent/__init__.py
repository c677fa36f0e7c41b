"""The agent: receives the shim's OTLP events, keeps the live wait-for graph, finds deadlocks,
stale holders, mutual-exclusion violations and lock-order inversions, and exports them.

Modules by stage: ``otlp_*`` (receiving and decoding), ``model`` (decoded events),
``state`` (locks, actors, processes), ``graph``/``detect_*`` (detectors), ``web_*`` (the
HTTP side: JSON API, metrics, web view), ``cli`` (the ``lockscope agent`` command).
"""
