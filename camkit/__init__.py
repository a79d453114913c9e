"""camkit: fastai transfer learning with Class Activation Maps.

crawl -> image folder -> train -> model dir -> cam -> report. Every CLI command is a library
function with the same arguments (``camkit.train.train``, ``camkit.cam.explain`` ...).
"""

from camkit.errors import CamkitError

__version__ = "0.1.0"
__all__ = ["CamkitError", "__version__"]
