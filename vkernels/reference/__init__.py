"""Pure-PyTorch references of every op (test oracles and explicit fallbacks), one module per op.

`vkernels.reference.<op>` is the op's function; its module (constants and helpers) is `vkernels.reference.<op>` in
sys.modules, reached with `from vkernels.reference.<op> import ...`.
"""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    globals()[_m.name] = getattr(importlib.import_module(f"{__name__}.{_m.name}"), _m.name)
