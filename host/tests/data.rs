//! Data loading on real files: Fashion-MNIST idx (gzipped and raw, wrong magic), ImageFolder on
//! JPEG folders made here (one corrupt file, an empty class folder).

mod common;

use std::io::Write;

use common::{fashion_mnist_dir, TempDir};
use host::data::fashion_mnist::{FashionMnist, Split};
use host::data::image_folder::ImageFolder;
use host::data::{DataOptions, Dataset, DatasetSpec, LoaderSpec, Source};
use host::presets::{Presets, Transform};
use shared::preprocess::{Frame, PixelFormat, Preprocess};

#[test]
fn fashion_mnist_real_files() {
    let dir = fashion_mnist_dir();
    let train = FashionMnist::load(&dir, Split::Train).unwrap();
    let test = FashionMnist::load(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60000, 10000));
    // The first training image is an ankle boot, the first test image too.
    assert_eq!((train.label(0), test.label(0)), (9, 9));
    let mut counts = [0usize; 10];
    for i in 0..test.len() {
        counts[test.label(i) as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
    let img = train.image(0).unwrap();
    assert_eq!((img.width, img.height, img.format, img.data.len()), (28, 28, PixelFormat::Gray8, 784));

    // Eval preprocessing is shared's Preprocess: (x / 255 - 0.2860) / 0.3530.
    let mut out = vec![0f32; 784];
    let t = Transform::Eval(Preprocess::FASHION_MNIST);
    t.apply(&img, &mut host::rng::Rng::new(0), &mut out).unwrap();
    for (o, &p) in out.iter().zip(&img.data) {
        assert!((o - (f32::from(p) / 255.0 - 0.2860) / 0.3530).abs() < 1e-5);
    }
}

/// Writes idx files: `n` images of `side`x`side` and labels, gzipped or raw.
fn write_idx(dir: &std::path::Path, prefix: &str, images_magic: [u8; 4], n: u32, gz: bool) {
    let mut img = images_magic.to_vec();
    for d in [n, 28, 28] {
        img.extend(d.to_be_bytes());
    }
    img.extend((0..n * 784).map(|i| (i % 251) as u8));
    let mut lab = vec![0, 0, 8, 1];
    lab.extend(n.to_be_bytes());
    lab.extend((0..n).map(|i| (i % 10) as u8));
    for (name, bytes) in [(format!("{prefix}-images-idx3-ubyte"), img), (format!("{prefix}-labels-idx1-ubyte"), lab)] {
        if gz {
            let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn idx_raw_gz_and_bad_magic() {
    let dir = TempDir::new("idx");
    write_idx(dir.path(), "train", [0, 0, 8, 3], 5, false);
    write_idx(dir.path(), "t10k", [0, 0, 8, 3], 3, true);
    let spec = DatasetSpec::FashionMnist(dir.path().to_path_buf());
    let data = Dataset::open(&spec, &DataOptions::default()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (5, 3));
    assert_eq!(data.test.label(2), 2);
    assert_eq!(data.train.image(0).unwrap().data[..3], [0, 1, 2]);

    let bad = TempDir::new("idx-bad");
    write_idx(bad.path(), "train", [0, 0, 8, 1], 5, false);
    let e = FashionMnist::load(bad.path(), Split::Train).err().unwrap().to_string();
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("not an idx file") && e.contains("00 00 08 01"), "{e}");

    let e = FashionMnist::load(&dir.join("nope"), Split::Train).err().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");
}

fn write_jpeg(path: &std::path::Path, w: u32, h: u32, seed: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8 ^ seed, (y * 5) as u8, seed]));
    img.save(path).unwrap();
}

/// `root/{train,val}/{cat,dog}/k.jpg`, plus `train/dog/broken.jpg` that is not a JPEG.
fn image_folder(root: &std::path::Path) {
    for split in ["train", "val"] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for k in 0..3u32 {
                write_jpeg(&d.join(format!("{k}.jpg")), 40 + 8 * k, 30 + 4 * k, (c * 100 + k as usize) as u8);
            }
        }
    }
    std::fs::write(root.join("train/dog/broken.jpg"), b"\xff\xd8\xff\xe0 this is not a jpeg").unwrap();
    std::fs::write(root.join("train/dog/notes.txt"), b"not an image").unwrap();
}

