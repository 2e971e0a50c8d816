"""Precision and recall of `imgsim dupes` on edited copies of real photos.

Makes eight edited copies of each 640-px sample photo (JPEG quality 40, half
size, a small crop, 35% brighter, stored rotated with an EXIF orientation,
PNG, a caption band, a 4-degree tilt), adds the photo's camera thumbnail,
indexes everything with imgsim, runs `imgsim dupes --json` and counts pairs:
a true pair is two files made from the same photo; a found pair is two files
in the same group. Burst frames of one scene are different photos, so
grouping them counts against precision.

Run from the repository root, with Pillow installed:

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install -r benches/requirements.txt
    /tmp/bench-venv/bin/python benches/dupes_calibration.py

Options pass through to `imgsim dupes` after `--`, for example
`-- --max-residual 1.5`.

`--held-out` makes the same kinds of edits with other strengths (quality 25,
0.4 size, an 8% crop from other sides, 25% brighter, the other EXIF
rotation, WebP, a white caption band at the top, a 3-degree tilt the other
way), for checking thresholds that were chosen on the default set.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parent.parent
EDITS = ["orig", "thumb", "q40", "half", "crop", "bright", "exifrot", "png", "caption", "tilt", "turn"]


# Strengths of the edits: the default set, and the held-out one.
STRENGTHS = {
    "default": {
        "quality": 40,
        "resize": 0.5,
        "crop": (0.06, 0.04, 0.03, 0.05),
        "brightness": 1.35,
        "orientation": 8,
        "lossless": (".png", {}),
        "caption": ("bottom", (0, 0, 0), (255, 255, 255), 8),
        "tilt": 4,
        "turn": 25,
    },
    "held-out": {
        "quality": 25,
        "resize": 0.4,
        "crop": (0.02, 0.08, 0.06, 0.01),
        "brightness": 1.25,
        "orientation": 6,
        "lossless": (".webp", {"lossless": True}),
        "caption": ("top", (255, 255, 255), (0, 0, 0), 10),
        "tilt": -3,
        "turn": -20,
    },
}


def make_set(photos: Path, out: Path, strengths: dict = STRENGTHS["default"]) -> dict:
    """Writes the edited copies and returns file name -> source photo."""
    groups = json.loads((photos / "groups.json").read_text())
    truth = {}
    for source, (original, thumbnail) in groups.items():
        image = ImageOps.exif_transpose(Image.open(photos / original)).convert("RGB")
        width, height = image.size

        def save(edit, picture, suffix=".jpg", **options):
            name = f"{source}__{edit}{suffix}"
            picture.save(out / name, **options)
            truth[name] = source

        save("orig", image, quality=95)
        save("thumb", Image.open(photos / thumbnail).convert("RGB"), quality=95)
        save("q40", image, quality=strengths["quality"])
        factor = strengths["resize"]
        resized = image.resize((int(width * factor), int(height * factor)), Image.LANCZOS)
        save("half", resized, quality=90)
        left, top, right, bottom = strengths["crop"]
        crop_box = (int(width * left), int(height * top), width - int(width * right), height - int(height * bottom))
        save("crop", image.crop(crop_box), quality=90)
        save("bright", ImageEnhance.Brightness(image).enhance(strengths["brightness"]), quality=90)
        exif = Image.Exif()
        exif[0x0112] = strengths["orientation"]
        # Orientation 8 displays the stored pixels turned 90 degrees
        # counter-clockwise, 6 clockwise, so the stored pixels are turned
        # the other way.
        stored = image.transpose(Image.ROTATE_270 if strengths["orientation"] == 8 else Image.ROTATE_90)
        save("exifrot", stored, quality=90, exif=exif.tobytes())
        suffix, options = strengths["lossless"]
        save("png", image, suffix=suffix, **options)
        edge, fill, ink, share = strengths["caption"]
        captioned = image.copy()
        draw = ImageDraw.Draw(captioned)
        band = height // share
        top_of_band = 0 if edge == "top" else height - band
        draw.rectangle((0, top_of_band, width, top_of_band + band), fill=fill)
        draw.text((10, top_of_band + band // 4), "Holiday 2003 - all rights reserved", fill=ink)
        save("caption", captioned, quality=90)
        save("tilt", image.rotate(strengths["tilt"], resample=Image.BICUBIC), quality=90)
        save("turn", image.rotate(strengths["turn"], resample=Image.BICUBIC), quality=90)
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imgsim", default=str(ROOT / "target/release/imgsim"))
    parser.add_argument("--photos", default=str(ROOT.parent / "shared/testdata/photos"))
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="make the edits with the held-out strengths instead of the default ones",
    )
    parser.add_argument("dupes_args", nargs="*", help="extra options for imgsim dupes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        images = scratch / "set"
        images.mkdir()
        strengths = STRENGTHS["held-out" if args.held_out else "default"]
        truth = make_set(Path(args.photos), images, strengths)
        database = scratch / "set.db"
        subprocess.run([args.imgsim, "--db", database, "index", "-q", images], check=True)
        output = subprocess.run(
            [args.imgsim, "--db", database, "-q", "dupes", "--json", *args.dupes_args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    groups = json.loads(output)["groups"]
    group_of = {}
    for number, group in enumerate(groups):
        for member in group["members"]:
            group_of[os.path.basename(member["path"])] = number

    found = true_pairs = hits = 0
    missed = Counter()
    for a, b in itertools.combinations(sorted(truth), 2):
        same = truth[a] == truth[b]
        grouped = a in group_of and group_of.get(a) == group_of.get(b)
        true_pairs += same
        found += grouped
        hits += same and grouped
        if same and not grouped:
            for name in (a, b):
                missed[name.split("__")[-1].split(".")[0]] += 1
    precision = hits / found if found else 1.0
    recall = hits / true_pairs
    print(f"files {len(truth)}, groups {len(groups)}, true pairs {true_pairs}, found pairs {found}")
    print(f"precision {precision:.3f}  recall {recall:.3f}")
    print("missed pairs by edit (a pair counts for both its files):")
    for edit in EDITS:
        print(f"  {edit:8s} {missed[edit]}")


if __name__ == "__main__":
    sys.exit(main())
