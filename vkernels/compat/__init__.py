"""Drop-in layers for third-party code: one module per project, mirroring its public surface (names, signatures,
defaults, buffers, state_dict keys) while the computation runs on vkernels' kernels. Import the one you need,
e.g. `import vkernels.compat.stylegan`."""
