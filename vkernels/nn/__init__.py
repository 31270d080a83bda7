"""nn.Module wrappers (parameters + a call to the functional op), one module per layer."""
import importlib
import pkgutil

__all__ = []
for _m in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_m.name}")
    for _name in _mod.__all__:
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
