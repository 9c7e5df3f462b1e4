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

use crate::kernels::frame::float_conv::{shape, Epilogue};
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
        write!(
            f,
            "DirectConv {{ c: {}, k: {}, kernel: {:?}, stride: {:?}, {:?} }}",
            self.g.channels, self.k, self.g.kernel, self.g.stride, self.epilogue
        )
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.g;
        Ok(vec![
            format!(
                "{}->{} channels, {}x{} -> {}x{}, kernel {:?} stride {:?} pad {:?}, [{}]",
                g.channels,
                self.k,
                g.height,
                g.width,
                g.out_height,
                g.out_width,
                g.kernel,
                g.stride,
                g.pad,
                Self::KERNEL
            ),
            format!("{:?}", self.epilogue),
        ])
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
        let steps = g.channels * taps;
        let mut u = vec![0f32; k * steps];
        for o in 0..k {
            for s in 0..steps {
                u[((o / R) * steps + s) * R + o % R] = kernel[o * steps + s];
            }
        }
        let channel = g.phases() * g.plane();
        let taps = g.tap_offsets();
        let steps = (0..g.channels)
            .flat_map(|c| taps.iter().map(move |t| c * channel + t))
            .collect();
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

    fn input_shape(&self) -> TVec<usize> {
        let g = &self.g;
        shape(self.batched, [g.channels, g.height, g.width])
    }

    fn output_shape(&self) -> TVec<usize> {
        shape(self.batched, [self.k, self.g.out_height, self.g.out_width])
    }

    /// Floats per input channel: one plane per phase.
    fn channel_len(&self) -> usize {
        self.g.phases() * self.g.plane()
    }

    /// The split input: every channel, then room for what the last tile's padding lanes read.
    fn split_len(&self) -> usize {
        self.g.channels * self.channel_len() + NV * LANES + self.g.kernel.1
    }

    /// Writes channel `c` of `x` into `split` (zeros), split by phase.
    fn split(&self, x: &[f32], split: &mut [f32], c: usize) {
        let g = &self.g;
        let (sy, sx) = g.stride;
        let (hp, wp) = g.extent();
        let (top, left) = g.pad;
        let (wq, plane) = (g.plane_width(), g.plane());
        let dst = &mut split[c * self.channel_len()..][..self.channel_len()];
        for y in 0..g.height.min(hp.saturating_sub(top)) {
            let (yy, py) = ((y + top) / sy, (y + top) % sy);
            let row = &x[(c * g.height + y) * g.width..][..g.width.min(wp.saturating_sub(left))];
            // Column phase and position of padded column `xi + left`, kept without a division.
            let (mut xx, mut px) = (left / sx, left % sx);
            for v in row {
                dst[(py * sx + px) * plane + yy * wq + xx] = *v;
                px += 1;
                if px == sx {
                    px = 0;
                    xx += 1;
                }
            }
        }
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
        let x = &inputs[0];
        let shape = self.input_shape();
        ensure!(
            x.datum_type() == f32::datum_type() && x.shape() == &shape[..],
            "DirectConv: input {:?} {:?}, planned for {shape:?} f32",
            x.datum_type(),
            x.shape(),
        );
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut split = vec![0f32; self.split_len()];
        for c in 0..self.g.channels {
            self.split(x, &mut split, c);
        }
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.output_shape())? };
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
        Ok(tvec!(f32::fact(self.output_shape())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::random_f32 as random;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// The op against a direct float64 convolution: the ResNet stem and smaller odd shapes,
    /// strides 1 to 3, with and without ReLU, on one and two threads (same bits).
    #[test]
    fn equals_float64_convolution() {
        if !crate::cpu::Cpu::get().avx512f {
            eprintln!("skipped: this CPU has no AVX-512 (the plan keeps tract's convs)");
            return;
        }
        // (c, k, h, w, kernel, stride, pad)
        let cases = [
            (3, 64, 224, 224, 7, 2, 3),
            (3, 8, 31, 17, 7, 2, 3),
            (2, 16, 9, 40, 5, 1, 2),
            (1, 8, 12, 11, 5, 3, 0),
        ];
        for (case, &(c, k, h, w, ks, s, p)) in cases.iter().enumerate() {
            let mut next = random(case as u64 + 5);
            let (out_h, out_w) = ((h + 2 * p - ks) / s + 1, (w + 2 * p - ks) / s + 1);
            let kernel: Vec<f32> = (0..k * c * ks * ks).map(|_| next()).collect();
            let bias: Vec<f32> = (0..k).map(|_| next()).collect();
            let x: Vec<f32> = (0..c * h * w).map(|_| next()).collect();
            let relu = case % 2 == 0;
            let g = ConvShape {
                channels: c,
                height: h,
                width: w,
                kernel: (ks, ks),
                stride: (s, s),
                pad: (p, p),
                out_height: out_h,
                out_width: out_w,
            };
            let epilogue = Epilogue {
                relu,
                residual: false,
            };
            let conv = DirectConv::new(g, k, true, &kernel, &bias, epilogue);
            let input = tvec![Tensor::from_shape(&[1, c, h, w], &x).unwrap().into_tvalue()];
            let ctx = EvalContext::out_of_plan();
            let one = conv.eval(&ctx, input.clone()).unwrap();
            let two = multithread_tract_scope(Executor::multithread(2), || {
                conv.eval(&ctx, input.clone()).unwrap()
            });
            assert_eq!(one, two, "case {case}: threads differ");
            let got = one[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap();
            for o in 0..k {
                for y in 0..out_h {
                    for xo in 0..out_w {
                        let mut sum = f64::from(bias[o]);
                        let mut scale = sum.abs();
                        for i in 0..c {
                            for ky in 0..ks {
                                for kx in 0..ks {
                                    let (iy, ix) = (y * s + ky, xo * s + kx);
                                    if iy < p || ix < p || iy - p >= h || ix - p >= w {
                                        continue;
                                    }
                                    let v = f64::from(x[(i * h + iy - p) * w + ix - p])
                                        * f64::from(kernel[((o * c + i) * ks + ky) * ks + kx]);
                                    sum += v;
                                    scale += v.abs();
                                }
                            }
                        }
                        if relu {
                            sum = sum.max(0.0);
                        }
                        let g = f64::from(got[(o * out_h + y) * out_w + xo]);
                        assert!(
                            (g - sum).abs() <= 1e-6 * scale.max(1e-3),
                            "case {case} channel {o} at ({y}, {xo}): {g} vs {sum}"
                        );
                    }
                }
            }
        }
    }
}
