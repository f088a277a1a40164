"""Binary CAMs in PyTorch: sign modes, CAM methods, gradients at a target layer, the epilogue."""

from bincam.cam.methods import METHODS, FactoredGrad
from bincam.cam.modes import MODES, signs

__all__ = ["METHODS", "MODES", "FactoredGrad", "signs"]
