//! int8 runs integer kernels, not float in disguise: every matrix product of the optimized int8
//! plan is an `OptMatMul` whose kernel accumulates in i32 on i8 operands, or the device's own
//! `VnniConv` (x86 with AVX-512 VNNI), `MaddConv` (x86 with AVX2 only) or `SdotConv` / `SmullConv`
//! (aarch64), and no float matrix
//! product or float convolution is left. For contrast, tract-onnx on the QDQ ONNX
//! of the same network keeps float matrix products (the upstream issue this crate works around).
#![cfg(feature = "engine")] // the binary and the engine

mod common;

use device::commands::parity::Parity;
use device::engine::import::{import, ImportOptions};
use device::engine::{Engine, EngineOptions};
use shared::graph::Form;
use shared::weights::{Precision, WeightsFile};
use tract_core::internal::*;
use tract_core::ops::matmul::optimized::OptMatMul;

/// (node name, kernel name, accumulator type, operand types) of every OptMatMul and VnniConv.
fn matmuls(model: &TypedModel) -> Vec<(String, String, DatumType, Vec<DatumType>)> {
    model
        .nodes()
        .iter()
        .filter_map(|n| {
            let inputs = n
                .inputs
                .iter()
                .map(|i| model.outlet_fact(*i).unwrap().datum_type)
                .collect();
            #[cfg(target_arch = "x86_64")]
            if n.op_is::<device::kernels::x86_64::vnni::VnniConv>() {
                // u8 x i8 dot products into i32 accumulators, by construction.
                let kernel = device::kernels::x86_64::vnni::VnniConv::KERNEL.to_string();
                return Some((n.name.clone(), kernel, i32::datum_type(), inputs));
            }
            #[cfg(target_arch = "x86_64")]
            if n.op_is::<device::kernels::x86_64::avx2::MaddConv>() {
                // i8 values widened to i16, products added in pairs into i32 accumulators.
                let kernel = device::kernels::x86_64::avx2::MaddConv::KERNEL.to_string();
                return Some((n.name.clone(), kernel, i32::datum_type(), inputs));
            }
            #[cfg(target_arch = "aarch64")]
            if n.op_is::<device::kernels::aarch64::dotprod::SdotConv>() {
                // i8 x i8 dot products into i32 accumulators, by construction.
                let kernel = device::kernels::aarch64::dotprod::SdotConv::KERNEL.to_string();
                return Some((n.name.clone(), kernel, i32::datum_type(), inputs));
            }
            #[cfg(target_arch = "aarch64")]
            if n.op_is::<device::kernels::aarch64::widening::SmullConv>() {
                // i8 x i8 products, pairs in i16, into i32 accumulators, by construction.
                let kernel = device::kernels::aarch64::widening::SmullConv::KERNEL.to_string();
                return Some((n.name.clone(), kernel, i32::datum_type(), inputs));
            }
            let op = n.op_as::<OptMatMul>()?;
            let mmm = &op.mmm[0];
            Some((
                n.name.clone(),
                mmm.name().to_string(),
                mmm.internal_type(),
                inputs,
            ))
        })
        .collect()
}

fn float_convs(model: &TypedModel) -> Vec<String> {
    model
        .nodes()
        .iter()
        .filter(|n| {
            let name = n.op.name();
            (name.contains("Conv") || name.contains("EinSum") || name.contains("MatMul"))
                && name != "VnniConv"
                && name != "MaddConv"
                && name != "SdotConv"
                && name != "SmullConv"
                && n.outputs[0].fact.datum_type.is_float()
                && n.op_as::<OptMatMul>()
                    .is_none_or(|m| m.mmm[0].internal_type().is_float())
        })
        .map(|n| format!("{} ({})", n.name, n.op.name()))
        .collect()
}

