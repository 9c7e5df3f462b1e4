//! fp32 large-kernel strided convolutions (ResNet's 7x7/2 stem) computed on the input
//! directly, on NEON (every aarch64 board).
//!
//! tract runs the stem as a lazy im2col + matrix product (147 rows of patches per output
//! pixel, built panel by panel: 21 M of ResNet-50 fp32's instructions per inference on
//! cortex-a72, besides the products). [`DirectConv`] splits the padded input once by row and
//! column phase (`crate::kernels::frame::direct`, as x86's `DirectConv`), so that one kernel
//! tap of 12 consecutive output pixels of a row is 12 contiguous floats, and runs a tile of 8
//! output channels by those 12 pixels in 24 accumulators: per (channel, tap) step three loads
//! of positions, two of weights and 24 `fmla` by element. The bias and the ReLU that follows
//! (fused by `crate::kernels::aarch64::fp32`) are applied in registers. The same products as
//! tract's, summed in another order: the results differ by rounding only (unit test against
//! float64; parity tests).

use crate::kernels::frame::direct::{blocked_weights, Split};
use crate::kernels::frame::float_conv::Epilogue;
use crate::ops::im2col::ConvShape;
use std::arch::aarch64::*;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile.
const R: usize = 8;
/// Output pixels per tile: three registers of 4.
const PIXELS: usize = 12;

/// A float conv of one `[1, C, H, W]` (or `[C, H, W]`) image with a large kernel (see the
/// module doc).
#[derive(Clone, PartialEq)]
pub struct DirectConv {
    split: Split,
    /// Output channels, a multiple of `R`.
    k: usize,
    /// Tensors are `[1, C, H, W]` (else `[C, H, W]`).
    batched: bool,
    /// Per block of `R` output channels, per step (channel, ky, kx): `R` weights.
    u: Arc<Vec<f32>>,
    bias: Vec<f32>,
    epilogue: Epilogue,
    /// Per step (channel, ky, kx): its offset in the split input from a tile's first position,
    /// in bytes; with `rows`, per (channel, ky): the offset of its row of column phase 0.
    steps: Vec<usize>,
    /// The stem's 7-wide kernel at stride 2 along x: its floats per plane, the taps of a row
    /// read from the row's two column phases in turn.
    rows: Option<usize>,
    /// Per tile: its first position in the planes, its first output pixel, its pixels (1-12).
    tiles: Vec<(usize, usize, usize)>,
}

impl Eq for DirectConv {}

impl std::fmt::Debug for DirectConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.split.describe(f, self.k, &self.epilogue)
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.split.info(self.k, Self::KERNEL, &self.epilogue))
    }

    op_as_typed_op!();
}

#[derive(Clone, Copy)]
struct Buffers {
    split: *const f32,
    out: *mut f32,
}

// SAFETY: the pointers outlive the eval that shares them; threads write disjoint outputs.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

/// One step: 12 positions from `$p` (then a position on: `{four}`), the 8 weights from `{w}`,
/// 24 `fmla`.
macro_rules! tap {
    ($p:literal) => {
        concat!(
            "ld1 {{v0.4s, v1.4s, v2.4s}}, [", $p, "], {four}\n",
            "ldp q3, q4, [{w}], #32\n",
            step_8x12!("fmla", ".4s", ".s"),
        )
    };
}

impl DirectConv {
    /// The kernel, as `device inspect` names it.
    pub const KERNEL: &'static str = "direct_f32_8x12_neon (device::kernels::aarch64::direct)";

    /// The conv of geometry `g` with `k` output channels, weights `kernel` (`[k][c][kh][kw]`)
    /// and `bias` (`k` values), on `[1, C, H, W]` tensors if `batched` (else `[C, H, W]`).
    pub(crate) fn new(g: ConvShape, k: usize, batched: bool, kernel: &[f32], bias: &[f32], epilogue: Epilogue) -> Self {
        let taps = g.kernel.0 * g.kernel.1;
        assert!(k.is_multiple_of(R) && kernel.len() == k * g.channels * taps && bias.len() == k);
        let (oh, ow, wq) = (g.out_height, g.out_width, g.plane_width());
        // Output pixel (y, x) reads tap (0, 0) at position (y, x) of phase (0, 0).
        let tiles = (0..oh)
            .flat_map(|y| (0..ow).step_by(PIXELS).map(move |x| (y * wq + x, y * ow + x, PIXELS.min(ow - x))))
            .collect();
        let rows = (g.stride.1 == 2 && g.kernel.1 == 7).then(|| g.plane());
        let split = Split { g };
        // In bytes, as the kernel adds them.
        let steps = match rows {
            // Step (c, ky, 0) of each row.
            Some(_) => split.steps().into_iter().step_by(7).map(|s| 4 * s).collect(),
            None => split.steps().into_iter().map(|s| 4 * s).collect(),
        };
        DirectConv {
            steps,
            rows,
            split,
            k,
            batched,
            u: Arc::new(blocked_weights(kernel, k, R)),
            bias: bias.to_vec(),
            epilogue,
            tiles,
        }
    }

