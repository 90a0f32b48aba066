#!/usr/bin/env python3
"""Regenerate the glyph benchmark in ``assets/glyphs/`` from Debian font packages.

Needs (Debian/Ubuntu)::

    apt-get install -y --no-install-recommends \\
        fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-liberation2 fonts-freefont-ttf \\
        fonts-urw-base35 fonts-croscore fonts-crosextra-carlito fonts-crosextra-caladea ... (see APT_PACKAGES)
    pip install numpy pillow fonttools

``python scripts/make_glyphs.py --print-apt`` prints the complete ``apt-get install`` line.

Usage::

    python scripts/make_glyphs.py            # regenerate assets/glyphs/{benchmark.npz,manifest.json,FONTS.md}
    python scripts/make_glyphs.py --check    # regenerate into a temp dir and compare with the shipped files
    python scripts/make_glyphs.py --out DIR  # write somewhere else

What it does (all deterministic given ``--seed``; the npz is written with fixed zip timestamps so
the same seed, font files and FreeType/Pillow versions give byte-identical output):

1. Collects the .ttf/.otf files of APT_PACKAGES, reads them with fontTools, drops symbol /
   dingbat / pictorial / math fonts, known metric-clone duplicates (CLONE_FAMILIES) and exact
   (family, style) duplicates, and keeps at most 4 styles per family (regular, bold, italic,
   bold-italic preferred).
2. Per task, a font is eligible only if every class glyph is in the font's cmap (not mapped to
   .notdef), renders non-blank, and differs from the font's .notdef (tofu) rendering.
3. Splits fonts by *family group* (= Debian package; a package often ships one superfamily such as
   DejaVu Sans/Serif/Mono) with a seeded shuffle: ~20 % of fonts go to test, the rest to
   train/val. ``val`` holds fresh samples (new distortions) from the train fonts.
4. Renders every sample at 64x64 (cap height 36 px), applies stroke-width variation, rotation,
   scale and shift, and box-downsamples to 16x16 uint8 (ink = 255 on 0).
5. Gaussian noise (sigma = NOISE_SIGMA, in [0,1] intensity units) is NOT stored: the loader adds
   ``np.random.default_rng(noise_seed).standard_normal((N,16,16), dtype=float32) * sigma`` per
   (task, split) with the seed recorded in the manifest, then clips to [0, 1].
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

GENERATOR_VERSION = "1.0.0"
SEED = 20240611
IMAGE_SIZE = 16
CANVAS = 64              # render resolution (4x the final size)
CAP_HEIGHT = 36          # height of "H" at the render resolution, px
MAX_EXTENT = 46          # glyphs larger than this (wide W, Ж, @, ...) are shrunk to fit, px
ROTATION_DEG = 23.0      # uniform in [-23, 23]
SCALE_RANGE = (0.8, 1.2)
SHIFT_PX = 1.5           # uniform shift in [-1.5, 1.5] px of the 16x16 image, each axis
STROKE_CHOICES = (-1, 0, 0, 1, 2)   # -1: erode (3x3 min filter), k>0: PIL stroke_width=k at 64 px
NOISE_SIGMA = 0.35
TEST_FRACTION = 0.2
MAX_STYLES_PER_FAMILY = 4
MAX_FONTS_PER_PACKAGE = 5   # round-robin over the package's families, basic styles first
SPLIT_CANDIDATES = 400      # seeded font splits tried; the one closest to 20 % test for every task wins

SPLIT_SIZES = {"train": 2048, "val": 512, "test": 1024}
PRETRAIN_SIZES = {"train": 6000, "val": 1000, "test": 1024}
SPLITS = ("train", "val", "test")

APT_PACKAGES = """
fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-liberation2 fonts-freefont-ttf
fonts-urw-base35 fonts-croscore fonts-crosextra-carlito fonts-crosextra-caladea fonts-linuxlibertine
fonts-ebgaramond fonts-gfs-artemisia fonts-gfs-baskerville fonts-gfs-bodoni-classic fonts-gfs-didot
fonts-gfs-neohellenic fonts-gfs-porson fonts-gfs-solomos fonts-gfs-theokritos fonts-gfs-gazis
fonts-gfs-complutum fonts-gfs-olga fonts-paratype fonts-adf-accanthis fonts-adf-baskervald
fonts-adf-berenis fonts-adf-gillius fonts-adf-ikarius fonts-adf-irianis fonts-adf-libris
fonts-adf-mekanus fonts-adf-oldania fonts-adf-romande fonts-adf-solothurn fonts-adf-switzera
fonts-adf-tribun fonts-adf-universalis fonts-adf-verana fonts-cantarell fonts-open-sans
fonts-roboto-unhinted fonts-roboto-slab fonts-lato fonts-firacode fonts-hack fonts-inconsolata
fonts-cmu fonts-texgyre fonts-sil-gentiumplus fonts-sil-charis fonts-sil-andika fonts-sil-doulos
fonts-oldstandard fonts-stix fonts-junicode fonts-cardo fonts-comic-neue fonts-go fonts-noto-mono
fonts-quicksand fonts-cabin fonts-jura fonts-play fonts-vollkorn fonts-yrsa-rasa fonts-tuffy
fonts-karla fonts-manrope fonts-jetbrains-mono fonts-anonymous-pro fonts-courier-prime fonts-b612
fonts-comfortaa fonts-dosis fonts-averia-gwf fonts-averia-sans-gwf fonts-averia-serif-gwf
fonts-prociono fonts-quattrocento fonts-fanwood fonts-goudybookletter fonts-lindenhill
fonts-opendin fonts-league-spartan fonts-mph-2b-damase fonts-oxygen fonts-humor-sans
fonts-dkg-handwriting fonts-isabella fonts-kristi fonts-dancingscript fonts-kaushanscript
fonts-lobster fonts-lobstertwo fonts-tlwg-garuda-ttf fonts-tlwg-kinnari-ttf fonts-tlwg-loma-ttf
fonts-tlwg-norasi-ttf fonts-tlwg-purisa-ttf fonts-tlwg-sawasdee-ttf fonts-tlwg-typist-ttf
fonts-tlwg-umpush-ttf fonts-tlwg-waree-ttf fonts-mononoki fonts-fantasque-sans fonts-clear-sans
fonts-gotico-antiqua fonts-ecolier-court fonts-femkeklaver fonts-yanone-kaffeesatz fonts-ocr-a
fonts-ocr-b fonts-tiresias fonts-sora fonts-karmilla fonts-elstob fonts-uralic fonts-oflb-euterpe
fonts-century-catalogue fonts-gnutypewriter fonts-arkpandora fonts-bajaderka fonts-blankenburg
fonts-monofur fonts-agave fonts-allerta fonts-junction fonts-lemonada fonts-rufscript
fonts-radisnoir fonts-routed-gothic fonts-staypuft fonts-summersby fonts-tomsontalks fonts-f500
fonts-engadget fonts-okolaks fonts-georgewilliams fonts-beteckna fonts-breip
""".split()

# Metric-compatible clones of a design shipped by another package: dropped, so that one design
# cannot sit on both sides of the font split (kept: Liberation, URW base35, DejaVu).
CLONE_FAMILIES = re.compile(
    r"^(arimo|tinos|cousine|freesans|freeserif|freemono|tex gyre .*|aerial.*|tymes.*|veramono.*)$",
    re.I,
)
# Symbol / dingbat / math / icon fonts (Latin code points mapped to non-letters, or not text fonts).
NON_TEXT = re.compile(r"symbol|dingbat|d050000l|emoji|icon|awesome|math|ornament|\bfleurons?\b", re.I)

PRETRAIN_CHARS = [chr(c) for c in range(ord("N"), ord("Z") + 1)] + [chr(c) for c in range(ord("n"), ord("z") + 1)]

TASKS = [
    ("digits", "Digits 0-9 (10 classes).", list("0123456789")),
    ("latin_upper", "Latin capital letters A-M (13 classes).", list("ABCDEFGHIJKLM")),
    ("latin_lower", "Latin small letters a-m (13 classes).", list("abcdefghijklm")),
    ("greek_lower", "Greek small letters alpha-omega without final sigma (24 classes).",
     list("αβγδεζηθικλμνξοπρστυφχψω")),
    ("cyrillic_upper", "Cyrillic capital letters that do not look like Latin ones (20 classes).",
     list("БГДЖЗИЙЛПФЦЧШЩЪЫЬЭЮЯ")),
    ("symbols", "ASCII/Unicode symbols (14 classes).", list("+−×÷=%&@#$?!*§")),
    ("greek_upper", "Greek capital letters distinct from Latin ones (10 classes).", list("ΓΔΘΛΞΠΣΦΨΩ")),
    ("font_style", "Typeface attribute: regular / bold / italic / bold-italic, from the font's OS/2 "
     "weight and italic flags, rendered on a random pretraining letter (N-Z, n-z); no stroke-width "
     "variation for this task since stroke width is the label signal.",
     ["regular", "bold", "italic", "bold-italic"]),
]
STYLE_CLASSES = ["regular", "bold", "italic", "bold-italic"]
NOTDEF_PROBE = "\U000F0FFF"  # a supplementary private-use code point no text font maps


# ---------------------------------------------------------------------------------------------
# font discovery
# ---------------------------------------------------------------------------------------------
def package_files(pkg: str) -> list[str]:
    out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: package {pkg} is not installed; run: python {sys.argv[0]} --print-apt")
    return sorted(p for p in out.stdout.split() if p.lower().endswith((".ttf", ".otf")) and os.path.isfile(p))


def short_license(raw: str) -> str:
    r = raw.strip()
    low = r.lower()
    table = [
        (r"^(sil[-_ ]?)?ofl[-_ ]?1\.1.*rfn|ofl-1.1-rfn", "OFL-1.1"),
        (r"(sil[-_ ]?)?(ofl|open[-_ ]font[-_ ]license)|^sil[-_ ]1\.1", "OFL-1.1"),
        (r"gpl-2\+ ?(with font exception|fe)|gpl-2\+fe|gpl-2.0\+ with font", "GPL-2+ with font exception"),
        (r"agpl-3 with font exception", "AGPL-3 with font exception"),
        (r"gpl-3\+?[ _-]*(with[ _-]*(special[ _-]*)?font[ _-]*exception|fontexception|fe\b)", "GPL-3+ with font exception"),
        (r"^gpl-2(\.0)?$", "GPL-2"),
        (r"^gpl-2(\.0)?\+$", "GPL-2+"),
        (r"gust", "GUST-Font-License (LPPL-1.3c)"),
        (r"lppl", "LPPL-1.3c"),
        (r"apache", "Apache-2.0"),
        (r"bitstream", "Bitstream-Vera"),
        (r"paratype", "ParaType-Free-Font-License"),
        (r"public.domain", "public-domain"),
    ]
    for pat, name in table:
        if re.search(pat, low):
            return name
    return r.split("\n")[0][:60] or "unknown"


def read_license(pkg: str, font_path: str) -> str:
    path = Path(f"/usr/share/doc/{pkg}/copyright")
    if not path.exists():
        return "unknown"
    text = path.read_text(errors="replace")
    if text.startswith("Format:"):
        best = None
        for stanza in re.split(r"\n\s*\n", text):
            files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, re.M)
            lic = re.search(r"^License:[ \t]*(.*)$", stanza, re.M)
            if not files or not lic or not lic.group(1).strip():
                continue
            pats = files.group(1).split()
            if any(p.startswith("debian/") for p in pats) and not any(p == "*" for p in pats):
                continue
            name = os.path.basename(font_path)
            def match(p):
                if p == "*":
                    return True
                base = os.path.basename(p)
                if base not in ("*", "") and fnmatch.fnmatch(os.path.splitext(name)[0], os.path.splitext(base)[0]) \
                        and not p.startswith(("debian/", "appstream/")):
                    return True  # source file (e.g. nf/Garuda*.sfd) of the installed font
                if "/" not in p:
                    return fnmatch.fnmatch(name, p)
                return fnmatch.fnmatch(font_path, "*/" + p) or fnmatch.fnmatch(name, os.path.basename(p)) and \
                    os.path.basename(os.path.dirname(p)) in font_path.split("/")

            if any(match(p) for p in pats):
                best = lic.group(1)  # DEP-5: the last matching stanza wins
        if best:
            return short_license(best)
    low = text.lower()
    for pat, name in [
        (r"sil open font license|ofl", "OFL-1.1"),
        (r"font exception|font embedding exception", "GPL-2+ with font exception"),
        (r"gnu general public license", "GPL-2+"),
        (r"apache license", "Apache-2.0"),
        (r"lppl|latex project public", "LPPL-1.3c"),
        (r"public domain", "public-domain"),
    ]:
        if re.search(pat, low):
            return name
    return "see /usr/share/doc/%s/copyright" % pkg


def font_info(path: str) -> dict | None:
    from fontTools.ttLib import TTFont

    try:
        tt = TTFont(path, lazy=True, fontNumber=0)
        cmap = tt.getBestCmap() or {}
        name = tt["name"]

        def nm(*ids):
            for i in ids:
                rec = name.getDebugName(i)
                if rec:
                    return rec.strip()
            return ""

        family = nm(16, 1)
        style = nm(17, 2) or "Regular"
        os2 = tt["OS/2"] if "OS/2" in tt else None
        weight = int(os2.usWeightClass) if os2 is not None else 400
        fs_sel = int(os2.fsSelection) if os2 is not None else 0
        mac = int(tt["head"].macStyle)
        italic_angle = float(tt["post"].italicAngle) if "post" in tt else 0.0
        panose_kind = int(os2.panose.bFamilyType) if os2 is not None and hasattr(os2, "panose") else 0
        symbol_cmap = any(t.platformID == 3 and t.platEncID == 0 for t in tt["cmap"].tables)
        variable = "fvar" in tt
        glyph_names = {cp: cmap[cp] for cp in cmap}
    except Exception as exc:  # unreadable font: skip
        print(f"  skip {path}: {exc}", file=sys.stderr)
        return None
    if weight < 100:  # some old fonts store 1..9
        weight *= 100
    italic = bool(fs_sel & 0x1 or fs_sel & 0x200 or mac & 0x2 or abs(italic_angle) > 0.5)
    bold_flag = bool(fs_sel & 0x20 or mac & 0x1)
    if 350 <= weight < 500 and not bold_flag:
        wclass = "regular"
    elif weight >= 600 or (bold_flag and weight < 350):
        wclass = "bold"
    else:
        wclass = None  # light / medium: not used for font_style
    style_class = None if wclass is None else (wclass if not italic else ("italic" if wclass == "regular" else "bold-italic"))
    return dict(
        path=path, family=family, style=style, weight=weight, italic=italic, style_class=style_class,
        panose_kind=panose_kind, symbol_cmap=symbol_cmap, variable=variable, cmap=glyph_names,
    )


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
_FONT_CACHE: dict = {}


def get_font(path: str, size: int):
    key = (path, size)
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = ImageFont.truetype(path, size)
    return _FONT_CACHE[key]


def font_size_for(path: str) -> int:
    f = ImageFont.truetype(path, 200)
    box = f.getbbox("H")
    h = max(box[3] - box[1], 1)
    return max(8, int(round(200 * CAP_HEIGHT / h)))


def render_crop(path: str, size: int, ch: str, stroke: int) -> Image.Image | None:
    """The glyph's ink, tightly cropped, at render resolution (mode L, ink=255)."""
    font = get_font(path, size)
    sw = max(stroke, 0)
    box = font.getbbox(ch, stroke_width=sw)
    w, h = box[2] - box[0], box[3] - box[1]
    pad = 4 + sw
    if w <= 0 or h <= 0:
        return None
    img = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
    ImageDraw.Draw(img).text((pad - box[0], pad - box[1]), ch, fill=255, font=font, stroke_width=sw, stroke_fill=255)
    ink = img.getbbox()
    if ink is None:
        return None
    img = img.crop(ink)
    if stroke < 0:
        eroded = img.filter(ImageFilter.MinFilter(3))
        # only erode strokes that survive (keep at least half of the ink)
        if np.asarray(eroded, dtype=np.float32).sum() >= 0.5 * np.asarray(img, dtype=np.float32).sum():
            img = eroded
    return img


