"""camkit: fastai transfer learning with Class Activation Maps.

crawl -> image folder -> train -> run folder -> cam / explain -> render -> report. Every CLI
command is a library function with the same arguments (``camkit.crawl.crawl``,
``camkit.train.train``, ``camkit.explain.cam``, ``camkit.report.report`` ...); in a notebook,
``camkit.fastai`` works on any fastai ``Learner``.
"""

from camkit.errors import CamkitError

__version__ = "0.1.0"
__all__ = ["CamkitError", "__version__"]
