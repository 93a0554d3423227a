"""Real multi-view image sets built from what Debian's package archive ships (the simulator's real data).

Synthetic pools hid every problem that real images showed, so the standard simulator runs use these:

* ``glyphs-plain``: identity = a character (Latin, Latin-1 and Extended-A, Greek, Cyrillic, arrows,
  maths); views = the character in four upright text faces (DejaVu Sans, DejaVu Serif, FreeSans,
  Liberation Sans). Frozen MobileNetV2 Rank-1 about 0.8: a camera network of similar viewpoints.
* ``glyphs-mixed``: the same characters in a sans, a serif, a monospace and an italic face (DejaVu Sans,
  FreeSerif, FreeMono, Linux Libertine Italic). Rank-1 about 0.26: views that look nothing alike.
* ``icons``: identity = a freedesktop icon name ("document-save", "folder-music", ...); views = that
  icon as drawn by four of eleven icon themes (Tango, GNOME, MATE, Oxygen, Faenza, Moka,
  elementary-xfce, Adwaita, Papirus, Breeze, Numix), chosen per name with a fixed seed. Rank-1 about 0.28.

Characters that render near-identically to an earlier character in two or more faces (homoglyphs such
as Latin A and Greek Alpha) are dropped: no annotator could tell them apart either. Icon names that a
theme draws with the same picture as another name (aliases), or that two themes draw identically, are
dropped for the same reason.

Building needs Debian's ``apt-get`` and ``dpkg-deb`` (packages are fetched once into the cache) and, for
``icons``, ``rsvg-convert`` (Debian package librsvg2-bin) for the SVG themes. Images are written as
``<cache>/<set>/<identity>/<view>.png`` and embedded like any ``--dataset folder``.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np

from trainer.files import locked

__all__ = ["REAL_SETS", "build_real_set", "real_set_root"]

SIZE = 96  # pixels per side of every written image
FONT_PACKAGES = ("fonts-dejavu-core", "fonts-freefont-ttf", "fonts-linuxlibertine", "fonts-liberation")
GLYPH_FACES = {
    "glyphs-plain": (
        ("dejavu-sans", "DejaVuSans.ttf"),
        ("dejavu-serif", "DejaVuSerif.ttf"),
        ("free-sans", "FreeSans.ttf"),
        ("liberation-sans", "LiberationSans-Regular.ttf"),
    ),
    "glyphs-mixed": (
        ("sans", "DejaVuSans.ttf"),
        ("serif", "FreeSerif.ttf"),
        ("mono", "FreeMono.ttf"),
        ("italic", "LinLibertine_RI.otf"),
    ),
}
GLYPH_RANGES = (
    (0x21, 0x7E), (0xA1, 0x17F), (0x391, 0x3C9), (0x400, 0x45F), (0x2190, 0x21FF), (0x2200, 0x22FF)
)
HOMOGLYPH_IOU = 0.9  # ink overlap above which two characters' renderings count as the same picture
ICON_THEMES = {
    "tango-icon-theme": "Tango",
    "gnome-icon-theme": "gnome",
    "mate-icon-theme": "mate",
    "oxygen-icon-theme": "oxygen",
    "faenza-icon-theme": "Faenza",
    "moka-icon-theme": "Moka",
    "elementary-xfce-icon-theme": "elementary-xfce",
    "adwaita-icon-theme": "Adwaita",
    "papirus-icon-theme": "Papirus",
    "breeze-icon-theme": "breeze",
    "numix-icon-theme": "Numix",
}
ICON_VIEWS = 4
ICON_SEED = 0
REAL_SETS = (*GLYPH_FACES, "icons")
_SIZE_DIR = re.compile(r"^(\d+)(?:x\d+)?$")


def real_set_root(name: str, cache_dir: Path) -> Path:
    return cache_dir / "realsets" / name


def build_real_set(name: str, cache_dir: Path) -> Path:
    """Build set ``name`` under ``cache_dir`` unless it is already there; returns its image root.

    Two simulations started side by side on a fresh machine would otherwise build into the same
    folder and one would delete the other's half-written images: builds take a lock on the cache."""
    if name not in REAL_SETS:
        raise ValueError(f"dataset: unknown real set {name!r}; one of {', '.join(REAL_SETS)}")
    out = real_set_root(name, cache_dir)
    with locked(out.parent):
        return _build_unlocked(name, cache_dir, out)


def _build_unlocked(name: str, cache_dir: Path, out: Path) -> Path:
    done = out / ".complete"
    if done.is_file():
        return out
    if out.exists():
        shutil.rmtree(out)  # a build that stopped half way
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    debs, root = cache_dir / "debs", cache_dir / "debs-root"
    if name in GLYPH_FACES:
        _unpack(FONT_PACKAGES, debs, root)
        n = _build_glyphs(root, tmp, GLYPH_FACES[name])
    else:
        if shutil.which("rsvg-convert") is None:
            raise RuntimeError("dataset icons: needs rsvg-convert to draw the SVG themes "
                               "(Debian: apt-get install librsvg2-bin)")
        _unpack(tuple(ICON_THEMES), debs, root)
        n = _build_icons(root, tmp)
    tmp.rename(out)
    done.write_text(f"{n} identities\n")
    return out