    /// The split input's slack: room for what a last tile reads past its row (up to a tile
    /// and a plane row on).
    fn slack(&self) -> usize {
        let g = &self.split.g;
        PIXELS + g.kernel.1 + g.plane_width()
    }

    /// Runs tiles `tiles` for every block of output channels.
    #[target_feature(enable = "neon")]
    unsafe fn run(&self, buf: Buffers, tiles: Range<usize>) {
        let steps = self.split.g.channels * self.split.g.kernel.0 * self.split.g.kernel.1;
        let n = self.split.g.out_height * self.split.g.out_width;
        let zero = vdupq_n_f32(0.0);
        for &(at, p0, pixels) in &self.tiles[tiles] {
            let x = buf.split.add(at);
            for kb in 0..self.k / R {
                let u = self.u.as_ptr().add(kb * steps * R);
                let mut acc = [[zero; 3]; R];
                match self.rows {
                    // The stem: per (channel, kernel row) 7 taps from the row's two column
                    // phases in turn (even, odd, ..., even), a position further every two.
                    Some(plane) => tile_8x12!(acc;
                        "2:",
                        "ldr {o}, [{s}], #8",
                        "add {e}, {x}, {o}",
                        "add {q}, {e}, {pl}",
                        tap!("{e}"),
                        tap!("{q}"),
                        tap!("{e}"),
                        tap!("{q}"),
                        tap!("{e}"),
                        tap!("{q}"),
                        tap!("{e}"),
                        "subs {n}, {n}, #1",
                        "b.ne 2b",
                        x = in(reg) x,
                        s = inout(reg) self.steps.as_ptr() => _,
                        n = inout(reg) self.steps.len() => _,
                        pl = in(reg) 4 * plane,
                        four = in(reg) 4usize,
                        w = inout(reg) u => _,
                        o = out(reg) _,
                        e = out(reg) _,
                        q = out(reg) _,
                        out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
                    ),
                    _ => tile_8x12!(acc;
                        "2:",
                        "ldr {o}, [{s}], #8",
                        "add {e}, {x}, {o}",
                        tap!("{e}"),
                        "subs {n}, {n}, #1",
                        "b.ne 2b",
                        x = in(reg) x,
                        s = inout(reg) self.steps.as_ptr() => _,
                        n = inout(reg) self.steps.len() => _,
                        four = in(reg) 4usize,
                        w = inout(reg) u => _,
                        o = out(reg) _,
                        e = out(reg) _,
                        out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _,
                    ),
                }
                for (j, acc) in acc.iter().enumerate() {
                    let o = kb * R + j;
                    let bias = vdupq_n_f32(self.bias[o]);
                    let mut v = acc.map(|a| vaddq_f32(a, bias));
                    if self.epilogue.relu {
                        // max(v, 0) is 0 for a NaN v, like f32::max (tract's `Max`).
                        v = v.map(|v| vmaxnmq_f32(v, zero));
                    }
                    let out = buf.out.add(o * n + p0);
                    if pixels == PIXELS {
                        for (p, v) in v.iter().enumerate() {
                            vst1q_f32(out.add(4 * p), *v);
                        }
                    } else {
                        let mut lanes = [0f32; PIXELS];
                        for (p, v) in v.iter().enumerate() {
                            vst1q_f32(lanes.as_mut_ptr().add(4 * p), *v);
                        }
                        std::ptr::copy_nonoverlapping(lanes.as_ptr(), out, pixels);
                    }
                }
            }
        }
    }
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let split = self.split.read(&inputs[0], self.batched, self.slack())?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.split.output_shape(self.batched, self.k))? };
        let buf = Buffers { split: split.as_ptr(), out: unsafe { out.as_ptr_mut_unchecked::<f32>() } };
        // SAFETY: NEON is part of aarch64; eval checked the sizes; each range of tiles writes
        // its own output pixels.
        crate::ops::parallel::for_ranges(self.tiles.len(), |tiles| unsafe { self.run(buf, tiles) });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(self.split.output_shape(self.batched, self.k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The op against a direct float64 convolution (`frame::direct::tests`), under qemu.
    #[test]
    fn equals_float64_convolution() {
        crate::kernels::frame::direct::tests::equals_float64_convolution(DirectConv::new);
    }
}
