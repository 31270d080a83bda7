"""Public functions, one module per op; each module registers its op's fake, autograd and Triton pieces."""
from vkernels._backend import export_submodules

__all__ = export_submodules(__name__, __path__, globals())
