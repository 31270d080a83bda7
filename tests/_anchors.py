"""Opt-in integration with the real third-party anchors: a checkout's path in an environment variable (never in CI).

    VKERNELS_DEEPINSIGHT_CBP=/path/to/CompactBilinearPooling-Pytorch pytest tests/test_compat_deepinsight.py -k real
"""
import importlib.util
import os
import pathlib

import pytest


def anchor_module(env: str, relpath: str, name: str):
    """The module at <checkout>/<relpath>, loaded under `name`; the test is skipped when `env` is unset."""
    root = os.environ.get(env)
    if not root:
        pytest.skip(f"{env} is not set (path to the anchor's checkout)")
    path = pathlib.Path(root) / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{env}={root}: no {relpath} there")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(what: str, diff) -> None:
    """One line of the integration report (run with -s to see them)."""
    diff = float(diff.detach()) if hasattr(diff, "detach") else float(diff)
    print(f"[anchor] {what}: max |diff| = {diff:.3e}")
