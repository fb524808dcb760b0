"""Plain data classes without the `dataclasses` module.

`dataclasses` imports inspect (and with it ast, dis, tokenize) and writes each class's
methods with exec, on every start of the agent (what it cost: bench/README.md). A
`Record` subclass declares its fields as a dataclass does (annotations, in order, with
optional defaults) and gets `__init__` (positional or keyword; then `__post_init__` if
the class has one), `__eq__`, `__repr__` and `replace()`. `frozen=True` forbids
assignment after `__init__` and makes it hashable.

    class Point(Record, frozen=True):
        x: int
        y: int = 0
        tags: dict = Factory(dict)     # a fresh dict for each instance
"""

from __future__ import annotations

_MISSING = object()
TYPE_CHECKING = False  # typing's own costs an import on every start; mypy knows the name


class _Factory:
    """A default made anew for each instance (dataclasses' default_factory)."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    _T = TypeVar("_T")

    def Factory(make: Callable[[], _T]) -> _T:  # noqa: N802  to mypy, the default it makes
        ...
else:
    Factory = _Factory


class Record:
    _fields: tuple = ()
    _defaults: dict = {}
    _frozen = False

    def __init_subclass__(cls, frozen: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        names = list(cls._fields)
        defaults = dict(cls._defaults)
        for name in cls.__dict__.get("__annotations__", {}):
            if name not in names:
                names.append(name)
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                delattr(cls, name)  # the instance's own attribute always holds the value
        cls._fields, cls._defaults, cls._frozen = tuple(names), defaults, frozen or cls._frozen

    def __init__(self, *args, **kwargs):
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} arguments")
        values = dict(zip(self._fields, args))
        for name, value in kwargs.items():
            if name not in self._fields or name in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated argument {name!r}")
            values[name] = value
        for name in self._fields:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = self._defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__}: missing argument {name!r}")
                if isinstance(value, _Factory):
                    value = value.make()
            object.__setattr__(self, name, value)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def __setattr__(self, name, value):
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        if not self._frozen:
            raise TypeError(f"unhashable type: {type(self).__name__!r} (not frozen)")
        return hash(self._values())

    def __repr__(self):
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"

    def replace(self, **changes):
        """A copy with some fields changed (dataclasses.replace)."""
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return type(self)(**values)
