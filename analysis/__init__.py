"""Does a STATE State-Transition model use its perturbation-encoder geometry?

Pipeline stages, one module each: load → effects (+ clustering) → jacobians → routing →
enrichment → verdict, per cell line, then consistency (routing across lines); `pipeline` runs and
caches them, `plots` draws (and never computes).
"""

from .config import AnalysisConfig, load_config
from .errors import InputError

__version__ = "0.1.0"
__all__ = ["AnalysisConfig", "InputError", "load_config", "__version__"]
