"""modetune: Mixture-of-Depths Ensemble tuning (Luo & Specia, arXiv 2410.13077) for Hugging Face causal LMs."""

from .config import MoDConfig
from .errors import BaseModelMismatchError
from .model import MoDModel, get_mod_model
from .version import __version__

__all__ = ["MoDConfig", "MoDModel", "get_mod_model", "BaseModelMismatchError", "__version__"]