def render_sample(args) -> np.ndarray:
    path, size, ch, stroke, angle, scale, dx, dy = args
    crop = render_crop(path, size, ch, stroke)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    if crop is None:
        return out
    w, h = crop.size
    fit = min(1.0, MAX_EXTENT / max(w, h))
    s = scale * fit
    f = CANVAS / IMAGE_SIZE
    cx_out, cy_out = CANVAS / 2 + dx * f, CANVAS / 2 + dy * f
    cx_in, cy_in = w / 2, h / 2
    th = math.radians(angle)
    c, si = math.cos(th), math.sin(th)
    # inverse map: p_in = R(-th) (p_out - c_out) / s + c_in
    a, b = c / s, si / s
    d, e = -si / s, c / s
    coeffs = (a, b, cx_in - a * cx_out - b * cy_out, d, e, cy_in - d * cx_out - e * cy_out)
    big = crop.transform((CANVAS, CANVAS), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=0)
    small = big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def render_chunk(jobs):
    return np.stack([render_sample(j) for j in jobs]) if jobs else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)


def glyph_ok(path: str, size: int, ch: str, notdef: np.ndarray | None) -> np.ndarray | None:
    crop = render_crop(path, size, ch, 0)
    if crop is None:
        return None
    arr = np.asarray(crop.resize((24, 24), Image.Resampling.BOX), dtype=np.int16)
    if arr.sum() < 255 * 4:
        return None
    if notdef is not None and notdef.shape == arr.shape and np.abs(arr - notdef).mean() < 3:
        return None
    return arr


