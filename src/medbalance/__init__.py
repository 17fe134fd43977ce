"""medbalance: rebalance imbalanced medical imaging datasets with conditional generative models."""

from medbalance.errors import ConfigError, DataError, MedbalanceError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "MedbalanceError", "__version__"]
