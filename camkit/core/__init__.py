"""The shared vocabulary every other part of camkit imports, and nothing of camkit above it:
`choices` (the options' Enums), `files` (atomic writes, confined paths), `images` (the one
guarded decode and the decode-and-batch path), `geometry` (where a feature map's cells look),
`layout` (how a layer's output maps onto the image, the CAM head's Linear), `device`,
`distributed`, `render` (maps in, images out), `plots` (matplotlib figures) and `lazy` (the
package faces' import-on-first-use). Importing this package imports none of them.
"""