# ---------------------------------------------------------------------------------------------
# main pipeline
# ---------------------------------------------------------------------------------------------
def collect_fonts() -> list[dict]:
    fonts, seen = [], set()
    for pkg in APT_PACKAGES:
        for path in package_files(pkg):
            info = font_info(path)
            if info is None:
                continue
            if NON_TEXT.search(info["family"]) or NON_TEXT.search(os.path.basename(path)):
                continue
            if info["panose_kind"] in (5,) or info["symbol_cmap"]:
                continue
            if CLONE_FAMILIES.match(info["family"]):
                continue
            key = (info["family"].lower(), info["style"].lower())
            if key in seen:
                continue
            seen.add(key)
            info["package"] = pkg
            fonts.append(info)
    # keep at most MAX_STYLES_PER_FAMILY styles per family, preferring the four basic styles
    by_family = defaultdict(list)
    for f in fonts:
        by_family[(f["package"], f["family"])].append(f)
    kept = []
    for key in by_family:
        group = by_family[key]
        def rank(f):
            basic = {"regular": 0, "bold": 1, "italic": 2, "bold-italic": 3}
            r = basic.get(f["style_class"], 9)
            exact = 0 if f["weight"] in (400, 700) else 1
            return (r, exact, abs(f["weight"] - 400), f["variable"], f["style"], f["path"])
        chosen, classes = [], set()
        for f in sorted(group, key=rank):  # chosen stays in rank order (regular, bold, italic, ...)
            if len(chosen) >= MAX_STYLES_PER_FAMILY:
                break
            if f["style_class"] is not None and f["style_class"] in classes:
                continue  # one font per basic style class
            chosen.append(f)
            if f["style_class"] is not None:
                classes.add(f["style_class"])
        kept.extend(chosen)
    # at most MAX_FONTS_PER_PACKAGE per package, round-robin over its families
    by_pkg = defaultdict(lambda: defaultdict(list))
    for f in kept:
        by_pkg[f["package"]][f["family"]].append(f)
    capped = []
    for pkg, fams in by_pkg.items():
        queues = [fams[k] for k in sorted(fams)]
        take = []
        while len(take) < MAX_FONTS_PER_PACKAGE and any(queues):
            for q in queues:
                if q and len(take) < MAX_FONTS_PER_PACKAGE:
                    take.append(q.pop(0))
        capped.extend(take)
    kept = capped
    kept.sort(key=lambda f: (f["package"], f["family"], f["style"], f["path"]))
    return kept


