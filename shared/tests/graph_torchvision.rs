//! The graph walk against torchvision: names, shapes and order of every state_dict entry, and
//! the exact parameter counts. References come from `tools/gen_state_dict_names.py`.

use shared::graph::{Form, Node, ParamKind};
use shared::{ResNetConfig, Stem, Variant};

fn walk_lines(config: &ResNetConfig) -> Vec<String> {
    let mut lines = Vec::new();
    config.for_each_param(Form::Training, |p| {
        let shape: Vec<String> = p.shape().iter().map(u32::to_string).collect();
        let shape = if shape.is_empty() { "-".to_string() } else { shape.join("x") };
        lines.push(format!("{} {shape}", p.name));
    });
    lines.push(format!("params {}", config.num_params()));
    lines
}

fn reference(arch: &str) -> Vec<String> {
    let path = format!("{}/testdata/torchvision/{arch}.txt", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).lines().map(str::to_string).collect()
}

#[test]
fn state_dicts_match_torchvision_exactly() {
    let wide = ResNetConfig { width_per_group: 128, ..ResNetConfig::resnet50() };
    for (arch, config) in [
        ("resnet18", ResNetConfig::resnet18()),
        ("resnet34", ResNetConfig::resnet34()),
        ("resnet50", ResNetConfig::resnet50()),
        ("resnet101", ResNetConfig::resnet101()),
        ("resnet152", ResNetConfig::resnet152()),
        ("wide_resnet50_2", wide),
    ] {
        assert_eq!(walk_lines(&config), reference(arch), "{arch}");
    }
}

#[test]
fn parameter_counts() {
    assert_eq!(ResNetConfig::resnet18().num_params(), 11_689_512);
    assert_eq!(ResNetConfig::resnet34().num_params(), 21_797_672);
    assert_eq!(ResNetConfig::resnet50().num_params(), 25_557_032);
    assert_eq!(ResNetConfig::resnet101().num_params(), 44_549_160);
    assert_eq!(ResNetConfig::resnet152().num_params(), 60_192_808);
    // He et al. 2015 report 0.27M for ResNet-20 with parameter-free (option A) shortcuts; our
    // projection shortcuts add two 1x1 convs + BN: 16*32 + 32*64 + 2*(32+64) = 2752.
    assert_eq!(ResNetConfig::resnet20().num_params(), 269_722 + 2_752);
    // MLPerf Tiny ResNet-8: the Keras reference has 78,186 trainable parameters. It gives every
    // conv a bias (336 of them, redundant before BN) and its projection shortcuts no BN; ours are
    // torchvision-style (bias-free convs, BN on the shortcut: 2 * (32 + 64) = 192).
    assert_eq!(ResNetConfig::resnet8().num_params(), 78_186 - 336 + 192);
}

#[test]
fn v1_moves_the_stride_to_the_first_conv() {
    let mut strides = Vec::new();
    for variant in [Variant::V1, Variant::V1_5] {
        let mut s = (0, 0);
        ResNetConfig::resnet50()
            .with_variant(variant)
            .walk::<()>(Form::Training, |n| {
                if let Node::Conv { name, stride, .. } = n {
                    match *name {
                        "layer2.0.conv1" => s.0 = *stride,
                        "layer2.0.conv2" => s.1 = *stride,
                        _ => {}
                    }
                }
                Ok(())
            })
            .unwrap();
        strides.push(s);
    }
    assert_eq!(strides, [(2, 1), (1, 2)]);
}

