"""Public functions, one module per op; each module registers its op's fake, autograd and Triton pieces."""
import importlib
import pkgutil

__all__ = []
for _m in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_m.name}")
    for _name in _mod.__all__:
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
