//! The ResNet family as plain data, with named constructors laid out as a table.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Block {
    /// Two 3x3 convolutions (ResNet-18/34, ResNet-8, ResNet-20).
    Basic,
    /// 1x1 -> 3x3 -> 1x1 with 4x expansion (ResNet-50/101/152).
    Bottleneck,
}

/// Where the residual block puts its stride and its activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Variant {
    /// He et al. 2015: stride on the first 1x1 conv of bottlenecks.
    V1,
    /// torchvision / NVIDIA "v1.5": stride on the 3x3 conv of bottlenecks (default).
    V1_5,
    /// Pre-activation (He et al. 2016, ONNX model zoo "v2"): BN-ReLU before each conv,
    /// a final BN-ReLU before pooling, projection shortcuts without BN.
    V2,
}

/// The first layers before the residual stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Stem {
    /// 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool (224 px images).
    ImageNet,
    /// 3x3 stride-1 conv, BN, ReLU, no pool (28-32 px images).
    Small,
}

/// One ResNet. Every field is public plain data; the named constructors below are the presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ResNetConfig {
    pub block: Block,
    pub variant: Variant,
    pub stem: Stem,
    /// Blocks per stage; a trailing 0 means the stage is absent (ResNet-8/20 have three stages).
    pub stages: [u8; 4],
    /// Output channels of stage 1 (before bottleneck expansion); doubles every stage.
    pub base_width: u16,
    /// Output channels of the stem convolution.
    pub stem_width: u16,
    /// Bottleneck inner width per 64 planes (torchvision `width_per_group`: 64, wide ResNet: 128).
    pub width_per_group: u16,
    /// Image channels: 1 (grayscale) or 3 (RGB).
    pub in_channels: u8,
    pub num_classes: u32,
}

/// Bottleneck output expansion.
pub const EXPANSION: u32 = 4;

impl ResNetConfig {
    const fn imagenet(block: Block, stages: [u8; 4]) -> Self {
        Self {
            block,
            variant: Variant::V1_5,
            stem: Stem::ImageNet,
            stages,
            base_width: 64,
            stem_width: 64,
            width_per_group: 64,
            in_channels: 3,
            num_classes: 1000,
        }
    }

    const fn tiny(stages: [u8; 4]) -> Self {
        Self {
            block: Block::Basic,
            variant: Variant::V1_5,
            stem: Stem::Small,
            stages,
            base_width: 16,
            stem_width: 16,
            width_per_group: 64,
            in_channels: 3,
            num_classes: 10,
        }
    }

    //                                      block              stages
    pub const fn resnet18() -> Self { Self::imagenet(Block::Basic, [2, 2, 2, 2]) }
    pub const fn resnet34() -> Self { Self::imagenet(Block::Basic, [3, 4, 6, 3]) }
    pub const fn resnet50() -> Self { Self::imagenet(Block::Bottleneck, [3, 4, 6, 3]) }
    pub const fn resnet101() -> Self { Self::imagenet(Block::Bottleneck, [3, 4, 23, 3]) }
    pub const fn resnet152() -> Self { Self::imagenet(Block::Bottleneck, [3, 8, 36, 3]) }
    /// MLPerf Tiny image classification ResNet-8 (CIFAR-10, 3 stages of one basic block, 16/32/64).
    pub const fn resnet8() -> Self { Self::tiny([1, 1, 1, 0]) }
    /// He et al. 2015 CIFAR ResNet-20 (3 stages of three basic blocks, 16/32/64), with
    /// projection (1x1 conv) shortcuts where the shape changes.
    pub const fn resnet20() -> Self { Self::tiny([3, 3, 3, 0]) }

    /// The preset architecture names accepted by [`ResNetConfig::from_name`].
    pub const NAMES: [&'static str; 7] =
        ["resnet8", "resnet18", "resnet20", "resnet34", "resnet50", "resnet101", "resnet152"];

    /// Look up a preset by name (`resnet18`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "resnet8" => Self::resnet8(),
            "resnet18" => Self::resnet18(),
            "resnet20" => Self::resnet20(),
            "resnet34" => Self::resnet34(),
            "resnet50" => Self::resnet50(),
            "resnet101" => Self::resnet101(),
            "resnet152" => Self::resnet152(),
            _ => return None,
        })
    }

    pub const fn with_classes(mut self, num_classes: u32) -> Self {
        self.num_classes = num_classes;
        self
    }
    pub const fn with_in_channels(mut self, in_channels: u8) -> Self {
        self.in_channels = in_channels;
        self
    }
    pub const fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }
    pub const fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    /// Number of residual stages present.
    pub fn num_stages(&self) -> usize {
        self.stages.iter().take_while(|&&n| n > 0).count()
    }

    /// Output channels of stage `i` (0-based), after expansion.
    pub fn stage_out_channels(&self, i: usize) -> u32 {
        let planes = u32::from(self.base_width) << i;
        match self.block {
            Block::Basic => planes,
            Block::Bottleneck => planes * EXPANSION,
        }
    }

    /// Channels entering the classifier.
    pub fn feature_channels(&self) -> u32 {
        self.stage_out_channels(self.num_stages().saturating_sub(1))
    }

    /// Check that the configuration describes a buildable network (used on untrusted file headers).
    pub fn validate(&self) -> Result<(), Error> {
        let n = self.num_stages();
        let bad = |why| Err(Error::InvalidConfig(why));
        if n == 0 {
            return bad("no residual stage");
        }
        if self.stages[n..].iter().any(|&b| b != 0) {
            return bad("a stage with blocks follows an empty stage");
        }
        if !(self.in_channels == 1 || self.in_channels == 3) {
            return bad("in_channels must be 1 or 3");
        }
        if self.num_classes == 0 || self.num_classes > 1 << 20 {
            return bad("num_classes must be in 1..=1048576");
        }
        if self.base_width == 0 || self.base_width > 1024 || self.stem_width == 0 || self.stem_width > 1024 {
            return bad("widths must be in 1..=1024");
        }
        if self.width_per_group == 0 || self.width_per_group > 1024 {
            return bad("width_per_group must be in 1..=1024");
        }
        Ok(())
    }
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self::resnet18()
    }
}
