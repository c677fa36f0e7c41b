"""The public lock API as a user's type checker sees it.

``lockscope.locks`` and ``lockscope.locks.aio`` import their backends lazily at run time;
these tests pin that a user's ``mypy --strict`` still sees the real classes (not ``Any``),
so a wrong argument is an error before anything runs.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap

import pytest

import lockscope.locks
import lockscope.locks.aio

USER_FILE = textwrap.dedent(
    """
    from lockscope.locks import AutoRenewingLock, RedisLock, ZooKeeperLock, acquire_all
    from lockscope.locks import aio

    lock = RedisLock("jobs", "redis://127.0.0.1:6379", ttl=10)
    reveal_type(lock)
    reveal_type(aio.RedisLock("jobs", "redis://127.0.0.1:6379"))
    reveal_type(ZooKeeperLock("127.0.0.1:2181", "jobs"))
    reveal_type(aio.ZooKeeperSemaphore("127.0.0.1:2181", "jobs", max_leases=2))
    reveal_type(AutoRenewingLock(lock))
    reveal_type(acquire_all([lock]))
    RedisLock("jobs", "redis://127.0.0.1:6379", ttl="ten")  # line 12: must be rejected
    """
)


def _qualname(module: object, public: str) -> str:
    obj = getattr(module, public)
    return f"{obj.__module__}.{obj.__qualname__}"


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("user")
    (work / "user.py").write_text(USER_FILE)
    (work / "mypy.ini").write_text("[mypy]\n")  # not the project's settings
    # The venv's mypy, strict, without the project's configuration: as a user runs it.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(work / "mypy.ini"),
            "--cache-dir",
            str(work / "cache"),
            "user.py",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # exactly the one bad call fails
    return done.stdout


def _revealed(output: str) -> dict[int, str]:
    found = re.findall(r'^user\.py:(\d+): note: Revealed type is "(.*)"$', output, re.M)
    return {int(line): kind for line, kind in found}


def test_user_mypy_sees_the_real_lock_classes(mypy_output: str) -> None:
    revealed = _revealed(mypy_output)
    assert revealed == {
        6: _qualname(lockscope.locks, "RedisLock"),
        7: _qualname(lockscope.locks.aio, "RedisLock"),
        8: _qualname(lockscope.locks, "ZooKeeperLock"),
        9: _qualname(lockscope.locks.aio, "ZooKeeperSemaphore"),
        10: _qualname(lockscope.locks, "AutoRenewingLock"),
        11: "contextlib._GeneratorContextManager[list[lockscope.locks.base.Lock], None, None]",
    }, mypy_output
    assert "Any" not in "".join(revealed.values())


def test_user_mypy_rejects_a_bad_argument(mypy_output: str) -> None:
    errors = [line for line in mypy_output.splitlines() if ": error:" in line]
    assert errors == [
        'user.py:12: error: Argument "ttl" to "RedisLock" has incompatible type "str";'
        ' expected "float"  [arg-type]'
    ], mypy_output


def test_every_lazy_name_is_exported_and_resolves() -> None:
    sync, aio = lockscope.locks, lockscope.locks.aio
    assert set(sync.__all__) == {"AsyncLock", "Lock", *sync._LAZY}
    assert set(aio.__all__) == {"AsyncLock", *aio._LAZY}
    for module in (sync, aio):
        for name in module._LAZY:
            assert isinstance(getattr(module, name), type) or callable(getattr(module, name))


def test_importing_the_package_imports_no_backend() -> None:
    """The type-checking imports must not run: ``lockscope.locks`` stays cheap and does
    not need redis-py or kazoo until a backend is used."""
    code = (
        "import sys, lockscope.locks, lockscope.locks.aio;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'kazoo')"
        " or m.startswith('lockscope.locks.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "['lockscope.locks.aio', 'lockscope.locks.base']"
    importlib.import_module("lockscope.locks.redis")  # and each one still imports on its own
