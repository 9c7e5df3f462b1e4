//! fp32 large-kernel strided convolutions (ResNet's 7x7/2 stem) computed on the input
//! directly, on x86 CPUs with AVX-512 F.
//!
//! tract runs the stem as im2col + matrix product: 147 rows of patches per output pixel
//! (3 channels x 7 x 7), then a separate ReLU pass (device/README.md, "Why each op exists"). [`DirectConv`] splits the padded input once by row and column phase (`x %
//! stride`, as `crate::ops::im2col` and `crate::kernels::x86_64::vnni` do), so that one kernel tap of 16 neighbouring
//! output pixels is 16 contiguous floats, and runs a tile of 8 output channels (broadcast
//! weights) by up to 48 positions of a plane row (three registers), over every (channel, tap)
//! step. The positions that fall in the padding columns are computed and dropped; the rest
//! are compressed to the output's order with the bias (and the ReLU that follows, fused by
//! `crate::kernels::x86_64::fp32`) applied in registers. The same products as tract's, summed in another
//! order: the results differ by rounding only (unit test against float64; parity tests).

use crate::kernels::frame::direct::{blocked_weights, Split};
use crate::kernels::frame::float_conv::Epilogue;
use crate::kernels::x86_64::avx512::{lane_mask, LANES};
use crate::ops::im2col::ConvShape;
use std::arch::x86_64::*;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile.
const R: usize = 8;
/// Registers of positions per tile, at most.
const NV: usize = 3;

/// A float conv of one `[1, C, H, W]` (or `[C, H, W]`) image with a large kernel (see the
/// module doc).
#[derive(Clone, PartialEq)]
pub struct DirectConv {
    /// Input channels, sizes, kernel, stride, padding, output sizes; the split input's layout.
    g: ConvShape,
    /// Output channels, a multiple of `R`.
    k: usize,
    /// Tensors are `[1, C, H, W]` (else `[C, H, W]`).
    batched: bool,
    /// Per block of `R` output channels, per step (channel, ky, kx): `R` weights.
    u: Arc<Vec<f32>>,
    bias: Vec<f32>,
    epilogue: Epilogue,
    /// Per step: its offset in the split input from a tile's first position.
    steps: Vec<usize>,
    /// Per vector of 16 positions: `ConvShape::output_lanes`.
    vectors: Vec<(__mmask16, usize)>,
}

impl Eq for DirectConv {}

impl std::fmt::Debug for DirectConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.split().describe(f, self.k, &self.epilogue)
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(self.split().info(self.k, Self::KERNEL, &self.epilogue))
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

impl DirectConv {
    /// The kernel, as `device inspect` names it.
    pub const KERNEL: &'static str = "direct_f32_8x48_avx512 (device::kernels::x86_64::direct)";

    /// The conv of geometry `g` with `k` output channels, weights `kernel` (`[k][c][kh][kw]`)
    /// and `bias` (`k` values), on `[1, C, H, W]` tensors if `batched` (else `[C, H, W]`).
    pub(crate) fn new(
        g: ConvShape,
        k: usize,
        batched: bool,
        kernel: &[f32],
        bias: &[f32],
        epilogue: Epilogue,
    ) -> Self {
        let taps = g.kernel.0 * g.kernel.1;
        assert!(k.is_multiple_of(R) && kernel.len() == k * g.channels * taps && bias.len() == k);
        let u = blocked_weights(kernel, k, R, |v| v);
        let steps = Split { g: g.clone() }.steps();
        DirectConv {
            vectors: g.output_lanes(crate::kernels::x86_64::avx512::LANES),
            steps,
            g,
            k,
            batched,
            u: Arc::new(u),
            bias: bias.to_vec(),
            epilogue,
        }
    }

    /// The split input's layout.
    fn split(&self) -> Split {
        Split { g: self.g.clone() }
    }

    /// Runs the tiles of vectors `first * NV..` for the groups `groups` (of `NV` vectors).
    #[target_feature(enable = "avx512f")]
    unsafe fn run(&self, buf: Buffers, groups: Range<usize>) {
        let vectors = self.vectors.len();
        let steps = self.steps.len();
        for g in groups {
            let v0 = g * NV;
            let nv = NV.min(vectors - v0);
            for kb in 0..self.k / R {
                let u = self.u.as_ptr().add(kb * steps * R);
                let x = buf.split.add(v0 * LANES);
                match nv {
                    3 => self.tile::<3>(u, x, kb, v0, buf),
                    2 => self.tile::<2>(u, x, kb, v0, buf),
                    _ => self.tile::<1>(u, x, kb, v0, buf),
                }
            }
        }
    }

    /// One tile: `R` output channels (block `kb`) by vectors `v0..v0 + N`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const N: usize>(
        &self,
        u: *const f32,
        x: *const f32,
        kb: usize,
        v0: usize,
        buf: Buffers,
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        for (s, &offset) in self.steps.iter().enumerate() {
            let src = x.add(offset);
            let mut xs = [_mm512_setzero_ps(); N];
            for (p, xs) in xs.iter_mut().enumerate() {
                *xs = _mm512_loadu_ps(src.add(p * LANES));
            }
            let w = u.add(s * R);
            for (j, acc) in acc.iter_mut().enumerate() {
                let wj = _mm512_set1_ps(*w.add(j));
                for (a, xs) in acc.iter_mut().zip(&xs) {
                    *a = _mm512_fmadd_ps(*xs, wj, *a);
                }
            }
        }
        let n = self.g.out_height * self.g.out_width;
        let zero = _mm512_setzero_ps();
        for (j, acc) in acc.iter().enumerate() {
            let o = kb * R + j;
            let bias = _mm512_set1_ps(self.bias[o]);
            for (p, a) in acc.iter().enumerate() {
                let (mask, first) = self.vectors[v0 + p];
                if mask == 0 {
                    continue;
                }
                let mut v = _mm512_maskz_compress_ps(mask, _mm512_add_ps(*a, bias));
                if self.epilogue.relu {
                    // max(v, 0) is 0 for a NaN v, like f32::max (tract's `Max`).
                    v = _mm512_max_ps(v, zero);
                }
                let lanes = mask.count_ones() as usize;
                _mm512_mask_storeu_ps(buf.out.add(o * n + first), lane_mask(lanes), v);
            }
        }
    }
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // The slack: what the last tile's padding lanes read.
        let split = self.split().read::<f32>(&inputs[0], self.batched, NV * LANES + self.g.kernel.1)?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.split().output_shape(self.batched, self.k))? };
        let buf = Buffers {
            split: split.as_ptr(),
            out: unsafe { out.as_ptr_mut_unchecked::<f32>() },
        };
        // SAFETY: `crate::kernels::x86_64::fp32::prepare` checked the CPU, eval the sizes; each group of
        // vectors writes its own output positions.
        crate::ops::parallel::for_ranges(self.vectors.len().div_ceil(NV), |groups| unsafe {
            self.run(buf, groups)
        });
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(self.split().output_shape(self.batched, self.k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The op against a direct float64 convolution (`frame::direct::tests`).
    #[test]
    fn equals_float64_convolution() {
        if !crate::cpu::Cpu::get().avx512f {
            eprintln!("skipped: this CPU has no AVX-512 (the plan keeps tract's convs)");
            return;
        }
        crate::kernels::frame::direct::tests::equals_float64_convolution::<f32, _>(DirectConv::new, 1e-6);
    }
}
