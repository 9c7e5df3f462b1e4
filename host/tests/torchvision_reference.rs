//! `--init-from` loads torchvision weights, and the host forward pass equals torchvision's.
//!
//! The reference is generated at test time by `tests/fixtures/torchvision_reference.py` with the
//! workspace venv's Python (`HOST_TEST_PYTHON` overrides; CI has the venv).

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{assert_error, host, python, TempDir};
use host::checkpoint::{load_weights, read_safetensors, to_safetensors_bytes, write_atomic};
use host::model::{ModelOptions, ResNet};
use shared::{Block, ResNetConfig};
use tch::{nn, Device, Tensor};

/// Max |host - torchvision| allowed on the logits.
const TOLERANCE: f64 = 1e-4;

fn build(config: &ResNetConfig) -> ResNet {
    // The model keeps its own handles on the tensors; the store is only needed to build it.
    let vs = nn::VarStore::new(Device::Cpu);
    ResNet::new(&vs, config, ModelOptions::default()).unwrap()
}

#[test]
fn host_forward_equals_torchvision() {
    let dir = TempDir::new("tvref");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torchvision_reference.py");
    let py = python();
    let out = Command::new(&py)
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (set HOST_TEST_PYTHON): {e}", py.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bottleneck = ResNetConfig { block: Block::Bottleneck, stages: [1, 1, 1, 1], ..ResNetConfig::resnet50() };
    for (case, config) in [("resnet18", ResNetConfig::resnet18()), ("bottleneck1111", bottleneck)] {
        let config = config.with_classes(10);
        let weights = dir.join(&format!("{case}.safetensors"));
        let model = build(&config);
        load_weights(&weights, &model, &[]).unwrap();
        assert_eq!(model.tensor("bn1.num_batches_tracked").unwrap().int64_value(&[]), 7);

        let (io, _) = read_safetensors(&dir.join(&format!("{case}_io.safetensors"))).unwrap();
        let x = &io["input"];
        let check = |train: bool, want: &Tensor| {
            let got = model.forward_t(x, train);
            let d = (&got - want).abs().max().double_value(&[]);
            assert!(d <= TOLERANCE, "{case} train={train}: max |host - torchvision| = {d}");
        };
        check(false, &io["logits_eval"]);
        check(true, &io["logits_train"]);
    }

    // torchvision's own file format (torch.save, .pth), read in Rust: the same tensors, plain or
    // wrapped in a training checkpoint; a pickle that calls anything else is refused, not run.
    let (st, _) = read_safetensors(&dir.join("resnet18.safetensors")).unwrap();
    for file in ["resnet18.pth", "resnet18.ckpt.pth"] {
        let pth = host::pth::read_state_dict(&dir.join(file)).unwrap();
        assert_eq!(pth.len(), st.len(), "{file}");
        for (name, t) in &st {
            assert!(pth[name].equal(t), "{file}: `{name}` differs from the safetensors copy");
        }
    }
    let model = build(&ResNetConfig::resnet18().with_classes(10));
    load_weights(&dir.join("resnet18.pth"), &model, &[]).unwrap();
    let (io, _) = read_safetensors(&dir.join("resnet18_io.safetensors")).unwrap();
    let d = (model.forward_t(&io["input"], false) - &io["logits_eval"]).abs().max().double_value(&[]);
    assert!(d <= TOLERANCE, "resnet18.pth: max |host - torchvision| = {d}");
    let e = format!("{:#}", host::pth::read_state_dict(&dir.join("evil.pth")).unwrap_err());
    assert!(e.contains("evil.pth") && e.contains("system") && e.contains("refused"), "{e}");
    assert!(!dir.join("evil-ran").exists() && !std::path::Path::new("evil-ran").exists());
    let bytes = std::fs::read(dir.join("resnet18.pth")).unwrap();
    std::fs::write(dir.join("cut.pth"), &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", host::pth::read_state_dict(&dir.join("cut.pth")).unwrap_err());
    assert!(e.contains("cut.pth") && e.contains("not a readable torch.save file"), "{e}");
    // Through the CLI: eval of a bare .pth.
    let o = host(&["eval", "--checkpoint", dir.join("resnet18.pth").to_str().unwrap(), "--arch", "resnet18",
        "--dataset", "synthetic", "--image-size", "32", "--limit-test", "8", "--device", "cpu"]);
    assert!(o.status.success(), "{}", common::stderr(&o));

    // A missing or mis-shaped tensor is an error naming it and the file.
    let weights = dir.join("resnet18.safetensors");
    let (mut map, _) = read_safetensors(&weights).unwrap();
    let model = build(&ResNetConfig::resnet18().with_classes(10));
    map.remove("layer2.1.bn1.running_var");
    let e = model.load_state_dict(&map, &weights, &[]).unwrap_err().to_string();
    assert!(e.contains("`layer2.1.bn1.running_var` is missing") && e.contains("resnet18.safetensors"), "{e}");
    let (full, _) = read_safetensors(&weights).unwrap();
    let e = build(&ResNetConfig::resnet18().with_classes(7)).load_state_dict(&full, &weights, &[]).unwrap_err();
    assert!(e.to_string().contains("`fc.weight` has shape [10, 512], the model expects [7, 512]"), "{e}");
    // --init-exclude keeps the fresh classifier for a different number of classes.
    build(&ResNetConfig::resnet18().with_classes(7)).load_state_dict(&full, &weights, &["fc".into()]).unwrap();

    // Through the CLI: fine-tune torchvision weights on 10 synthetic classes, and a broken file.
    let run = dir.join("run");
    let o = host(&[
        "train", "--dataset", "synthetic", "--arch", "resnet18", "--image-size", "32", "--limit-train", "16",
        "--limit-test", "8", "--batch-size", "8", "--epochs", "1", "--device", "cpu",
        "--init-from", weights.to_str().unwrap(), "--out", run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let bad = dir.join("bad.safetensors");
    let tensors: Vec<(String, Tensor)> = map.into_iter().filter(|(k, _)| k != "fc.bias").collect();
    write_atomic(&bad, &to_safetensors_bytes(&tensors, HashMap::new()).unwrap()).unwrap();
    let o = host(&[
        "train", "--dataset", "synthetic", "--arch", "resnet18", "--image-size", "32", "--limit-train", "16",
        "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--init-from", bad.to_str().unwrap(), "--out",
        dir.join("run2").to_str().unwrap(),
    ]);
    assert_error(&o, &["bad.safetensors", "`layer2.1.bn1.running_var` is missing"]);
}
