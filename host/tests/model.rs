//! The tch model is exactly the `shared` walk with torchvision's state_dict names and shapes.

use host::device::Amp;
use host::model::{ModelOptions, ResNet};
use shared::{Form, ResNetConfig};
use tch::{nn, Device, Kind, Tensor};

fn build(config: &ResNetConfig, options: ModelOptions) -> (nn::VarStore, ResNet) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ResNet::new(&vs, config, options).unwrap();
    (vs, model)
}

/// `shared/testdata/torchvision/<arch>.txt`: `name dim0xdim1` lines and `params N`.
fn torchvision_reference(arch: &str) -> (Vec<(String, Vec<i64>)>, u64) {
    let path = format!("{}/../shared/testdata/torchvision/{arch}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut names = Vec::new();
    let mut params = 0;
    for line in text.lines() {
        let (name, dims) = line.split_once(' ').unwrap();
        if name == "params" {
            params = dims.parse().unwrap();
        } else if dims == "-" {
            names.push((name.to_string(), vec![]));
        } else {
            names.push((name.to_string(), dims.split('x').map(|d| d.parse().unwrap()).collect()));
        }
    }
    (names, params)
}

#[test]
fn state_dict_equals_torchvision_and_the_walk() {
    for (arch, config) in [("resnet18", ResNetConfig::resnet18()), ("resnet50", ResNetConfig::resnet50())] {
        let (vs, model) = build(&config, ModelOptions::default());
        let (reference, params) = torchvision_reference(arch);
        let ours: Vec<(String, Vec<i64>)> =
            model.named_tensors().iter().map(|t| (t.name.clone(), t.tensor.size())).collect();
        assert_eq!(ours, reference, "{arch}: names, order and shapes");
        // The VarStore holds exactly these names (no `__N` renames).
        let mut stored: Vec<String> = vs.variables().into_keys().collect();
        stored.sort();
        let mut want: Vec<String> = reference.iter().map(|(n, _)| n.clone()).collect();
        want.sort();
        assert_eq!(stored, want);
        let trainable: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(trainable as u64, params, "{arch}: parameter count");
        assert_eq!(config.num_params(), params);
        let nbt = model.tensor("bn1.num_batches_tracked").unwrap();
        assert_eq!((nbt.kind(), nbt.size()), (Kind::Int64, vec![]));
    }
}

#[test]
fn small_resnets_follow_the_walk() {
    for config in [ResNetConfig::resnet8().with_in_channels(1), ResNetConfig::resnet20()] {
        let (_, model) = build(&config, ModelOptions::default());
        let mut walk = Vec::new();
        config.for_each_param(Form::Training, |p| {
            walk.push((p.name.to_string(), p.shape().iter().map(|&d| i64::from(d)).collect::<Vec<_>>()))
        });
        let ours: Vec<(String, Vec<i64>)> =
            model.named_tensors().iter().map(|t| (t.name.clone(), t.tensor.size())).collect();
        assert_eq!(ours, walk);
        let n: i64 = model.trainable().map(|t| t.tensor.numel() as i64).sum();
        assert_eq!(n as u64, config.num_params());
        let x = Tensor::randn([3, i64::from(config.in_channels), 28, 28], (Kind::Float, Device::Cpu));
        assert_eq!(model.forward_t(&x, false).size(), vec![3, 10]);
    }
}

#[test]
fn init_is_torchvision_like_with_zeroed_residual_gammas() {
    let config = ResNetConfig::resnet18().with_classes(10);
    let (_, model) = build(&config, ModelOptions::default());
    let w = model.tensor("layer3.0.conv1.weight").unwrap(); // 256x128x3x3, fan_out 256*9
    let std = w.std(true).double_value(&[]);
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.02, "kaiming std {std} vs {want}");
    for (name, value) in [("layer1.0.bn2.weight", 0.0), ("layer1.0.bn1.weight", 1.0), ("bn1.weight", 1.0)] {
        let t = model.tensor(name).unwrap();
        assert_eq!((t - value).abs().max().double_value(&[]), 0.0, "{name} is all {value}");
    }
    // The last BN of the projection shortcut is not zeroed, only the main branch's.
    assert_eq!(model.tensor("layer2.0.downsample.1.weight").unwrap().mean(Kind::Float).double_value(&[]), 1.0);
    let bound = 1.0 / 512f64.sqrt();
    assert!(model.tensor("fc.weight").unwrap().abs().max().double_value(&[]) <= bound);

    let (_, plain) = build(&config, ModelOptions { zero_init_residual: false, ..Default::default() });
    assert_eq!(plain.tensor("layer1.0.bn2.weight").unwrap().mean(Kind::Float).double_value(&[]), 1.0);
}

#[test]
fn channels_last_and_bf16_compute_the_same_function() {
    let config = ResNetConfig::resnet8();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let opts = ModelOptions { zero_init_residual: false, ..Default::default() };
    let (_, a) = build(&config, opts);
    let (_, b) = build(&config, ModelOptions { channels_last: true, ..opts });
    let (_, c) = build(&config, ModelOptions { amp: Amp::Bf16, ..opts });
    // Same weights in all three (tests run in parallel and share libtorch's global RNG).
    let weights: std::collections::HashMap<String, Tensor> = a.state_dict().into_iter().collect();
    for m in [&b, &c] {
        m.load_state_dict(&weights, std::path::Path::new("model a"), &[]).unwrap();
    }
    let conv = b.tensor("layer1.0.conv1.weight").unwrap();
    assert!(!conv.is_contiguous(), "channels-last weights have NHWC strides");
    for train in [false, true] {
        let ya = a.forward_t(&x, train);
        let yb = b.forward_t(&x, train);
        let yc = c.forward_t(&x, train);
        assert_eq!(yc.kind(), Kind::Float, "logits come back in fp32");
        let d = (&ya - &yb).abs().max().double_value(&[]);
        assert!(d < 1e-4, "channels-last differs by {d}");
        let d = (&ya - &yc).abs().max().double_value(&[]);
        let scale = ya.abs().max().double_value(&[]).max(1.0);
        assert!(d < 0.1 * scale, "bf16 differs by {d} (scale {scale})");
    }
    // Training mode updates the running statistics and counts batches, as torchvision does.
    assert_eq!(a.tensor("bn1.num_batches_tracked").unwrap().int64_value(&[]), 1);
    assert!(a.tensor("bn1.running_mean").unwrap().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}