def check_coverage(fonts: list[dict]) -> list[dict]:
    """Fill f['tasks'] (task names the font can render) and f['size']; drop fonts that fail Latin."""
    good = []
    for f in fonts:
        path, cmap = f["path"], f["cmap"]
        try:
            size = font_size_for(path)
            notdef = glyph_ok(path, size, NOTDEF_PROBE, None)
        except Exception as exc:
            print(f"  skip {path}: {exc}", file=sys.stderr)
            continue
        f["size"] = size

        def covers(chars):
            arrs = []
            for ch in chars:
                g = cmap.get(ord(ch))
                if g is None or g == ".notdef":
                    return False
                arr = glyph_ok(path, size, ch, notdef)
                if arr is None:
                    return False
                arrs.append(arr.tobytes())
            return len(set(arrs)) == len(arrs)  # all distinct (catches fonts mapping letters to one glyph)

        if not covers(PRETRAIN_CHARS):
            continue
        f["tasks"] = [name for name, _, chars in TASKS if name != "font_style" and covers(chars)]
        if f["style_class"] is not None:
            f["tasks"].append("font_style")
        if not {"digits", "latin_upper", "latin_lower"} <= set(f["tasks"]):
            continue  # require good Latin coverage
        good.append(f)
    return good


def family_group(pkg: str) -> str:
    """Split unit: the Debian package, with -core/-extra/-ttf variants and superfamilies merged."""
    g = re.sub(r"-(core|extra|ttf|otf|unhinted|hinted)$", "", pkg)
    g = re.sub(r"^fonts-averia.*", "fonts-averia", g)
    g = re.sub(r"^fonts-liberation2?$", "fonts-liberation", g)
    return g


