"""Loads the compiled extension, refusing one built against a different torch.

A C++ extension links against torch's C++ ABI, which changes between releases: loading one built
for another torch fails with undefined symbols at best and corrupts memory at worst. So the torch
version recorded at build time is compared with the running one *before* the library is loaded.
"""
import importlib

import torch

REBUILD_HINT = ("Rebuild torchext against the installed torch: "
                "pip install --no-build-isolation --force-reinstall --no-deps <path to torchext source> "
                "(or, in a source checkout: pip install --no-build-isolation -e .)")


def abi_mismatch_message(built_for, found):
    return ("torchext was built for torch %s but torch %s is installed; a C++ extension only works with "
            "the torch it was compiled against. %s" % (built_for, found, REBUILD_HINT))


def check_torch_version(built_for, found=None):
    found = torch.__version__ if found is None else found
    if built_for != found:
        raise ImportError(abi_mismatch_message(built_for, found))


def load_extension():
    try:
        build_info = importlib.import_module("torchext._build_info")
    except ImportError as exc:
        raise ImportError("torchext's compiled extension is not built (torchext/_build_info.py is missing). "
                          "Build it with: pip install --no-build-isolation -e .") from exc
    check_torch_version(build_info.TORCH_VERSION)
    try:
        ext = importlib.import_module("torchext._C")
    except ImportError as exc:
        raise ImportError("could not load torchext._C (built for torch %s, running torch %s): %s. %s"
                          % (build_info.TORCH_VERSION, torch.__version__, exc, REBUILD_HINT)) from exc
    # The library's own record wins over the Python file, which a stale build could leave behind.
    check_torch_version(ext.built_torch_version())
    return ext