#[test]
fn image_folder_decodes_skips_corrupt_and_matches_shared_eval() {
    let root = TempDir::new("imagefolder");
    image_folder(root.path());
    let spec = DatasetSpec::ImageFolder(root.path().to_path_buf());
    let data = Dataset::open(&spec, &DataOptions { image_size: Some(16), ..Default::default() }).unwrap();
    assert_eq!(data.classes, ["cat", "dog"]);
    assert_eq!((data.train.len(), data.test.len()), (7, 6), "the .txt file is not listed");
    assert_eq!(data.presets, Presets::imagenet(16));
    assert_eq!(data.presets.eval, Preprocess { resize: 18, crop: 16, ..Preprocess::IMAGENET_EVAL });

    // Training: RandomResizedCrop + flip; the corrupt file is skipped and counted.
    host::data::init_workers(Some(2));
    let transform = Transform::Train(data.presets.train.clone());
    let loader = LoaderSpec {
        source: data.train.as_ref(),
        transform: &transform,
        order: (0..data.train.len()).collect(),
        batch_size: 4,
        drop_last: false,
        seed: 1,
        epoch: 0,
    };
    let (mut seen, mut skipped, mut why) = (Vec::<i64>::new(), 0, None);
    loader
        .for_each(|b| {
            assert_eq!(b.images.len(), b.len() * 3 * 16 * 16);
            assert!(b.images.iter().all(|v| v.is_finite()));
            seen.extend(b.labels.iter().copied());
            skipped += b.skipped;
            why = why.take().or(b.first_skip.clone());
            Ok(())
        })
        .unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(seen, [0, 0, 0, 1, 1, 1]);
    assert!(why.unwrap().contains("broken.jpg"));

    // Eval is exactly shared's Preprocess on the decoded RGB image.
    let img = data.test.image(4).unwrap();
    let mut got = vec![0f32; 3 * 16 * 16];
    Transform::Eval(data.presets.eval).apply(&img, &mut host::rng::Rng::new(9), &mut got).unwrap();
    let want = data.presets.eval.run_to_vec(&Frame::new(&img.data, img.width, img.height, PixelFormat::Rgb8).unwrap()).unwrap();
    assert_eq!(got, want);

    // Augmentation is a pure function of (seed, epoch, index).
    let mut a = vec![0f32; 768];
    let mut b = vec![0f32; 768];
    let s = |i| host::rng::Rng::stream(1, host::rng::Purpose::Augment, 0, i);
    transform.apply(&img, &mut s(4), &mut a).unwrap();
    transform.apply(&img, &mut s(4), &mut b).unwrap();
    assert_eq!(a, b);
    transform.apply(&img, &mut s(5), &mut b).unwrap();
    assert_ne!(a, b);
}

#[test]
fn image_folder_errors() {
    let root = TempDir::new("imagefolder-bad");
    image_folder(root.path());
    std::fs::create_dir_all(root.join("val/zebra")).unwrap();
    std::fs::write(root.join("val/zebra/readme.md"), "no images here").unwrap();
    let e = ImageFolder::open(&root.join("val")).err().unwrap().to_string();
    assert!(e.contains("class folder `zebra` holds no image"), "{e}");

    std::fs::remove_dir_all(root.join("val/zebra")).unwrap();
    std::fs::create_dir_all(root.join("val/zebra")).unwrap();
    write_jpeg(&root.join("val/zebra/0.jpg"), 8, 8, 1);
    let spec = DatasetSpec::ImageFolder(root.path().to_path_buf());
    let e = Dataset::open(&spec, &DataOptions::default()).err().unwrap().to_string();
    assert!(e.contains("classes"), "{e}");

    let e = ImageFolder::open(&root.join("missing")).err().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");
}