#[test]
fn small_stem_has_no_pool_and_a_3x3_stride_1_conv() {
    let config = ResNetConfig::resnet18().with_stem(Stem::Small).with_in_channels(1).with_classes(10);
    let mut pools = 0;
    config
        .walk::<()>(Form::Training, |n| {
            match n {
                Node::MaxPool { .. } => pools += 1,
                Node::Conv { name: "conv1", kernel, stride, in_channels, .. } => {
                    assert_eq!((*kernel, *stride, *in_channels), (3, 1, 1))
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(pools, 0);
    // 11,689,512 - 7x7x3x64 conv + 3x3x1x64 conv - fc(512->1000) + fc(512->10)
    assert_eq!(config.num_params(), 11_689_512 - 9408 + 576 - 513_000 + 5130);
}

#[test]
fn folded_form_puts_bias_on_convs_and_keeps_no_batchnorm() {
    for config in [ResNetConfig::resnet50(), ResNetConfig::resnet18().with_variant(Variant::V2)] {
        let (mut bns, mut biasless, mut affines) = (0, 0, 0);
        config
            .walk::<()>(Form::Folded, |n| {
                match n {
                    Node::BatchNorm { .. } => bns += 1,
                    Node::Conv { bias: false, .. } => biasless += 1,
                    Node::Affine { .. } => affines += 1,
                    _ => {}
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(bns, 0);
        if config.variant == Variant::V2 {
            // bn1 of each of the 8 blocks and final_bn follow an add, not a conv; conv2 of each
            // block and the 3 projection shortcuts feed an add directly.
            assert_eq!((affines, biasless), (9, 8 + 3));
        } else {
            assert_eq!((affines, biasless), (0, 0));
        }
    }
}

#[test]
fn v2_is_pre_activation() {
    // Each v2 block: bn1 -> relu -> conv1 -> bn2 -> relu -> conv2 -> add (no relu after add).
    let mut seq = Vec::new();
    ResNetConfig::resnet18()
        .with_variant(Variant::V2)
        .walk::<()>(Form::Training, |n| {
            seq.push(match n {
                Node::Conv { name, .. } | Node::BatchNorm { name, .. } => name.to_string(),
                Node::Relu { .. } => "relu".into(),
                Node::Add { .. } => "add".into(),
                _ => "other".into(),
            });
            Ok(())
        })
        .unwrap();
    let start = seq.iter().position(|s| s == "layer1.0.bn1").unwrap();
    assert_eq!(
        seq[start..start + 8],
        ["layer1.0.bn1", "relu", "layer1.0.conv1", "layer1.0.bn2", "relu", "layer1.0.conv2", "add", "layer1.1.bn1"]
    );
    assert_eq!(seq[seq.len() - 4..], ["final_bn", "relu", "other", "other"]);
}

#[test]
fn values_are_single_assignment_and_inputs_precede_use() {
    let config = ResNetConfig::resnet50();
    let mut defined = vec![false; config.num_values(Form::Training)];
    config
        .walk::<()>(Form::Training, |n| {
            for i in n.inputs() {
                assert!(defined[i.index()], "{n:?} reads an undefined value");
            }
            assert!(!std::mem::replace(&mut defined[n.output().index()], true), "{n:?} redefines its output");
            Ok(())
        })
        .unwrap();
    assert!(defined.iter().all(|&d| d));
}

#[test]
fn weight_decay_and_trainability_follow_the_recipe() {
    let mut decayed = 0;
    ResNetConfig::resnet18().for_each_param(Form::Training, |p| {
        if p.kind.takes_weight_decay() {
            decayed += 1;
            assert!(p.name.ends_with(".weight") && !p.name.contains("bn") && !p.name.contains("downsample.1"));
        }
        if !p.kind.is_trainable() {
            assert!(matches!(p.kind, ParamKind::BnRunningMean | ParamKind::BnRunningVar | ParamKind::BnNumBatchesTracked));
        }
    });
    assert_eq!(decayed, 20 + 1); // 20 convs + fc
}

#[test]
fn validate_rejects_nonsense() {
    assert!(ResNetConfig { stages: [0, 0, 0, 0], ..ResNetConfig::resnet18() }.validate().is_err());
    assert!(ResNetConfig { stages: [1, 0, 1, 0], ..ResNetConfig::resnet18() }.validate().is_err());
    assert!(ResNetConfig::resnet18().with_in_channels(2).validate().is_err());
    assert!(ResNetConfig::resnet18().with_classes(0).validate().is_err());
    for name in ResNetConfig::NAMES {
        ResNetConfig::from_name(name).unwrap().validate().unwrap();
    }
    assert!(ResNetConfig::from_name("vgg16").is_none());
}
