"""Real images to measure on: Debian's openclipart-png (public-domain clip art, ~8,100 PNGs
under /usr/share/openclipart/png/<category>/<subcategory>/; `apt-get install openclipart-png`).

Importable by tests (`from realdata import ...`, tests/ is on pytest's path) and by scripts
(`sys.path.insert(0, <repo>/tests)`, as they import fake_engine). Two ways to a class-per-folder
dataset:

- `crawl_set`: the user's path. The set's real files are served by the loopback engine
  (tests/fake_engine.py, Openverse's `/v1/images/` format, licence fields, 127.0.0.1 only) and
  fetched by camkit's own crawler (`camkit.crawl.crawl`, `engine="openverse"`), so what a run
  trains on went through verification, deduplication, the ambiguous-image check and the
  manifest, exactly as a `camkit crawl` would leave it.
- `copy_set`: the cheap path for tests that do not need the crawl: the files copied (or
  converted: alpha on white, at most `size` px) straight into class folders, exact twins dropped.

Issue 29 keeps two of the package's categories for independent evaluation. Nothing here walks
the package's top level: every folder used is checked against `CATEGORIES`, an explicit
allow-list of the categories these sets and the stand-in's pretraining may read, and the
reserved ones are not in it (and are named nowhere in this repository's code).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

OPENCLIPART = Path(os.environ.get("CAMKIT_OPENCLIPART", "/usr/share/openclipart/png"))

# The only top-level categories anything here may read.
CATEGORIES = ("buildings", "computer", "decorations", "education", "electronics", "geography", "office",
              "people", "plants", "recreation", "science", "shapes", "signs_and_symbols", "special", "tools",
              "transportation", "unsorted")

MAX_PER_CLASS = 150          # a bigger folder is a seeded sample of this many
LICENSE = {"license": "pdm", "version": "1.0", "url": "https://creativecommons.org/publicdomain/mark/1.0/"}
MARKER = ".realdata.json"    # written last into a crawled / copied set: it is complete, reuse it


def _checked(folder: str) -> str:
    top = folder.split("/")[0]
    if top not in CATEGORIES or ".." in folder.split("/"):
        raise ValueError(f"'{folder}' is not under an allowed openclipart category ({', '.join(CATEGORIES)})")
    return folder


@dataclass(frozen=True)
class ClipClass:
    """One class: the PNGs of `folder` (relative to OPENCLIPART), with its sub-folders when
    `nested` (a top-level category's own files alone when not)."""
    name: str
    folder: str
    nested: bool = True

    def __post_init__(self):
        _checked(self.folder)

    def all_files(self, root: Path | None = None) -> list[Path]:
        base = (root or OPENCLIPART) / self.folder
        return sorted(base.rglob("*.png") if self.nested else base.glob("*.png"))

    def files(self, root: Path | None = None, limit: int = MAX_PER_CLASS, seed: int = 0) -> list[Path]:
        """Every file in a seeded random order, at most `limit` (a seeded sample of a bigger folder)."""
        found = self.all_files(root)
        random.Random(f"{self.name}-{seed}").shuffle(found)
        return found[:limit]


# Two-class sets, 60-150 PNGs per class (counts in openclipart-png 1:0.18+dfsg-19, files / distinct
# contents): subcategories of different categories, so the classes share no folder.
SETS: dict[str, tuple[ClipClass, ClipClass]] = {
    "vehicles-sports": (ClipClass("vehicles", "transportation/vehicles"),        # 62 / 60
                        ClipClass("sports", "recreation/sports")),               # 72 / 70
    "clothing-music": (ClipClass("clothing", "people/clothing"),                 # 64 / 61
                       ClipClass("music", "recreation/music")),                  # 78 / 75
    "tools-office": (ClipClass("tools", "tools", nested=False),                  # 112 / 108 (5 in both)
                     ClipClass("office", "office", nested=False)),               # 126 / 124
    "roadsigns-party": (ClipClass("roadsigns", "transportation/roadsigns"),      # 72 / 72 (one 29,700 px)
                        ClipClass("party", "recreation/party")),                 # 65 / 65
}


def available(name: str | None = None) -> bool:
    """openclipart-png is installed (and holds the folders of set `name`, or of every set)."""
    names = [name] if name else list(SETS)
    return OPENCLIPART.is_dir() and all((OPENCLIPART / c.folder).is_dir() for n in names for c in SETS[n])


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def set_files(name: str, per_class: int | None = None, seed: int = 0) -> dict[str, list[Path]]:
    """Class name -> its files in serving order (seeded), at most `per_class` (default MAX_PER_CLASS)."""
    return {c.name: c.files(limit=per_class or MAX_PER_CLASS, seed=seed) for c in SETS[name]}


def distinct(files: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The files without exact twins: a content that occurs in two classes is dropped from both
    (the crawl's 'ambiguous'), a content repeated in one class is kept once."""
    owners: dict[str, set[str]] = {}
    hashes = {c: [digest(f) for f in fs] for c, fs in files.items()}
    for c, hs in hashes.items():
        for h in hs:
            owners.setdefault(h, set()).add(c)
    out: dict[str, list[Path]] = {}
    for c, fs in files.items():
        seen: set[str] = set()
        out[c] = []
        for f, h in zip(fs, hashes[c]):
            if len(owners[h]) == 1 and h not in seen:
                seen.add(h)
                out[c].append(f)
    return out


def reserved_for_evaluation() -> tuple[set[str], set[str]]:
    """(contents, file names) of every set's files: the stand-in's pretraining leaves out any
    image with one of these contents or names, wherever it sits in the package (the package
    repeats many images across folders, e.g. transportation/*.png and transportation/vehicles/)."""
    contents, names = set(), set()
    for pair in SETS.values():
        for c in pair:
            for f in c.all_files():
                contents.add(digest(f))
                names.add(f.name.lower())
    return contents, names


def pretraining_classes(min_images: int = 20, cap: int = 200, seed: int = 0) -> dict[str, list[Path]]:
    """The stand-in body's classes (scripts/pretrain_standin.py): every folder of the allowed
    categories with its own PNGs as one class ('computer/icons/flat-theme/action'), except the
    sets' folders (with their sub-folders where the set's class has them) and, anywhere, every
    image whose content or file name is one of the sets' (`reserved_for_evaluation`), so no
    image a benchmark evaluates on was seen in pretraining. A content in two classes is dropped
    from both; a class keeps at most `cap` images (a seeded sample) and needs `min_images`."""
    used = [c for pair in SETS.values() for c in pair]
    contents, names = reserved_for_evaluation()

    def excluded(folder: str) -> bool:
        return any(folder == c.folder or (c.nested and folder.startswith(c.folder + "/")) for c in used)

    candidates: dict[str, list[tuple[Path, str]]] = {}
    for category in CATEGORIES:
        base = OPENCLIPART / category
        for d in sorted([base, *(p for p in base.rglob("*") if p.is_dir())]):
            folder = _checked(d.relative_to(OPENCLIPART).as_posix())
            if excluded(folder):
                continue
            kept = [(f, digest(f)) for f in sorted(d.glob("*.png")) if f.name.lower() not in names]
            candidates[folder] = [(f, h) for f, h in kept if h not in contents]
    owners: dict[str, set[str]] = {}
    for folder, items in candidates.items():
        for _, h in items:
            owners.setdefault(h, set()).add(folder)
    classes = {}
    for folder, items in candidates.items():
        seen: set[str] = set()
        files = []
        for f, h in items:
            if len(owners[h]) == 1 and h not in seen:
                seen.add(h)
                files.append(f)
        random.Random(f"{folder}-{seed}").shuffle(files)
        if len(files) >= min_images:
            classes[folder] = sorted(files[:cap])
    return classes


# ---------------------------------------------------------------- the user's path: loopback crawl

@contextmanager
def serve(files: dict[str, list[Path]]) -> Iterator:
    """A FakeEngine answering Openverse searches for each class name with its real files (in the
    given order) as public-domain results; yields the engine (`engine.endpoint`)."""
    from fake_engine import FakeEngine

    with FakeEngine() as engine:
        for cls, paths in files.items():
            for i, path in enumerate(paths):
                url = engine.add(f"/clip/{cls}/{i:04d}.png", path.read_bytes(), content_type="image/png")
                item = engine.openverse_result(cls, url, license=LICENSE["license"], version=LICENSE["version"],
                                               creator="openclipart.org")
                item.update(title=path.stem, license_url=LICENSE["url"], provider="openclipart",
                            source="openclipart", category="clipart", filetype="png",
                            foreign_landing_url=f"https://openclipart.org/search/?query={path.stem}",
                            attribution=f'"{path.stem}" from openclipart.org, public domain')
        yield engine


def crawl_set(name: str, out: str | Path, per_class: int | None = None, seed: int = 0,
              reuse: bool = True, **crawl_options) -> Path:
    """Crawl set `name` through the loopback engine with camkit's crawler into `out/<class>/`
    (at most `per_class` images a class; default: every file served). With `reuse`, a folder
    this function completed before (its MARKER, written last) is returned as it is."""
    from camkit.crawl import crawl

    out = Path(out)
    if reuse and _complete(out, name, per_class, seed, "crawl"):
        return out
    if out.exists():
        shutil.rmtree(out)
    files = set_files(name, per_class, seed)
    options = {"timeout": 10.0, "retries": 1, "backoff": 0.1, "idle_timeout": 30, "total_timeout": 600, "quiet": True,
               "threads": 4}
    options.update(crawl_options)
    with serve(files) as engine:
        summaries = crawl(list(files), max_num=per_class or MAX_PER_CLASS, out=out, engine="openverse",
                          endpoint=engine.endpoint, **options)
    _mark(out, name, per_class, seed, "crawl", {s.keyword: {"served": len(files[s.keyword]), "saved": s.saved,
                                                          "rejected": s.rejected} for s in summaries})
    return out


# ---------------------------------------------------------------- the cheap path: copy

def copy_set(name: str, out: str | Path, per_class: int | None = None, seed: int = 0, size: int | None = None,
             reuse: bool = True) -> Path:
    """Set `name` straight into `out/<class>/` without the crawl, exact twins dropped (`distinct`):
    the PNGs as they are, or with `size`, converted to RGB (alpha on white) at most `size` px a
    side (images camkit would refuse for their pixel count are left out)."""
    from PIL import Image

    from camkit.core.images import MAX_PIXELS, to_rgb

    out = Path(out)
    if reuse and _complete(out, name, per_class, seed, f"copy{size or ''}"):
        return out
    if out.exists():
        shutil.rmtree(out)
    counts = {}
    for cls, paths in distinct(set_files(name, per_class, seed)).items():
        (out / cls).mkdir(parents=True)
        kept = 0
        for path in paths:
            target = out / cls / f"{kept:04d}.png"
            if size is None:
                shutil.copyfile(path, target)
            else:
                with Image.open(path) as img:
                    if img.width * img.height > MAX_PIXELS:
                        continue
                    rgb = to_rgb(img)
                rgb.thumbnail((size, size), Image.LANCZOS)
                rgb.save(target)
            kept += 1
        counts[cls] = kept
    _mark(out, name, per_class, seed, f"copy{size or ''}", counts)
    return out


def _complete(out: Path, name: str, per_class: int | None, seed: int, how: str) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("key") == [name, per_class, seed, how]


def _mark(out: Path, name: str, per_class: int | None, seed: int, how: str, counts: dict) -> None:
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"key": [name, per_class, seed, how], "set": name,
                               "classes": {c.name: c.folder for c in SETS[name]}, "counts": counts}, indent=1))
    tmp.replace(out / MARKER)


def counts(out: str | Path) -> dict:
    """What a crawled / copied set's marker recorded (per class: served, saved, rejected)."""
    return json.loads((Path(out) / MARKER).read_text())["counts"]


# ---------------------------------------------------------------- pytest: skip without the package

try:
    import pytest
except ImportError:  # scripts run without pytest
    pytest = None

if pytest is not None:
    needs_openclipart = pytest.mark.skipif(
        not available(), reason=f"openclipart-png is not installed under {OPENCLIPART} "
                                "(apt-get install openclipart-png)")

    @pytest.fixture(scope="session")
    def clip_pair(tmp_path_factory) -> Path:
        """vehicles / sports, 24 a class, copied and converted to at most 64 px (no crawl)."""
        if not available("vehicles-sports"):
            pytest.skip(f"openclipart-png is not installed under {OPENCLIPART}")
        return copy_set("vehicles-sports", tmp_path_factory.mktemp("clip") / "images", per_class=24, size=64)
