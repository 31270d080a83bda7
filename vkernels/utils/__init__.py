"""Helpers that are not ops: measuring peak memory and time of a call (vkernels.utils.profile)."""
