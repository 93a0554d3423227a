"""Attribute captions for the real sets, and their text features: what ``reid-al simulate --text`` adds.

Person search describes people with attributes many of them share ("red jacket, backpack"): text that
narrows the search without naming the individual. The real sets get captions of that kind, derived
from what every view of an identity has in common:

* glyphs: the character's script, case and kind, and its diacritic ("latin small letter, acute",
  "greek capital letter", "digit", "arrow", "punctuation"), from the Unicode name and category;
* icons: the freedesktop context the themes file the icon under ("actions", "places", "status", ...),
  plus the first word of its name when at least ``ICON_WORD_MIN`` icons of the set share it
  ("places, folder", "actions, media", "apps").

No pretrained text tower can be downloaded offline, so captions are embedded as bags of attribute
words: each word a seeded random unit vector (from a hash of the word), a caption the normalised sum
of its words. Captions that share words are similar, identical captions are identical vectors; the
product itself uses the encoder's text tower (``encode_text``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.simulate.datasets import SimulationDataset, default_cache_dir

__all__ = ["CAPTION_DIM", "caption_for", "embed_captions", "icon_contexts", "with_captions"]

CAPTION_DIM = 64  # width of the bag-of-words caption features
ICON_WORD_MIN = 3  # a name's first word joins the caption only when this many icons share it
ICON_CONTEXTS = frozenset({"actions", "animations", "apps", "categories", "devices", "emblems", "emotes",
                           "intl", "mimetypes", "places", "status"})
_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC")
_CATEGORY_KIND = {"L": "letter", "N": "digit", "P": "punctuation", "S": "symbol", "Z": "space"}
_GLYPH = re.compile(r"^U([0-9A-F]{4,6})$")


def _glyph_caption(code: int) -> str:
    char = chr(code)
    name = unicodedata.name(char, "")
    words = name.split()
    parts: list[str] = []
    if words and words[0] in _SCRIPTS:
        parts.append(words[0].lower())
    for case in ("CAPITAL", "SMALL"):
        if case in words:
            parts.append(case.lower())
    category = unicodedata.category(char)
    if "ARROW" in words:
        parts.append("arrow")
    elif category == "Sm":
        parts.append("math symbol")
    else:
        parts.append(_CATEGORY_KIND.get(category[0], "symbol"))
    caption = " ".join(parts)
    if "WITH" in words:  # the diacritic or stroke: shared by many letters
        caption += ", " + " ".join(words[words.index("WITH") + 1 :]).lower()
    return caption


def caption_for(set_name: str, identity_name: str, *, context: str | None = None,
                shared_words: frozenset[str] = frozenset()) -> str:
    """The attribute caption of one identity of a real set (module docstring). Icons need their
    ``context``; ``shared_words``: the first words common enough to be an attribute."""
    if set_name.startswith("glyphs"):
        match = _GLYPH.match(identity_name)
        if match is None:
            raise ValueError(f"identity_name: {identity_name!r} is not a glyph identity (U+hex)")
        return _glyph_caption(int(match.group(1), 16))
    if set_name == "icons":
        if not context:
            raise ValueError(f"context: icon {identity_name!r} needs its freedesktop context")
        word = identity_name.split("-")[0].lower()
        return f"{context}, {word}" if word in shared_words else context
    raise ValueError(f"set_name: no captions for {set_name!r} (glyphs and icons have them)")


def icon_contexts(icons_root: Path) -> dict[str, str]:
    """Icon name -> the context directory most of the unpacked themes under ``icons_root`` file it in."""
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for path in icons_root.rglob("*"):
        if path.suffix in (".png", ".svg") and not path.is_symlink():
            contexts = [part for part in path.parts if part in ICON_CONTEXTS]
            if contexts:
                seen[path.stem][contexts[-1]] += 1
    return {name: counts.most_common(1)[0][0] for name, counts in seen.items()}


def _word_vector(word: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=dim)
    return v / np.linalg.norm(v)


def embed_captions(captions: Sequence[str], dim: int = CAPTION_DIM) -> np.ndarray:
    """Bag-of-words features, one L2-normalised row per caption (an empty caption: a zero row)."""
    out = np.zeros((len(captions), dim), dtype=np.float32)
    cache: dict[str, np.ndarray] = {}
    for row, caption in enumerate(captions):
        words = re.findall(r"[a-z0-9]+", caption.lower())
        if not words:
            continue
        v = sum(cache.setdefault(w, _word_vector(w, dim)) for w in words)
        out[row] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def with_captions(dataset: SimulationDataset, *, icons_root: Path | None = None) -> SimulationDataset:
    """``dataset`` with a caption and its text features per image (every view of an identity shares
    its identity's caption). ``icons_root``: the unpacked themes (``usr/share/icons``) the icons set was
    drawn from; by default the simulator cache's."""
    if dataset.identity_names is None:
        raise ValueError("dataset: has no identity names to derive captions from")
    set_name = dataset.name
    names = dataset.identity_names
    if set_name == "icons":
        root = icons_root if icons_root is not None else default_cache_dir() / "debs-root" / "usr/share/icons"
        contexts = icon_contexts(root)
        words = Counter(name.split("-")[0].lower() for name in names)
        shared = frozenset(w for w, count in words.items() if count >= ICON_WORD_MIN)
        by_identity = [caption_for(set_name, name, context=contexts.get(name), shared_words=shared)
                       for name in names]
    else:
        by_identity = [caption_for(set_name, name) for name in names]
    captions = [by_identity[int(label)] for label in dataset.labels]
    meta = {**dataset.meta, "text": "attribute captions", "distinct_captions": len(set(by_identity))}
    return dataclasses.replace(dataset, captions=captions, text_features=embed_captions(captions), meta=meta)
