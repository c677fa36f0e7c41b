"""A read-only attribute read through another object: ``lost = Forward[bool]()``.

For objects that present attributes of an object they wrap or own (an asyncio twin's sync
lock, a lock's connection, a test harness's runner), so that each is declared once, with
its type, instead of as a hand-written property per class.  Only for cheap accessors (no
I/O): a read is a plain ``getattr`` on the inner object.
"""

from __future__ import annotations

from typing import Generic, TypeVar, overload

__all__ = ["Forward"]

_T = TypeVar("_T")


class Forward(Generic[_T]):
    """The attribute of the same name of ``getattr(obj, via)`` (``sync`` by default: the
    sync twin of an asyncio lock); ``attr`` reads another name of it."""

    def __init__(self, doc: str | None = None, *, via: str = "sync", attr: str = "") -> None:
        self.__doc__ = doc
        self._via = via
        self._name = attr

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = self._name or name
        if self.__doc__ is None:
            self.__doc__ = f"The ``{self._name}`` of :attr:`{self._via}`."

    @overload
    def __get__(self, obj: None, owner: type) -> Forward[_T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> _T: ...

    def __get__(self, obj: object, owner: type) -> Forward[_T] | _T:
        if obj is None:
            return self
        return getattr(getattr(obj, self._via), self._name)  # type: ignore[no-any-return]