/// Writes, with Pillow (the venv's), the odd files of a real ImageFolder into `dir`: a photo-like
/// 4:2:0 JPEG, a progressive one, a grayscale one, a CMYK one (Adobe, inverted), a PNG, a PNG
/// named .jpg, a truncated JPEG, a JPEG with garbage after its header, an empty file; and a
/// `pil.json` with Pillow's own RGB decode statistics for the CMYK file.
fn write_odd_files(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"
import json, sys, pathlib
import numpy as np
from PIL import Image
d = pathlib.Path(sys.argv[1])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:375, 0:500]
rgb = np.stack([xx * 255 // 500, yy * 255 // 375, (xx + yy) % 256], -1).astype(np.float32)
rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
photo = Image.fromarray(rgb)
photo.save(d / "a_photo.jpg", quality=90)
photo.save(d / "b_progressive.jpg", quality=85, progressive=True)
photo.convert("L").save(d / "c_gray.jpg", quality=90)
photo.convert("CMYK").save(d / "d_cmyk.jpg", quality=95)
photo.resize((120, 90)).save(d / "e_image.png")
photo.resize((64, 48)).save(d / "f_png_named.jpg", format="PNG")
data = (d / "a_photo.jpg").read_bytes()
(d / "g_truncated.jpg").write_bytes(data[: len(data) // 2])
(d / "h_corrupt.jpg").write_bytes(data[:300] + bytes(rng.integers(0, 256, 4000, dtype=np.uint8)))
(d / "i_empty.jpg").write_bytes(b"")
cmyk = np.asarray(Image.open(d / "d_cmyk.jpg").convert("RGB"), dtype=np.float64)
full = np.asarray(Image.open(d / "a_photo.jpg").convert("RGB"))
(d / "pil.json").write_text(json.dumps({"cmyk_mean": cmyk.mean(axis=(0, 1)).tolist(),
                                        "photo": full.reshape(-1).tolist()}))
"#;
    let out = std::process::Command::new(common::python()).arg("-c").arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "pillow: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn odd_files_are_decoded_or_skipped_never_a_crash() {
    use host::data::image_folder::decode_rgb;
    let root = TempDir::new("imagefolder-odd");
    let dir = root.join("train/odd");
    write_odd_files(&dir);
    let pil: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("pil.json")).unwrap()).unwrap();

    // libjpeg-turbo at full size decodes exactly as Pillow (libjpeg-turbo too, same IDCT and
    // upsampling): at most 1 level apart, none off on average.
    let photo = decode_rgb(&dir.join("a_photo.jpg")).unwrap();
    assert_eq!((photo.width, photo.height, photo.format), (500, 375, PixelFormat::Rgb8));
    let want: Vec<u8> = pil["photo"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    let diff: Vec<i32> = photo.data.iter().zip(&want).map(|(&a, &b)| i32::from(a) - i32::from(b)).collect();
    assert!(diff.iter().all(|d| d.abs() <= 1), "max diff {:?}", diff.iter().map(|d| d.abs()).max());
    for name in ["b_progressive.jpg", "c_gray.jpg"] {
        let img = decode_rgb(&dir.join(name)).unwrap();
        assert_eq!((img.width, img.height, img.data.len()), (500, 375, 500 * 375 * 3), "{name}");
    }
    let gray = decode_rgb(&dir.join("c_gray.jpg")).unwrap();
    assert!(gray.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]), "gray comes out as R = G = B");
    // CMYK: the same colours as Pillow's CMYK -> RGB, on average within 2 levels per channel.
    let cmyk = decode_rgb(&dir.join("d_cmyk.jpg")).unwrap();
    for c in 0..3 {
        let mean = cmyk.data.iter().skip(c).step_by(3).map(|&v| f64::from(v)).sum::<f64>() / (500.0 * 375.0);
        let want = pil["cmyk_mean"][c].as_f64().unwrap();
        assert!((mean - want).abs() < 2.0, "channel {c}: {mean} vs Pillow {want}");
    }
    let png_named_jpg = decode_rgb(&dir.join("f_png_named.jpg")).unwrap();
    assert_eq!((png_named_jpg.width, png_named_jpg.height), (64, 48));
    for (name, why) in [("g_truncated.jpg", "Premature end"), ("i_empty.jpg", "empty")] {
        let e = format!("{:#}", decode_rgb(&dir.join(name)).err().unwrap());
        assert!(e.contains(why), "{name}: {e}");
    }
    assert!(decode_rgb(&dir.join("h_corrupt.jpg")).is_err());

    // Through the loader: 6 decoded, the 3 broken files skipped and counted, the first named.
    let spec = DatasetSpec::ImageFolder(root.path().to_path_buf());
    let split = host::data::SplitSet::open(&spec, host::data::Split::Train, &DataOptions::default()).unwrap();
    assert_eq!(split.source.len(), 9, "pil.json is not listed");
    host::data::init_workers(Some(2));
    let transform = Transform::Train(split.presets.train.clone());
    for epoch in 0..3 {
        let loader = LoaderSpec {
            source: split.source.as_ref(),
            transform: &transform,
            order: (0..9).collect(),
            batch_size: 4,
            drop_last: false,
            seed: 7,
            epoch,
        };
        let (mut kept, mut skipped, mut first) = (0, 0, None);
        loader
            .for_each(|b| {
                assert!(b.images.iter().all(|v| v.is_finite()));
                kept += b.len();
                skipped += b.skipped;
                first = first.take().or(b.first_skip.clone());
                Ok(())
            })
            .unwrap();
        assert_eq!((kept, skipped), (6, 3));
        let first = first.unwrap();
        assert!(first.contains("g_truncated.jpg") && first.contains("Premature end"), "{first}");
    }
}

