//! Frame -> preprocess -> inference -> softmax + top-k, with the time of each stage. Buffers are
//! allocated once and reused.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use shared::preprocess::{Frame, PixelFormat, Preprocess};

use crate::engine::Engine;
use crate::io::decode::DecodeLimits;

/// Most classes a caller can ask for.
pub const MAX_TOP_K: usize = 20;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
}

impl StageTimes {
    pub fn total(&self) -> Duration {
        self.preprocess + self.inference + self.postprocess
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// Best first: (class, softmax probability).
    pub top: Vec<(u32, f32)>,
    pub times: StageTimes,
}

pub struct Pipeline {
    engine: Engine,
    preprocess: Preprocess,
    scratch: Vec<f32>,
    input: Vec<f32>,
    probs: Vec<f32>,
    top_k: usize,
}

impl Pipeline {
    pub fn new(engine: Engine, top_k: usize) -> Pipeline {
        let info = engine.info();
        let mut preprocess = info.preprocess;
        if preprocess.crop != info.height {
            // An input size override: keep the resize/crop ratio.
            let crop = info.height.min(info.width);
            preprocess.resize = (u64::from(preprocess.resize) * u64::from(crop)
                / u64::from(preprocess.crop.max(1))) as u32;
            preprocess.crop = crop;
        }
        Pipeline {
            input: vec![0.0; preprocess.output_len()],
            probs: vec![0.0; info.num_classes],
            scratch: vec![],
            preprocess,
            engine,
            top_k: top_k.clamp(1, MAX_TOP_K),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// `class #281 (tabby cat)`, as jetson-inference prints a class; `class #3` when the model
    /// has no name for it.
    pub fn class_text(&self, class: u32) -> String {
        let label = self.label(class);
        if label == format!("class {class}") {
            format!("class #{class}")
        } else {
            format!("class #{class} ({label})")
        }
    }

    pub fn label(&self, class: u32) -> &str {
        self.engine
            .info()
            .labels
            .get(class as usize)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// Preprocesses `frame` into the reusable input buffer.
    pub fn preprocess_frame(&mut self, frame: &Frame<'_>) -> Result<()> {
        let need = self.preprocess.scratch_len(frame.width(), frame.height());
        if self.scratch.len() < need {
            self.scratch.resize(need, 0.0);
        }
        self.preprocess
            .run(frame, &mut self.scratch, &mut self.input)
            .map_err(|e| anyhow::anyhow!("preprocessing: {e}"))
    }

    /// Runs the model on the preprocessed input buffer and ranks the classes.
    fn infer_and_rank(&mut self, times: &mut StageTimes) -> Result<Vec<(u32, f32)>> {
        let t = Instant::now();
        let logits = self.engine.run(&self.input)?;
        self.probs.copy_from_slice(logits);
        times.inference = t.elapsed();
        let t = Instant::now();
        shared::softmax_in_place(&mut self.probs);
        let top = shared::top_k::<MAX_TOP_K>(&self.probs);
        let top = top
            .iter()
            .take(self.top_k)
            .map(|p| (p.class, p.score))
            .collect();
        times.postprocess = t.elapsed();
        Ok(top)
    }

    pub fn classify(&mut self, frame: &Frame<'_>) -> Result<Classification> {
        let mut times = StageTimes::default();
        let t = Instant::now();
        self.preprocess_frame(frame)?;
        times.preprocess = t.elapsed();
        let top = self.infer_and_rank(&mut times)?;
        Ok(Classification { top, times })
    }

    /// Classifies an already preprocessed CHW input (as stored in parity files).
    pub fn classify_preprocessed(&mut self, input: &[f32]) -> Result<Classification> {
        anyhow::ensure!(
            input.len() == self.input.len(),
            "input has {} values, expected {}",
            input.len(),
            self.input.len()
        );
        self.input.copy_from_slice(input);
        let mut times = StageTimes::default();
        let top = self.infer_and_rank(&mut times)?;
        Ok(Classification { top, times })
    }
}

/// An RGB8 image decoded from a file (PNG or JPEG).
pub struct Image {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl Image {
    /// Decodes `path` within the default [`DecodeLimits`].
    pub fn open(path: &Path) -> Result<Image> {
        Self::open_with_limits(path, &DecodeLimits::default())
    }

    /// Decodes `path`: an error for a truncated JPEG or an image over `limits`.
    pub fn open_with_limits(path: &Path, limits: &DecodeLimits) -> Result<Image> {
        let img = crate::io::decode::open_image(path, limits)?;
        let (width, height) = img.dimensions();
        Ok(Image {
            data: img.into_raw(),
            width,
            height,
        })
    }

    pub fn frame(&self) -> Result<Frame<'_>> {
        Frame::new(&self.data, self.width, self.height, PixelFormat::Rgb8)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}
