"""modetune: Mixture-of-Depths Ensemble tuning (Luo & Specia, arXiv 2410.13077) for Hugging Face causal LMs."""

from .mod.config import MoDConfig
from .mod.model import MoDModel, get_mod_model
from .utils.errors import BaseModelMismatchError
from .utils.version import __version__

__all__ = ["MoDConfig", "MoDModel", "get_mod_model", "BaseModelMismatchError", "__version__"]
