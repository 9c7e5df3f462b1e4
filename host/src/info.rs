//! `host info`: the layer table of the `shared` graph walk, with output shapes, parameter counts
//! and multiply-accumulates, and the total parameter count.

use anyhow::{anyhow, Result};
use clap::builder::PossibleValuesParser;
use shared::{Form, Node, ResNetConfig, Stem};

use crate::args::{int_in, StemArg, MAX_CLASSES, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE};

#[derive(clap::Args, Clone, Debug)]
pub struct InfoArgs {
    /// Architecture.
    #[arg(long, default_value = "resnet50", value_parser = PossibleValuesParser::new(ResNetConfig::NAMES))]
    pub arch: String,
    /// Stem (default: the preset's: imagenet for resnet18..152, small for resnet8/20).
    #[arg(long, value_enum)]
    pub stem: Option<StemArg>,
    /// Input channels.
    #[arg(long, value_parser = int_in::<u8>(1, 4))]
    pub in_channels: Option<u8>,
    /// Classes.
    #[arg(long, value_parser = int_in::<u32>(1, MAX_CLASSES))]
    pub num_classes: Option<u32>,
    /// Input side for the shape column (default: 224 for the imagenet stem, 32 for the small one).
    #[arg(long, value_parser = int_in::<u32>(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE))]
    pub image_size: Option<u32>,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRow {
    /// Layer name (torchvision), empty for parameter-free nodes.
    pub name: String,
    pub op: String,
    /// Output `[C, H, W]` (`[C, 1, 1]` after pooling).
    pub shape: [u32; 3],
    pub params: u64,
    pub macs: u64,
}

fn out_side(side: u32, kernel: u32, stride: u32, padding: u32) -> u32 {
    (side + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// The table for `config` on a `side` x `side` input.
pub fn layer_table(config: &ResNetConfig, side: u32) -> Result<Vec<LayerRow>> {
    config.validate().map_err(|e| anyhow!("{e}"))?;
    let mut shapes = vec![[0u32; 3]; config.num_values(Form::Training)];
    let mut rows = Vec::new();
    let Ok(()) = config.walk::<std::convert::Infallible>(Form::Training, |node| {
        let mut params = 0;
        node.for_each_param(|p| {
            if p.kind.is_trainable() {
                params += p.numel();
            }
        });
        let (op, shape, macs) = match *node {
            Node::Input { channels, .. } => ("input".to_string(), [channels, side, side], 0),
            Node::Conv { input, in_channels, out_channels, kernel, stride, padding, .. } => {
                let [_, h, w] = shapes[input.index()];
                let s = [out_channels, out_side(h, kernel, stride, padding), out_side(w, kernel, stride, padding)];
                let macs = u64::from(s[1]) * u64::from(s[2]) * u64::from(out_channels) * u64::from(in_channels * kernel * kernel);
                (format!("conv {kernel}x{kernel}/{stride} {in_channels}->{out_channels}"), s, macs)
            }
            Node::BatchNorm { input, channels, .. } => (format!("batchnorm {channels}"), shapes[input.index()], 0),
            Node::Affine { input, channels, .. } => (format!("affine {channels}"), shapes[input.index()], 0),
            Node::Relu { input, .. } => ("relu".into(), shapes[input.index()], 0),
            Node::MaxPool { input, kernel, stride, padding, .. } => {
                let [c, h, w] = shapes[input.index()];
                (format!("maxpool {kernel}x{kernel}/{stride}"), [c, out_side(h, kernel, stride, padding), out_side(w, kernel, stride, padding)], 0)
            }
            Node::Add { lhs, .. } => ("add".into(), shapes[lhs.index()], 0),
            Node::GlobalAvgPool { input, .. } => ("global avg pool".into(), [shapes[input.index()][0], 1, 1], 0),
            Node::Linear { in_features, out_features, .. } => {
                (format!("linear {in_features}->{out_features}"), [out_features, 1, 1], u64::from(in_features) * u64::from(out_features))
            }
        };
        shapes[node.output().index()] = shape;
        rows.push(LayerRow { name: node.name().unwrap_or("").to_string(), op, shape, params, macs });
        Ok(())
    });
    Ok(rows)
}

pub fn main(args: InfoArgs) -> Result<()> {
    let mut config = ResNetConfig::from_name(&args.arch).ok_or_else(|| anyhow!("unknown architecture `{}`", args.arch))?;
    if let Some(stem) = args.stem {
        config = config.with_stem(stem.into());
    }
    if let Some(c) = args.in_channels {
        config = config.with_in_channels(c);
    }
    if let Some(n) = args.num_classes {
        config = config.with_classes(n);
    }
    let side = args.image_size.unwrap_or(match config.stem {
        Stem::ImageNet => 224,
        Stem::Small => 32,
    });
    let rows = layer_table(&config, side)?;
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
    println!("{:width$}  {:28}  {:>16}  {:>10}  {:>14}", "layer", "op", "output", "params", "MACs");
    for r in &rows {
        let shape = format!("{}x{}x{}", r.shape[0], r.shape[1], r.shape[2]);
        let params = if r.params > 0 { r.params.to_string() } else { String::new() };
        let macs = if r.macs > 0 { r.macs.to_string() } else { String::new() };
        println!("{:width$}  {:28}  {:>16}  {:>10}  {:>14}", r.name, r.op, shape, params, macs);
    }
    let total_macs: u64 = rows.iter().map(|r| r.macs).sum();
    let mut tensors = 0;
    config.for_each_param(Form::Training, |_| tensors += 1);
    println!(
        "{}: {} parameters ({} state_dict tensors), {:.3} GMACs per {side}x{side} image",
        args.arch,
        config.num_params(),
        tensors,
        total_macs as f64 / 1e9
    );
    Ok(())
}
