"""modetune: Mixture-of-Depths Ensemble tuning (Luo & Specia, arXiv 2410.13077) for Hugging Face causal LMs.

The public names load on first use (PEP 562), so ``modetune --version`` and ``modetune config list``
start without importing torch.
"""

from .utils.version import __version__

__all__ = ["MoDConfig", "MoDModel", "get_mod_model", "BaseModelMismatchError", "__version__"]
_LAZY = {"MoDConfig": "mod.config", "MoDModel": "mod.model", "get_mod_model": "mod.model",
         "BaseModelMismatchError": "utils.errors"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
