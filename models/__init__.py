"""Thin model definitions and training entry points per area (gan, finegrained, ssl), built on vkernels' public API."""
