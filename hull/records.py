"""dataclass and field for the modules on `hull run`'s path, without `dataclasses`.

Why: `import dataclasses` pulls in inspect, ast, dis and tokenize, and every
@dataclass compiles its methods from source at import time: together ~12 ms
of `hull run`, whose whole budget is ~40 ms. These records build the same
methods from plain closures instead (no exec), for what Hull uses: fields with
defaults or default_factory, frozen, eq, repr, hash for frozen, __post_init__,
replace(). Type checkers see the real dataclasses (the TYPE_CHECKING branch),
so annotations and constructors are checked exactly as before.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
    from dataclasses import field as field
    from dataclasses import replace as replace
else:

    class _Field:
        __slots__ = ("default_factory",)

        def __init__(self, default_factory):
            self.default_factory = default_factory

    _MISSING = object()

    def field(*, default=_MISSING, default_factory=_MISSING):
        """dataclasses.field's default and default_factory."""
        if default_factory is not _MISSING:
            return _Field(default_factory)
        return default

    class FrozenInstanceError(AttributeError):
        """Assignment to a field of a frozen record (as dataclasses raises)."""

    def _build(cls, frozen):
        annotations = cls.__dict__.get("__annotations__", {})
        names = [n for n, a in annotations.items() if not str(a).startswith("ClassVar")]
        defaults = {}
        for name in names:
            if name in cls.__dict__:
                value = cls.__dict__[name]
                defaults[name] = value
                if isinstance(value, _Field):
                    delattr(cls, name)  # instances get their own value
        post_init = getattr(cls, "__post_init__", None)
        setter = object.__setattr__
        qualname = cls.__qualname__
        count = len(names)

        def __init__(self, *args, **kwargs):
            if len(args) > count:
                raise TypeError(f"{qualname}() takes {count} arguments, {len(args)} given")
            for name, value in zip(names, args, strict=False):
                setter(self, name, value)
            for name in names[len(args) :]:
                if name in kwargs:
                    value = kwargs.pop(name)
                elif name in defaults:
                    value = defaults[name]
                    if isinstance(value, _Field):
                        value = value.default_factory()
                else:
                    raise TypeError(f"{qualname}() missing argument: {name!r}")
                setter(self, name, value)
            if kwargs:
                raise TypeError(f"{qualname}() got unexpected arguments: {', '.join(kwargs)}")
            if post_init is not None:
                post_init(self)

        def _values(self):
            return tuple(getattr(self, n) for n in names)

        def __eq__(self, other):
            if other.__class__ is not self.__class__:
                return NotImplemented
            return _values(self) == _values(other)

        def __repr__(self):
            inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
            return f"{qualname}({inner})"

        cls.__init__ = __init__
        cls.__eq__ = __eq__
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = __repr__
        cls.__record_fields__ = tuple(names)
        cls.__dataclass_fields__ = dict.fromkeys(names)
        if frozen:

            def __setattr__(self, name, value):
                raise FrozenInstanceError(f"cannot assign to field {name!r}")

            def __delattr__(self, name):
                raise FrozenInstanceError(f"cannot delete field {name!r}")

            def __hash__(self):
                return hash(_values(self))

            cls.__setattr__ = __setattr__
            cls.__delattr__ = __delattr__
            cls.__hash__ = __hash__
        elif "__hash__" not in cls.__dict__:
            cls.__hash__ = None  # mutable and comparable: unhashable, as dataclasses do
        return cls

    def dataclass(cls=None, *, frozen=False):
        """@dataclass or @dataclass(frozen=True)."""
        if cls is None:
            return lambda c: _build(c, frozen)
        return _build(cls, frozen)

    def replace(obj, **changes):
        """A copy of obj with some fields changed (dataclasses.replace)."""
        names = getattr(obj.__class__, "__record_fields__", None)
        if names is None:
            import dataclasses

            return dataclasses.replace(obj, **changes)
        values = {n: getattr(obj, n) for n in names}
        values.update(changes)
        return obj.__class__(**values)
