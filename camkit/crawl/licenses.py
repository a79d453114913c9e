"""Licences as engines report them, reduced to Creative Commons codes, and the `--license`
classes a user asks for.

Openverse says `by-sa` + `2.0`, Wikimedia says `CC BY-SA 4.0` or `Public domain`, Flickr gives a
number: `license_code` maps each to one code (`by`, `by-sa`, `by-nd`, `by-nc`, `by-nc-sa`,
`by-nc-nd`, `cc0`, `pdm`), or None when the licence is unknown or not Creative Commons."""

from __future__ import annotations

import re

CC_CODES = ("by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd", "cc0", "pdm")

# the codes each --license class accepts
LICENSE_CLASSES: dict[str, frozenset[str]] = {
    "creativecommons": frozenset(CC_CODES),
    "publicdomain": frozenset({"cc0", "pdm"}),
    "commercial": frozenset({"by", "by-sa", "by-nd", "cc0", "pdm"}),
    "modification": frozenset({"by", "by-sa", "by-nc", "by-nc-sa", "cc0", "pdm"}),
    "noncommercial": frozenset(CC_CODES),   # every CC licence allows non-commercial use
}

# flickr.photos.licenses.getInfo: id -> code (0 "All Rights Reserved", 7 "No known copyright
# restrictions" and 8 "United States Government Work" are not CC licences: unknown here)
FLICKR_LICENSES = {"1": "by-nc-sa", "2": "by-nc", "3": "by-nc-nd", "4": "by", "5": "by-sa", "6": "by-nd",
                   "9": "cc0", "10": "pdm"}


def license_code(text: object) -> str | None:
    """'CC BY-SA 4.0', 'by-sa', 'Attribution-ShareAlike', 'CC0', 'Public domain' -> a CC code."""
    if not isinstance(text, str) or not text.strip():
        return None
    t = text.strip().lower().replace("_", "-")
    if re.fullmatch(r"(cc[- ]?)?zero|cc0( [0-9.]+)?|cc-zero", t):
        return "cc0"
    if t in ("pdm", "public domain", "public-domain", "publicdomain", "public domain mark") or t.startswith("pd-"):
        return "pdm"
    t = re.sub(r"^cc[- ]", "", t)
    t = re.sub(r"\s+[0-9.]+(\s+\w+)?$", "", t)    # a version, maybe a jurisdiction
    words = {"attribution": "by", "noncommercial": "nc", "sharealike": "sa", "noderivatives": "nd",
             "noderivs": "nd"}
    parts = [words.get(p, p) for p in re.split(r"[- ]+", t) if p]
    code = "-".join(parts)
    return code if code in CC_CODES else None


def allowed(code: str | None, license_class: str | None) -> bool:
    """Whether an image with licence `code` may be kept when the user asked for `license_class`
    (no class: everything; a class: a known licence of that class only)."""
    if license_class is None:
        return True
    return code is not None and code in LICENSE_CLASSES[license_class]
