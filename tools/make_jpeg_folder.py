"""Writes an ImageFolder of real JPEG photos for data-pipeline benchmarks (issue #18).

    python tools/make_jpeg_folder.py OUT_DIR [--count 2000] [--classes 10] [--size 500x375] [--val 0]

OUT_DIR/train/<class>/<n>.jpg (and OUT_DIR/val/... with --val N): each image is a random crop of
one of scikit-image's colour photos (chelsea, coffee, astronaut, rocket, motorcycle, retina,
hubble...), scaled to --size, randomly flipped and colour-jittered, and JPEG-encoded by Pillow
(libjpeg-turbo, quality 75-95, 4:2:0), so the decoder sees real photographic DCT data.
Deterministic for a given --seed.
"""
import argparse
import pathlib

import numpy as np
import skimage
from PIL import Image

PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "retina.jpg", "hubble_deep_field.jpg", "color.png", "ihc.png"]


def sources():
    data = pathlib.Path(skimage.__file__).parent / "data"
    out = []
    for name in PHOTOS:
        p = data / name
        if p.exists():
            out.append(Image.open(p).convert("RGB"))
    if not out:
        raise SystemExit(f"no scikit-image photos under {data}")
    return out


def one(rng, photos, w, h):
    src = photos[rng.integers(len(photos))]
    sw, sh = src.size
    scale = rng.uniform(0.5, 1.0)
    cw, ch = int(sw * scale), int(sh * scale)
    x, y = rng.integers(0, sw - cw + 1), rng.integers(0, sh - ch + 1)
    img = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(img, dtype=np.float32) * rng.uniform(0.7, 1.3, size=3) + rng.uniform(-20, 20)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def write(root, count, classes, w, h, rng, photos):
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = one(rng, photos, w, h)
        img.save(root / f"class{i % classes:03d}" / f"{i:06d}.jpg", quality=int(rng.integers(75, 96)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", default="500x375", help="WxH of every image")
    p.add_argument("--val", type=int, default=0, help="images in val/ (default none)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    rng = np.random.default_rng(a.seed)
    photos = sources()
    write(a.out / "train", a.count, a.classes, w, h, rng, photos)
    if a.val:
        write(a.out / "val", a.val, a.classes, w, h, rng, photos)
    total = sum(f.stat().st_size for f in a.out.rglob("*.jpg"))
    print(f"{a.out}: {a.count} train + {a.val} val JPEGs, {w}x{h}, {a.classes} classes, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
