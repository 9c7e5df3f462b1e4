"""Writes the demo's sample inputs: Fashion-MNIST test images as PNG files, and a camera-like clip.

Usage: python tools/demo_samples.py OUT_DIR [--count N]
- OUT_DIR/fmnist/NNNN_<label>.png: the first N test images (28x28 gray), true label in the name.
- OUT_DIR/photos/*.png: real photos shipped with scikit-image (chelsea the cat, coffee, astronaut, rocket),
  all written as PNG (the demo's ffmpeg concat clip decodes every entry with one decoder).
- OUT_DIR/photos.txt: the photos' paths, one per line.
- OUT_DIR/clip/NNN.png: the stills of the camera-like clip (ffmpeg turns them into a raw YUYV
  stream): the first 4 Fashion-MNIST images, then the photos, all RGB at --clip-size.
"""
import argparse
import gzip
import pathlib

import numpy as np
import skimage
from PIL import Image

FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
LABELS = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]


def idx(path, offset):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--clip-size", default="320x240", help="WxH of the clip stills")
    a = p.parse_args()
    images = idx(FMNIST / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = idx(FMNIST / "t10k-labels-idx1-ubyte.gz", 8)
    (a.out / "fmnist").mkdir(parents=True, exist_ok=True)
    for i in range(a.count):
        Image.fromarray(images[i]).save(a.out / "fmnist" / f"{i:04d}_{LABELS[labels[i]]}.png")
    data = pathlib.Path(skimage.__file__).parent / "data"
    (a.out / "photos").mkdir(exist_ok=True)
    paths = []
    for name in PHOTOS:
        if (data / name).exists():
            dst = a.out / "photos" / (pathlib.Path(name).stem + ".png")
            Image.open(data / name).convert("RGB").save(dst)
            paths.append(str(dst.resolve()))
    (a.out / "photos.txt").write_text("\n".join(paths) + "\n")
    w, h = (int(v) for v in a.clip_size.split("x"))
    clip = a.out / "clip"
    clip.mkdir(exist_ok=True)
    stills = [Image.fromarray(images[i]) for i in range(min(4, a.count))] + [Image.open(p) for p in paths]
    for i, im in enumerate(stills):
        im.convert("RGB").resize((w, h), Image.BILINEAR).save(clip / f"{i:03d}.png")


if __name__ == "__main__":
    main()
