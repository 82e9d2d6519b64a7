"""Registries of the types a checkpoint names (layers, losses, optimizers).

Each kind keeps its registry beside its classes (``layers.LAYERS``,
``losses.LOSSES``, ``optim.OPTIMIZERS``); a new type joins with the class
decorator ``@LAYERS.register``, and :mod:`jitprop.checkpoint` finds it by its
class name.
"""

__all__ = ["Registry"]


class Registry:
    """Classes of one kind by class name."""

    def __init__(self, kind):
        self.kind = kind
        self._types = {}

    def register(self, cls):
        """Class decorator: make ``cls`` loadable under ``cls.__name__``."""
        name = cls.__name__
        other = self._types.get(name)
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"a {self.kind} named {name!r} is already registered "
                             f"({other.__module__}.{other.__qualname__})")
        self._types[name] = cls
        return cls

    def unregister(self, name):
        """Forget ``name`` (a test's temporary type)."""
        self._types.pop(name, None)

    def get(self, name):
        """The class registered under ``name``, or None."""
        return self._types.get(name)

    def names(self):
        """Registered names, in registration order."""
        return list(self._types)

    def __contains__(self, name):
        return name in self._types

    def __repr__(self):
        return f"Registry({self.kind!r}: {', '.join(self._types)})"