fn check(arch: &str) {
    let dir = common::fixtures(arch);
    let model = common::compact(&dir, arch, Form::Folded, Precision::Int8);
    let e = Engine::load(&model, &EngineOptions::default()).unwrap();
    let plan = e.optimized_model();
    let mms = matmuls(plan);
    let layers = &e.info().int8_layers;
    assert!(!layers.is_empty());
    for (name, kernel, acc, _) in &mms {
        eprintln!("{name}: {kernel} acc {acc:?}");
    }
    // Every quantized layer owns an integer matrix product.
    for layer in layers {
        let mine: Vec<_> = mms
            .iter()
            .filter(|m| m.0.starts_with(&format!("{layer}.")))
            .collect();
        assert!(
            !mine.is_empty(),
            "layer {layer}: no OptMatMul in the optimized plan"
        );
        for (name, kernel, acc, _) in mine {
            assert_eq!(
                *acc,
                i32::datum_type(),
                "{name}: kernel {kernel} accumulates in {acc:?}, not i32"
            );
        }
    }
    // And nothing computes a conv or matmul in float.
    assert!(
        mms.iter().all(|m| m.2 == i32::datum_type()),
        "float matmuls left: {mms:?}"
    );
    let float = float_convs(plan);
    assert!(
        float.is_empty(),
        "float convolutions or matmuls left in the int8 plan: {float:?}"
    );
    assert!(
        !plan.nodes().iter().any(|n| n.op.name() == "Conv"),
        "unlowered Conv op left"
    );
    // The device's own glue replaced tract's (device::ops::epilogue, im2col): no tract `Im2col` left.
    // With AVX-512 VNNI, device::kernels::x86_64::vnni took over every conv with an epilogue, 1x1
    // ones included; with AVX2 and no VNNI, device::kernels::x86_64::avx2; with dotprod on aarch64,
    // device::kernels::aarch64::dotprod. They read the padded input of their 3x3 convs directly
    // (VnniQuads, Avx2Quads, NeonQuads).
    let cpu = device::cpu::Cpu::get();
    let (ops, own_kernel) = if cpu.avx512_vnni {
        (["VnniConv", "VnniQuads"], true)
    } else if cfg!(target_arch = "x86_64") && cpu.avx2 {
        // Every conv, the stem and 1x1 ones included, reads its padded input (Avx2Quads).
        (["MaddConv", "Avx2Quads"], true)
    } else if cfg!(target_arch = "aarch64") && cpu.dotprod && !cpu.sve {
        // (With SVE tract runs its SVE kernels: `kernels::aarch64::dotprod::takes_over`.)
        (["SdotConv", "NeonQuads"], true)
    } else if cfg!(target_arch = "aarch64") && cpu.asimd && !cpu.sve {
        // Without dotprod (Pi 4's A72) the 3x3 stride-1 convs only: the rest keep tract's.
        (["SmullConv", "NeonQuads"], false)
    } else {
        (["Int8Epilogue", "FastIm2col"], false)
    };
    if own_kernel {
        let left = common::nodes_of(plan, "Int8Epilogue");
        assert!(left.is_empty(), "convs left to tract's kernels: {left:?}");
    }
    for op in ops {
        assert!(
            !common::nodes_of(plan, op).is_empty(),
            "no {op} in the int8 plan"
        );
    }
    let left = common::nodes_of(plan, "Im2col");
    assert!(left.is_empty(), "tract Im2col left: {left:?}");
    // A conv followed by a fused element-wise chain always gets the one-pass epilogue.
    let consumer = |n: &TypedNode| {
        let s = &n.outputs[0].successors;
        (s.len() == 1).then(|| plan.node(s[0].node))
    };
    for cast in plan.nodes().iter().filter(|n| n.op.name() == "Cast") {
        let mut next = consumer(cast);
        if let Some(r) = next.filter(|r| r.op.name() == "IntoShape") {
            next = consumer(r);
        }
        assert!(
            !next.is_some_and(|c| c.op.name().starts_with("OptBinChain")),
            "{}: i32 -> f32 Cast then {} left, not an Int8Epilogue",
            cast.name,
            next.unwrap().op.name()
        );
    }
}

/// The device's own ops in the int8 plan (`device::{const_fold, im2col, quantize, epilogue,
/// maxpool, vnni}`) change no bit: the engine's logits equal those of tract's plain optimized plan
/// of the same import, on the parity inputs.
fn same_bits_as_tract(arch: &str, samples: usize) {
    let dir = common::fixtures(arch);
    let model = common::compact(&dir, arch, Form::Folded, Precision::Int8);
    let bytes = std::fs::read(&model).unwrap();
    let file = WeightsFile::parse(&bytes).unwrap();
    let imported = import(&file, &ImportOptions { input_size: None }).unwrap();
    let plain = SimplePlan::new(imported.model.into_optimized().unwrap()).unwrap();
    let mut engine = Engine::load(&model, &EngineOptions::default()).unwrap();
    let parity = Parity::read(dir.join(format!("{arch}.parity.safetensors"))).unwrap();
    let mut shape = parity.input_shape;
    shape[0] = 1;
    for i in 0..parity.len().min(samples) {
        let x = Tensor::from_shape(&shape, parity.input(i)).unwrap();
        let want = plain.run(tvec!(x.into_tvalue())).unwrap();
        let want = want[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        let got = engine.run(parity.input(i)).unwrap();
        assert_eq!(want.len(), got.len());
        for (k, (a, b)) in want.iter().zip(got).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{arch} sample {i} logit {k}: tract {a} device {b}"
            );
        }
    }
}

#[test]
fn resnet8_device_ops_change_no_bit() {
    same_bits_as_tract("resnet8", 64);
}

#[test]
fn resnet18_device_ops_change_no_bit() {
    same_bits_as_tract("resnet18", 4);
}

// ResNet-50: bottlenecks, whose 1x1 convs tract lowers to plain matrix products on [C, H, W]
// (no batch axis) - other shapes for the rewrites to recognize, and the only network here whose
// 1x1 stride-1 convs reach the aarch64 kernels' pointwise paths (`SdotConv`'s 12-pixel tiles).
// Under qemu too: 15-30 s per CPU model with those kernels.
#[test]
fn resnet50_int8_plan_holds_only_integer_matmuls() {
    check("resnet50");
}

#[test]
fn resnet50_device_ops_change_no_bit() {
    same_bits_as_tract("resnet50", 1);
}

#[test]
fn resnet8_int8_plan_holds_only_integer_matmuls() {
    check("resnet8");
}

#[test]
fn resnet18_int8_plan_holds_only_integer_matmuls() {
    check("resnet18");
}

#[test]
fn fp32_plan_uses_float_kernels_and_tract_onnx_runs_qdq_in_float() {
    let dir = common::fixtures("resnet8");
    let f32_model = common::compact(&dir, "resnet8", Form::Folded, Precision::F32);
    let e = Engine::load(&f32_model, &EngineOptions::default()).unwrap();
    let mms = matmuls(e.optimized_model());
    assert!(
        !mms.is_empty() && mms.iter().all(|m| m.2 == f32::datum_type()),
        "{mms:?}"
    );
    // The QDQ ONNX through tract-onnx: dequantized weights, float matrix products.
    let e = Engine::load(dir.join("resnet8.int8.onnx"), &EngineOptions::default()).unwrap();
    let mms = matmuls(e.optimized_model());
    eprintln!(
        "tract-onnx on QDQ: {:?}",
        mms.iter().map(|m| (&m.1, m.2)).collect::<Vec<_>>()
    );
    assert!(
        mms.iter().any(|m| m.2.is_float()),
        "tract-onnx now runs QDQ convs in integers: {mms:?}"
    );
}
