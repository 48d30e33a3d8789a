import importlib
import pkgutil

import shared


def test_public_surface_is_exactly_all():
    public = {name for name in dir(shared) if not name.startswith("_")}
    modules = {m.name for m in pkgutil.iter_modules(shared.__path__)}
    assert set(shared.__all__) <= public
    leaked = public - set(shared.__all__) - modules
    assert not leaked, f"names exported without being in __all__: {sorted(leaked)}"


def test_implementation_modules_are_private():
    public_modules = {m.name for m in pkgutil.iter_modules(shared.__path__) if not m.name.startswith("_")}
    assert public_modules == {"events"}, "shared exposes its contract (events) and keeps the rest private"
    for name in shared.__all__:
        assert getattr(shared, name) is not None
        importlib.import_module("shared")
