"""A trained run shared outside camkit: `ortlite` (the app on onnxruntime, numpy and Pillow
only), `web` (`camkit export RUN --web DIR`: a static page that explains images in the browser)
and `space` (`camkit app RUN --export-space DIR`: a ready Hugging Face Space). Each builds on
`camkit.app`'s face.
"""
