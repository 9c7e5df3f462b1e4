//! `host import`: torchvision's published checkpoint format (`.pth`, written here by the venv's
//! torchvision with random weights) -> a run directory -> `host export` (fp32 without data,
//! int8 calibrated on an ImageFolder), checked against torchvision's own logits.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_error, host, python, stderr, stdout, TempDir};
use host::checkpoint::{load_weights, read_safetensors};
use host::model::{ModelOptions, ResNet};
use shared::parity::Parity;
use shared::ResNetConfig;
use tch::{nn, Device};

fn torchvision_files(dir: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torchvision_reference.py");
    let out = Command::new(python()).arg(script).arg(dir).output().expect("cannot run the venv's python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json_line(o: &std::process::Output) -> serde_json::Value {
    let out = stdout(o);
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `root/{train,val}/c0..c9/k.jpg`: real JPEG files, 10 classes.
fn image_folder(root: &Path) {
    for split in ["train", "val"] {
        for c in 0..10u32 {
            let d = root.join(split).join(format!("c{c}"));
            std::fs::create_dir_all(&d).unwrap();
            for k in 0..2u32 {
                let img = image::RgbImage::from_fn(48 + 4 * k, 40, |x, y| image::Rgb([(x * 5 + c * 20) as u8, (y * 3) as u8, (k * 90) as u8]));
                img.save(d.join(format!("{k}.jpg"))).unwrap();
            }
        }
    }
}

#[test]
fn import_torchvision_pth_then_export_without_data_and_int8_with_an_image_folder() {
    let dir = TempDir::new("import");
    torchvision_files(dir.path());

    // A 1000-class torchvision file: ImageNet's class names, the ImageNet eval preprocessing.
    let run = dir.join("r18");
    let o = host(&["import", "--weights", s(&dir.join("resnet18_in1k.pth")), "--arch", "resnet18", "--out", s(&run), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_line(&o);
    assert_eq!((r["classes"].as_u64(), r["labels"].as_str(), r["params"].as_u64()), (Some(1000), Some("imagenet"), Some(11_689_512)));
    let labels = std::fs::read_to_string(run.join("labels.txt")).unwrap();
    let labels: Vec<&str> = labels.lines().collect();
    assert_eq!((labels.len(), labels[0], labels[281], labels[999]), (1000, "tench", "tabby", "toilet tissue"));
    assert!(run.join("run.json").is_file());

    // The run holds torchvision's network: the same logits as torchvision on its input.
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, &ResNetConfig::resnet18(), ModelOptions::default()).unwrap();
    load_weights(&run, &model, &[]).unwrap();
    let (io, _) = read_safetensors(&dir.join("resnet18_in1k_io.safetensors")).unwrap();
    let d = (model.forward_t(&io["input"], false) - &io["logits_eval"]).abs().max().double_value(&[]);
    assert!(d <= 1e-4, "imported run vs torchvision: max |diff| = {d}");

    // fp32 export needs no data: compared on seeded inputs, accuracy not claimed; ONNX Runtime
    // checks the ONNX.
    let evw = run.join("r18.evw");
    let o = host(&["export", "--checkpoint", s(&run), "--out", s(&evw), "--onnx", s(&run.join("r18.onnx")), "--parity-samples", "4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_line(&o);
    assert!(r["fp32_top1"].is_null() && r["exported_top1"].is_null(), "{r}");
    assert_eq!((r["test_images"].as_u64(), r["top1_agreement"].as_f64()), (Some(4), Some(1.0)));
    assert!(r["max_rel_diff"].as_f64().unwrap() < 1e-4, "{r}");
    assert!(r["ort"]["top1_agreement"].as_f64() == Some(1.0), "{r}");
    assert!(stderr(&o).contains("no dataset") && stdout(&o).contains("seeded random inputs"), "{}", stderr(&o));
    let parity = Parity::parse(&std::fs::read(run.join("r18.parity.safetensors")).unwrap()).unwrap();
    assert_eq!((parity.input_shape, parity.num_classes, parity.labels), ([4, 3, 224, 224], 1000, None));
    let weights = std::fs::read(&evw).unwrap();
    let file = shared::weights::WeightsFile::parse(&weights).unwrap();
    let labels: Vec<&str> = file.labels().collect();
    assert_eq!((labels.len(), labels[281]), (1000, "tabby"));

    // What needs data says so.
    let o = host(&["export", "--checkpoint", s(&run), "--out", s(&run.join("q.evw")), "--int8"]);
    assert_error(&o, &["no dataset", "--int8", "--dataset imagefolder:DIR"]);
    let o = host(&["eval", "--checkpoint", s(&run)]);
    assert_error(&o, &["host import", "no dataset", "--dataset"]);
    let o = host(&["train", "--resume", "--out", s(&run)]);
    assert_error(&o, &["made by `host import`", "--init-from"]);
    let o = host(&["import", "--weights", s(&dir.join("resnet18_in1k.pth")), "--arch", "resnet18", "--out", s(&run)]);
    assert_error(&o, &["already holds a run"]);
    let o = host(&["import", "--weights", s(&dir.join("resnet18_in1k.pth")), "--arch", "resnet34", "--out", s(&dir.join("x"))]);
    assert_error(&o, &["resnet18_in1k.pth", "resnet34"]);
    let o = host(&["import", "--weights", s(&dir.join("bottleneck1111.pth")), "--arch", "resnet18", "--out", s(&dir.join("y"))]);
    assert_error(&o, &["bottleneck1111.pth", "resnet18"]);
    let o = host(&["import", "--weights", s(&dir.join("resnet18.pth")), "--arch", "resnet18", "--out", s(&dir.join("z"))]);
    assert_error(&o, &["10 classes", "--labels"]);
    assert!(!dir.join("x").join("run.json").exists() && !dir.join("z").join("run.json").exists());

    // 10 classes with --labels at 64 px, then int8 calibrated on an ImageFolder of JPEGs.
    let names = dir.join("names.txt");
    std::fs::write(&names, (0..10).map(|c| format!("c{c}\n")).collect::<String>()).unwrap();
    let small = dir.join("r18-10");
    let o = host(&[
        "import", "--weights", s(&dir.join("resnet18.pth")), "--arch", "resnet18", "--labels", s(&names),
        "--image-size", "64", "--out", s(&small),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let folder = dir.join("folder");
    image_folder(&folder);
    let dataset = format!("imagefolder:{}", folder.display());
    let o = host(&[
        "export", "--checkpoint", s(&small), "--out", s(&small.join("q.evw")), "--int8", "--dataset", &dataset,
        "--calib-batches", "2", "--calib-batch-size", "5", "--parity-samples", "4", "--no-ort", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_line(&o);
    assert_eq!((r["precision"].as_str(), r["calib_images"].as_u64(), r["test_images"].as_u64()), (Some("int8"), Some(10), Some(20)));
    assert!(r["fp32_top1"].as_f64().is_some() && r["int8_layers"].as_u64() == Some(21), "{r}");
    let o = host(&["eval", "--checkpoint", s(&small), "--dataset", &dataset, "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
