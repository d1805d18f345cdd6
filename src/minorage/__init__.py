"""minorage: age estimation for minors and young adults, robust to eye occlusion."""

from .models import AgeEstimator

__all__ = ["AgeEstimator"]
__version__ = "0.2.0"