def split_fonts(fonts: list[dict], seed: int) -> None:
    """Seeded split of family groups: ~TEST_FRACTION of the fonts of *every* task go to test."""
    groups = defaultdict(list)
    for i, f in enumerate(fonts):
        groups[family_group(f["package"])].append(i)
    names = sorted(groups)
    task_names = [t[0] for t in TASKS]
    totals = {t: sum(t in f["tasks"] for f in fonts) for t in task_names}
    rng = np.random.default_rng([seed, 7])
    best = None
    for _ in range(SPLIT_CANDIDATES):
        order = [names[i] for i in rng.permutation(len(names))]
        target = TEST_FRACTION * len(fonts)
        n_test, test_groups = 0, set()
        for g in order:
            n = len(groups[g])
            if n_test + n <= target * 1.03:
                test_groups.add(g)
                n_test += n
        frac = [sum(t in fonts[i]["tasks"] for g in test_groups for i in groups[g]) / max(totals[t], 1)
                for t in task_names]
        frac.append(n_test / len(fonts))
        err = max(abs(x - TEST_FRACTION) for x in frac)
        if best is None or err < best[0]:
            best = (err, test_groups)
    for f in fonts:
        f["group"] = family_group(f["package"])
        f["split"] = "test" if f["group"] in best[1] else "train"


