"""Pure-PyTorch references of every op (test oracles and explicit fallbacks), one module per op."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    globals()[_m.name] = _mod = importlib.import_module(f"{__name__}.{_m.name}")
    globals()[_m.name] = getattr(_mod, _m.name, _mod)  # vkernels.reference.<op> is the op's function
