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
    let (mut seen, mut skipped, mut why) = (Vec::new(), 0, None);
    loader
        .for_each(|b| {
            assert_eq!(b.images.len(), b.len() * 3 * 16 * 16);
            assert!(b.images.iter().all(|v| v.is_finite()));
            seen.extend(b.labels);
            skipped += b.skipped;
            why = why.take().or(b.first_skip);
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
