"""Images to tensors: `folders` (image folders decoded once into uint8 tensors, the offline
datasets and the demo's canvases), `cache` (the decode-once memory-mapped cache behind
`--cache`), `quality` (blank, tiny, near-duplicate and leaked images of a crawled dataset).

`camkit.data.X` still names what the flat `camkit.data` module held (`camkit.data.load_folder`
is `camkit.data.folders.load_folder`), imported on first use.
"""

from camkit.core.lazy import forwarding

__getattr__ = forwarding(__name__, "camkit.data.folders")
