"""Drop-in replacements of third-party anchors' public modules, one submodule per anchor, running on vkernels' ops."""