/// The crop a scaled, partial decode feeds the resampler is the full-size decode's crop: the same
/// (seed, epoch, index) gives the same box and flip, and the pixels differ only by the DCT-domain
/// downscale (and at most half a scaled pixel at the box edges).
#[test]
fn scaled_partial_decode_matches_full_decode() {
    use host::data::image_folder::decode_crop;
    use host::data::jpeg::{Jpeg, scaled_len};
    use host::data::Crop;
    let root = TempDir::new("jpeg-scaled");
    let dir = root.join("train/a");
    write_odd_files(&dir);
    let path = dir.join("a_photo.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let full = host::data::image_folder::decode_rgb(&path).unwrap();

    // Rows and columns of a partial decode at full scale are exactly the full decode's.
    let region = [123, 77, 200, 150];
    let d = Jpeg::open(&bytes).unwrap().decode(8, Some(region)).unwrap();
    let (ox, oy) = d.origin;
    assert!(ox <= 123 && oy == 77 && ox + d.image.width >= 323 && d.image.height == 150);
    assert!(d.image.width < 500, "columns outside the crop are left out");
    // Exact but for the first and last decoded column, where the chroma upsampler (fancy,
    // triangle filter) misses its neighbour outside the crop.
    let w = d.image.width as usize;
    let (mut edge_diff, mut edge_n) = (0u64, 0u64);
    for y in 0..d.image.height as usize {
        let got = &d.image.data[y * w * 3..][..w * 3];
        let want = &full.data[((oy as usize + y) * 500 + ox as usize) * 3..][..w * 3];
        assert_eq!(got[3..(w - 1) * 3], want[3..(w - 1) * 3], "row {y}");
        for i in (0..3).chain((w - 1) * 3..w * 3) {
            edge_diff += u64::from(got[i].abs_diff(want[i]));
            edge_n += 1;
        }
    }
    assert!(edge_diff < 8 * edge_n, "edge columns: mean abs diff {}", edge_diff as f64 / edge_n as f64);
    // Scaled: libjpeg's output size.
    for n in 1..=8 {
        let d = Jpeg::open(&bytes).unwrap().decode(n, None).unwrap();
        assert_eq!((d.image.width, d.image.height), (scaled_len(500, n), scaled_len(375, n)), "{n}/8");
    }

    // Training samples: scaled + partial decode against full decode, same box and flip.
    let presets = Presets::imagenet(64);
    let t = Transform::Train(presets.train.clone());
    let mut scales = std::collections::BTreeSet::new();
    for i in 0..40u64 {
        let mut rng = host::rng::Rng::stream(3, host::rng::Purpose::Augment, 0, i);
        let mut want = vec![0f32; 3 * 64 * 64];
        t.apply(&full, &mut rng.clone(), &mut want).unwrap();
        let mut got = vec![0f32; 3 * 64 * 64];
        struct One<'a>(&'a std::path::Path);
        impl Source for One<'_> {
            fn len(&self) -> usize {
                1
            }
            fn label(&self, _: usize) -> i64 {
                0
            }
            fn image(&self, _: usize) -> anyhow::Result<host::image::Image> {
                host::data::image_folder::decode_rgb(self.0)
            }
            fn describe(&self, _: usize) -> String {
                self.0.display().to_string()
            }
            fn crop(&self, _: usize, pick: &mut dyn FnMut(u32, u32) -> Crop) -> anyhow::Result<host::data::Cropped> {
                decode_crop(self.0, pick)
            }
        }
        t.load(&One(&path), 0, &mut rng, &mut got).unwrap();
        let c = decode_crop(&path, &mut |w, h| Crop {
            region: host::presets::random_resized_crop_box(w, h, host::presets::RRC_SCALE, host::presets::RRC_RATIO, &mut host::rng::Rng::stream(3, host::rng::Purpose::Augment, 0, i)),
            out: 64,
        })
        .unwrap();
        scales.insert(c.scale);
        let mad = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len() as f32;
        // Normalized units (1 = one std, about 57 levels): the noise of the photo is 12 levels.
        assert!(mad < 0.12, "sample {i}: scale {}/8, mean abs diff {mad}", c.scale);
    }
    assert!(scales.len() >= 3 && scales.iter().any(|&s| s < 4), "several scales, some below 1/2: {scales:?}");
}

#[test]
fn bench_data_prints_json() {
    let root = TempDir::new("bench-data");
    let dir = root.join("train/a");
    write_odd_files(&dir);
    let dataset = format!("imagefolder:{}", root.path().display());
    let o = common::host(&[
        "bench-data", "--dataset", &dataset, "--batch-size", "4", "--epochs", "1", "--threads", "2", "--scaling",
        "--image-size", "32",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let r: serde_json::Value = serde_json::from_str(common::stdout(&o).trim()).unwrap();
    assert_eq!((r["engine"].as_str(), r["images"].as_u64(), r["threads"].as_u64()), (Some("host"), Some(9), Some(2)));
    assert_eq!(r["skipped"].as_u64(), Some(3));
    assert!(r["img_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["scaling"].as_array().unwrap().len(), 2);
    assert!(r["first_skip"].as_str().unwrap().contains(".jpg"));
}
