"""scikit-learn drop-ins: :class:`MLPClassifier` and :class:`MLPRegressor`.

Same constructor parameters, fitted attributes and behaviour as
``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor`` (scikit-learn
1.9), trained by jitprop's compiled kernels.  Change the import and the code
runs faster::

    from jitprop.sklearn import MLPClassifier

This module needs scikit-learn (``pip install "jitprop[sklearn]"``);
``import jitprop`` alone never imports it.
"""

try:
    import sklearn  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("jitprop.sklearn needs scikit-learn: pip install 'jitprop[sklearn]'") from e

from ._estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
