"""nn.Module wrappers (parameters + a call to the functional op), one module per layer."""
from vkernels._backend import export_submodules

__all__ = export_submodules(__name__, __path__, globals())