def _unpack(packages: tuple[str, ...], debs: Path, root: Path) -> None:
    """``apt-get download`` what is not cached yet, then ``dpkg-deb -x`` every package into ``root``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"real data sets are built from Debian packages: {tool} not found")
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not any(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True, capture_output=True)
    root.mkdir(parents=True, exist_ok=True)
    for package in packages:
        for deb in sorted(debs.glob(f"{package}_*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


# ------------------------------------------------------------------------------------------- glyphs
def _find_font(root: Path, filename: str) -> Path:
    hits = sorted(root.rglob(filename))
    if not hits:
        raise FileNotFoundError(f"font {filename} not found under {root}")
    return hits[0]


def _render(font, char: str) -> np.ndarray:
    """The glyph's ink, cropped, scaled to fit and centred on a white SIZE x SIZE canvas."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (4 * SIZE, 4 * SIZE), 255)
    ImageDraw.Draw(img).text((SIZE, SIZE), char, font=font, fill=0)
    ys, xs = np.nonzero(np.asarray(img) < 200)
    if ys.size == 0:
        return np.full((SIZE, SIZE), 255, np.uint8)
    crop = img.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    w, h = crop.size
    scale = min((SIZE - 16) / w, (SIZE - 16) / h, 1.5)
    crop = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    canvas = Image.new("L", (SIZE, SIZE), 255)
    canvas.paste(crop, ((SIZE - crop.size[0]) // 2, (SIZE - crop.size[1]) // 2))
    return np.asarray(canvas)


def _build_glyphs(root: Path, out: Path, faces: tuple[tuple[str, str], ...]) -> int:
    from fontTools.ttLib import TTFont
    from PIL import Image, ImageFont

    paths = [(view, _find_font(root, filename)) for view, filename in faces]
    covered = set.intersection(*[set(TTFont(str(p), fontNumber=0).getBestCmap() or {}) for _, p in paths])
    fonts = [(view, ImageFont.truetype(str(p), 72)) for view, p in paths]
    kept: list[tuple[int, list[np.ndarray]]] = []
    for lo, hi in GLYPH_RANGES:
        for code in range(lo, hi + 1):
            if code not in covered:
                continue
            views = [_render(font, chr(code)) for _, font in fonts]
            if any((v < 200).sum() < 20 for v in views):  # blank, or a dot: not an individual
                continue
            ink = [v < 128 for v in views]
            if any(_same_picture(ink, other) for _, other in kept):
                continue
            kept.append((code, ink))
            folder = out / f"U{code:04X}"
            folder.mkdir(parents=True, exist_ok=True)
            for (view, _), pixels in zip(fonts, views, strict=True):
                Image.fromarray(pixels).convert("RGB").save(folder / f"{view}.png")
    return len(kept)


def _same_picture(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Homoglyphs: near-identical ink in at least two of the faces."""
    same = 0
    for x, y in zip(a, b, strict=True):
        union = np.logical_or(x, y).sum()
        same += int(union > 0 and np.logical_and(x, y).sum() / union >= HOMOGLYPH_IOU)
    return same >= 2


# -------------------------------------------------------------------------------------------- icons
def _theme_icons(theme_dir: Path) -> dict[str, Path]:
    """Icon name -> its file closest to 48 px (at least 32 px; SVG in 'scalable' counts as 48) in one
    theme. Symlinks are legacy aliases of another name and are skipped; so are symbolic icons."""
    best: dict[str, tuple[float, Path]] = {}
    for path in (*theme_dir.rglob("*.png"), *theme_dir.rglob("*.svg")):
        if path.is_symlink() or "@2x" in str(path) or "symbolic" in path.name:
            continue
        sizes = [int(m.group(1)) for part in path.parts if (m := _SIZE_DIR.match(part))]
        if path.suffix == ".svg" and not sizes and "scalable" in path.parts:
            sizes = [48]
        if not sizes or sizes[-1] < 32:
            continue
        score = abs(sizes[-1] - 48) - 0.1 * (sizes[-1] > 48)
        if path.stem not in best or score < best[path.stem][0]:
            best[path.stem] = (score, path)
    return {name: path for name, (_, path) in best.items()}


def _draw_icon(path: Path):
    from PIL import Image

    inner = SIZE - 16
    if path.suffix == ".svg":
        png = subprocess.run(["rsvg-convert", "-w", str(inner), "-h", str(inner), str(path)],
                             check=True, capture_output=True).stdout
        img = Image.open(io.BytesIO(png)).convert("RGBA")
    else:
        img = Image.open(path).convert("RGBA")
    img = img.resize((inner, inner), Image.LANCZOS)
    canvas = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 255))
    canvas.alpha_composite(img, (8, 8))
    return canvas.convert("RGB")


def _build_icons(root: Path, out: Path) -> int:
    base = root / "usr" / "share" / "icons"
    themes = {theme: _theme_icons(base / theme) for theme in ICON_THEMES.values() if (base / theme).is_dir()}
    ambiguous: set[str] = set()
    for icons in themes.values():
        by_picture: dict[str, list[str]] = defaultdict(list)
        for name, path in icons.items():
            by_picture[hashlib.sha1(path.read_bytes()).hexdigest()].append(name)
        ambiguous.update(n for names in by_picture.values() if len(names) > 1 for n in names)
    rng = np.random.default_rng(ICON_SEED)
    count = 0
    for name in sorted({n for icons in themes.values() for n in icons} - ambiguous):
        have = [theme for theme, icons in themes.items() if name in icons]
        if len(have) < ICON_VIEWS:
            continue
        chosen = sorted(rng.choice(have, size=ICON_VIEWS, replace=False).tolist())
        pictures = [_draw_icon(themes[theme][name]) for theme in chosen]
        if len({hashlib.sha1(p.tobytes()).hexdigest() for p in pictures}) < ICON_VIEWS:
            continue  # two themes share the very same picture: not two views
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for theme, picture in zip(chosen, pictures, strict=True):
            picture.save(folder / f"{theme}.png")
        count += 1
    return count
