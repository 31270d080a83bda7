"""Old name of `vkernels.compat.stylegan`, kept so that existing code keeps working: this module is that one."""
import sys

from vkernels.compat import stylegan as _stylegan

sys.modules[__name__] = _stylegan