def make_jobs(task: str, chars: list[str], fonts: list[dict], font_ids: list[int], n: int, rng, is_style: bool):
    jobs, labels, font_idx = [], [], []
    n_cls = len(chars)
    cls = np.concatenate([rng.permutation(n_cls) for _ in range(-(-n // n_cls))])[:n]
    cls = cls[rng.permutation(n)]
    by_style = defaultdict(list)
    if is_style:
        for i in font_ids:
            by_style[STYLE_CLASSES.index(fonts[i]["style_class"])].append(i)
    for k in range(n):
        c = int(cls[k])
        if is_style:
            pool = by_style[c]
            fi = pool[int(rng.integers(len(pool)))]
            ch = PRETRAIN_CHARS[int(rng.integers(len(PRETRAIN_CHARS)))]
            stroke = 0
        else:
            fi = font_ids[int(rng.integers(len(font_ids)))]
            ch = chars[c]
            stroke = STROKE_CHOICES[int(rng.integers(len(STROKE_CHOICES)))]
        angle = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
        scale = float(rng.uniform(*SCALE_RANGE))
        dx, dy = (float(v) for v in rng.uniform(-SHIFT_PX, SHIFT_PX, size=2))
        jobs.append((fonts[fi]["path"], fonts[fi]["size"], ch, stroke, angle, scale, dx, dy))
        labels.append(c)
        font_idx.append(fi)
    return jobs, np.asarray(labels, np.int64), np.asarray(font_idx, np.int64)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed-compatible archive with fixed timestamps (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    h.update(path.read_bytes())
    return h.hexdigest()


def generate(out_dir: Path, seed: int, workers: int) -> None:
    print("collecting fonts ...", flush=True)
    fonts = collect_fonts()
    print(f"  {len(fonts)} candidate font files", flush=True)
    fonts = check_coverage(fonts)
    print(f"  {len(fonts)} font files pass Latin coverage", flush=True)
    split_fonts(fonts, seed)
    for f in fonts:
        f["license"] = read_license(f["package"], f["path"])

    all_tasks = TASKS + [("pretrain", "Pretraining classes: Latin N-Z and n-z (26 classes), disjoint from every "
                          "task's glyphs.", PRETRAIN_CHARS)]
    arrays: dict[str, np.ndarray] = {}
    task_meta = []
    noise_seeds = {}
    pool = Pool(workers) if workers > 1 else None
    for t_idx, (name, desc, chars) in enumerate(all_tasks):
        is_style = name == "font_style"
        sizes = PRETRAIN_SIZES if name == "pretrain" else SPLIT_SIZES
        eligible = [i for i, f in enumerate(fonts) if (name == "pretrain" or name in f["tasks"])]
        counts, font_counts = {}, {}
        for s_idx, split in enumerate(SPLITS):
            want_test = split == "test"
            ids = [i for i in eligible if (fonts[i]["split"] == "test") == want_test]
            if is_style:
                present = {fonts[i]["style_class"] for i in ids}
                if present != set(STYLE_CLASSES):
                    raise SystemExit(f"error: font_style/{split}: missing style classes {set(STYLE_CLASSES) - present}")
            if not ids:
                raise SystemExit(f"error: {name}/{split}: no eligible fonts")
            rng = np.random.default_rng([seed, t_idx, s_idx])
            jobs, labels, font_idx = make_jobs(name, chars, fonts, ids, sizes[split], rng, is_style)
            chunks = [jobs[i:i + 256] for i in range(0, len(jobs), 256)]
            parts = pool.map(render_chunk, chunks) if pool else [render_chunk(c) for c in chunks]
            images = np.concatenate(parts)
            arrays[f"{name}/{split}/images"] = images
            arrays[f"{name}/{split}/labels"] = labels
            arrays[f"{name}/{split}/font"] = font_idx
            noise_seeds[f"{name}/{split}"] = int(seed % 100000) * 1000 + t_idx * 10 + s_idx
            counts[split] = int(len(labels))
            font_counts[split] = len(ids)
            blank = int((images.reshape(len(images), -1).max(1) == 0).sum())
            print(f"  {name:15s} {split:5s} n={len(labels):5d} fonts={len(ids):3d} blank={blank}", flush=True)
        task_meta.append(dict(name=name, description=desc, class_names=list(chars) if not is_style else STYLE_CLASSES,
                              glyphs=list(chars) if not is_style else PRETRAIN_CHARS,
                              counts=counts, fonts_per_split=font_counts))
    if pool:
        pool.close()
        pool.join()

    out_dir.mkdir(parents=True, exist_ok=True)
    npz_path = out_dir / "benchmark.npz"
    tmp = out_dir / ".benchmark.npz.tmp"
    write_npz(tmp, arrays)
    os.replace(tmp, npz_path)
    digest = sha256(npz_path)

    import PIL
    from PIL import features
    manifest = dict(
        format="sammerge-glyphs",
        generator="scripts/make_glyphs.py",
        generator_version=GENERATOR_VERSION,
        seed=seed,
        image_size=IMAGE_SIZE,
        npz="benchmark.npz",
        npz_sha256=digest,
        keys="{task}/{split}/images uint8 [N,16,16] (ink=255, noise-free); {task}/{split}/labels int64 [N]; "
             "{task}/{split}/font int64 [N] (index into 'fonts')",
        rendering=dict(canvas_px=CANVAS, cap_height_px=CAP_HEIGHT, max_extent_px=MAX_EXTENT,
                       downsample="PIL BOX (area average) 64->16", resample="bilinear affine at 64 px",
                       freetype=features.version("freetype2"), pillow=PIL.__version__, numpy=np.__version__),
        distortions=dict(rotation_deg=[-ROTATION_DEG, ROTATION_DEG], scale=list(SCALE_RANGE),
                         shift_px_at_16=[-SHIFT_PX, SHIFT_PX],
                         stroke_choices=list(STROKE_CHOICES),
                         stroke_note="-1 = 3x3 min-filter erosion at 64 px (skipped if it would remove over half "
                                     "the ink), k>0 = PIL stroke_width k at 64 px, 0 = none; font_style uses 0 only"),
        noise=dict(sigma=NOISE_SIGMA, distribution="gaussian", applied="at load time",
                   formula="x = clip(images/255 + sigma * np.random.default_rng(seed).standard_normal((N,16,16), "
                           "dtype=np.float32), 0, 1); model input = (x - 0.5) / 0.5",
                   seeds=noise_seeds),
        split_policy=("fonts are split by family group (= Debian package) with a seeded shuffle, ~20% of font files "
                      "to 'test'; 'train' and 'val' use the remaining fonts with independent samples/distortions "
                      "('val' = held-out samples from the train fonts); test fonts never appear in train/val or "
                      "in pretrain train/val. Metric-clone families (Arimo, Tinos, Cousine, FreeSans/Serif/Mono, "
                      "TeX Gyre *, arkpandora) are dropped so one design cannot sit on both sides."),
        font_style_policy=("class from OS/2 usWeightClass (regular: 350-499, bold: >=600; 500-599 and <350 unused) "
                           "and italic flags (fsSelection bit 0/9, head.macStyle, post.italicAngle); glyph drawn "
                           "uniformly from the pretraining letters N-Z, n-z; classes balanced, fonts uniform within class"),
        tasks=[t for t in task_meta if t["name"] != "pretrain"],
        pretrain=[t for t in task_meta if t["name"] == "pretrain"][0],
        fonts=[dict(index=i, file=os.path.basename(f["path"]), path=f["path"], family=f["family"], style=f["style"],
                    weight=f["weight"], italic=f["italic"], style_class=f["style_class"], package=f["package"],
                    group=f["group"],
                    license=f["license"], split=f["split"], tasks=f["tasks"]) for i, f in enumerate(fonts)],
        font_split={s: [i for i, f in enumerate(fonts) if f["split"] == s] for s in ("train", "test")},
    )
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_fonts_md(out_dir / "FONTS.md", fonts)
    print(f"wrote {npz_path} ({npz_path.stat().st_size / 1e6:.2f} MB, sha256 {digest[:16]}...)")


def write_fonts_md(path: Path, fonts: list[dict]) -> None:
    by_pkg = defaultdict(list)
    for f in fonts:
        by_pkg[f["package"]].append(f)
    lines = [
        "# Fonts used by the glyph benchmark",
        "",
        "`benchmark.npz` contains 16x16 renderings of glyphs from the font files below (Debian packages;",
        "licences as read from `/usr/share/doc/<package>/copyright`). No font file is redistributed here;",
        "only small, heavily distorted renderings of individual glyphs. Regenerate with",
        "`python scripts/make_glyphs.py` (see its docstring for the `apt-get install` line).",
        "",
        f"{len(fonts)} font files from {len(by_pkg)} packages; "
        f"{sum(f['split'] == 'test' for f in fonts)} files (from "
        f"{len({f['package'] for f in fonts if f['split'] == 'test'})} packages) are test-only.",
        "",
        "| package | licence | split | files | families |",
        "|---|---|---|---|---|",
    ]
    for pkg in sorted(by_pkg):
        fs = by_pkg[pkg]
        lic = ", ".join(sorted({f["license"] for f in fs}))
        fams = ", ".join(sorted({f["family"] for f in fs}))
        lines.append(f"| {pkg} | {lic} | {fs[0]['split']} | {len(fs)} | {fams} |")
    lic_counts = Counter(f["license"] for f in fonts)
    lines += ["", "## Licences (font files)", "",
              "Short names are parsed from the Debian copyright files (DEP-5 `License:` of the matching `Files:`",
              "stanza); `other` means a package-specific licence: read `/usr/share/doc/<package>/copyright`.", ""]
    lines += [f"- {k}: {v}" for k, v in lic_counts.most_common()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "assets" / "glyphs")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with --out")
    ap.add_argument("--print-apt", action="store_true", help="print the apt-get line and exit")
    args = ap.parse_args(argv)
    if args.print_apt:
        print("apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES))
        return 0
    if not args.check:
        generate(args.out, args.seed, args.workers)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), args.seed, args.workers)
        new, old = Path(tmp) / "benchmark.npz", args.out / "benchmark.npz"
        if not old.exists():
            print(f"check: {old} missing", file=sys.stderr)
            return 1
        if sha256(new) == sha256(old):
            print("check: benchmark.npz is byte-identical")
            return 0
        a, b = np.load(new), np.load(old)
        same = sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
        print("check: arrays identical (zip bytes differ)" if same else "check: ARRAYS DIFFER", file=sys.stderr)
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
