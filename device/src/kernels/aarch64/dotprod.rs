//! The int8 convolutions on aarch64 CPUs with FEAT_DotProd (Raspberry Pi 5's Cortex-A76,
//! Jetson Orin's A78AE): integer matrix product and epilogue in one op, in NEON registers.
//!
//! tract's own kernel there (`arm64simd_mmm_i32_8x8_dot`) runs `sdot` too, but leaves its i32
//! accumulators in memory for `Int8Epilogue` to read back, and its patches, matrix product and
//! epilogue are three ops with their own loops (device/README.md, "aarch64 instruction
//! counts"). [`SdotConv`] computes a tile of 8 output channels by 8 output pixels in 16
//! accumulators: per step of 4 along k, one load pair of patch bytes (8 pixels x 4 bytes) and
//! one of weights (8 channels x 4 bytes), then 16 `sdot`s, each a pixel quad by one channel's 4
//! weights (a lane of the weight register). It then finishes the tile where it is, in
//! registers: the per-channel scale, the residual, ReLU and the next layer's quantization -
//! [`Int8Epilogue`]'s work, same f32 operations in the same order - and writes the tile's f32
//! and/or i8 outputs. The i32 accumulators never reach memory.
//!
//! `sdot` multiplies signed by signed bytes: the patches are tract's own values (no offset), the
//! accumulators start at tract's bias and zero-point terms, so the integer sums are exactly
//! tract's and the whole plan stays bit-identical to tract's (`tests/int8_kernels.rs`; the
//! kernel alone against a scalar reference below).
//!
//! Patches: [`FastIm2Col`](crate::ops::im2col::FastIm2Col) in tract's K4 layout 8 lanes wide
//! (`KernelPatches::Sdot`), as a plain i8 tensor; for the 1x1 stride-1 convs tract lowers to
//! `OptMatMulPack -> OptMatMul`, the input itself repacked.
//!
//! [`speed_up`] swaps it in for every such chain of an optimized int8 plan
//! (`crate::kernels::int8_chains`) on CPUs with dotprod (`crate::kernels::aarch64::plug`).
//! `--threads N` splits the output channels over tract's pool.

use crate::kernels::int8_chains::{self, Int8Chain, Swap};
use crate::ops::epilogue::Int8Epilogue;
use crate::ops::im2col::KernelPatches;
use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;
use tract_core::internal::*;

/// Output channels per tile: 8 (two registers of 4 channels x 4 weight bytes per step).
const CHANNELS: usize = 8;
/// Output pixels per tile: the lanes of a patch panel (two registers of 4 pixels x 4 bytes).
const PIXELS: usize = 8;
/// Bytes of patches (or weights) per tile and step of 4 along k.
const STEP: usize = 4 * PIXELS;

/// An int8 convolution's matrix product and epilogue (see the module doc).
#[derive(Clone, PartialEq)]
pub struct SdotConv {
    /// Output channels.
    m: usize,
    /// Output pixels.
    n: usize,
    /// Steps of 4 along k (input channels x kernel taps, rounded up to 4).
    k4: usize,
    /// Per block of 8 channels, per step: 8 channels x 4 weights (zero past `m` and `k`).
    weights: Arc<Vec<i8>>,
    /// Per channel (zero past `m`, to a whole block), the accumulators' start: tract's bias
    /// and zero-point terms.
    offsets: Vec<i32>,
    epilogue: Int8Epilogue,
}

impl Eq for SdotConv {}

impl std::fmt::Debug for SdotConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SdotConv {{ m: {}, n: {}, k: {}, epilogue: {:?} }}",
            self.m,
            self.n,
            4 * self.k4,
            self.epilogue
        )
    }
}

impl Op for SdotConv {
    fn name(&self) -> StaticName {
        "SdotConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let e = &self.epilogue;
        Ok(vec![
            format!("Mult: m:{} k:{} n:{} with [{}]", self.m, 4 * self.k4, self.n, Self::KERNEL),
            format!(
                "epilogue: residual: {}, relu: {}, quantize: {:?}, keep f32: {}",
                e.residual, e.relu, e.quantize, e.keep_f32
            ),
        ])
    }

    op_as_typed_op!();
}

/// Where one eval's tiles read and write: raw pointers, so that threads can each take a
/// range of channel blocks (disjoint rows of the outputs).
#[derive(Clone, Copy)]
struct Buffers {
    patches: *const i8,
    residual: Option<*const f32>,
    f32_out: Option<*mut f32>,
    i8_out: Option<*mut i8>,
    /// The next layer's quantizer: reciprocal scale, zero point.
    quantize: Option<(f32, i32)>,
}

// SAFETY: the pointers outlive the eval that shares them, and each thread writes only the
// rows of its own channel blocks.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

/// One tile's accumulators: per channel, pixels 0-3 and 4-7.
type Tile = [[int32x4_t; 2]; CHANNELS];

impl SdotConv {
    /// The kernel, as `device inspect` and the tests name it.
    pub const KERNEL: &'static str = "aarch64_sdot_i32_8x8 (device::kernels::aarch64::dotprod)";

    /// The conv with weights `w` (`[m][k]`) computing `w . x + offsets` on `n` pixels, then
    /// `epilogue`.
    pub(crate) fn new(w: &[Vec<i8>], offsets: &[i32], n: usize, epilogue: Int8Epilogue) -> Self {
        let (m, k) = (w.len(), w.first().map_or(0, |row| row.len()));
        let k4 = k.div_ceil(4);
        let blocks = m.div_ceil(CHANNELS);
        let mut weights = vec![0i8; blocks * k4 * STEP];
        for (c, row) in w.iter().enumerate() {
            let (block, j) = (c / CHANNELS, c % CHANNELS);
            for (kk, v) in row.iter().enumerate() {
                weights[(block * k4 + kk / 4) * STEP + 4 * j + kk % 4] = *v;
            }
        }
        let mut padded = offsets.to_vec();
        padded.resize(blocks * CHANNELS, 0);
        SdotConv { m, n, k4, weights: Arc::new(weights), offsets: padded, epilogue }
    }

    fn panel_len(&self) -> usize {
        self.k4 * STEP
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PIXELS)
    }

    /// Runs the tiles of channel blocks `blocks`.
    ///
    /// # Safety
    /// The CPU has dotprod; the buffers hold `panels * panel_len` patch bytes and `m * n`
    /// values each.
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn run(&self, buf: Buffers, blocks: Range<usize>) {
        let panel_len = self.panel_len();
        // Each block of weights is read once, the patches once per block.
        for block in blocks {
            let w = self.weights.as_ptr().add(block * panel_len);
            let c0 = block * CHANNELS;
            for panel in 0..self.panels() {
                let acc = dot(w, buf.patches.add(panel * panel_len), self.k4, &self.offsets[c0..]);
                let p0 = panel * PIXELS;
                self.finish(&acc, c0, p0, PIXELS.min(self.n - p0), buf);
            }
        }
    }

    /// The epilogue of one tile: channels `c0..c0 + 8` (those below `m`), output pixels
    /// `p0..p0 + lanes`.
    #[target_feature(enable = "neon,dotprod")]
    #[inline]
    unsafe fn finish(&self, acc: &Tile, c0: usize, p0: usize, lanes: usize, buf: Buffers) {
        let e = &self.epilogue;
        let zero = vdupq_n_f32(0.0);
        for (j, acc) in acc.iter().enumerate().take(self.m.saturating_sub(c0)) {
            let c = c0 + j;
            let at = c * self.n + p0;
            let scale = vdupq_n_f32(e.scale[c]);
            // As Int8Epilogue: acc as f32 * scale (+ residual) (max 0).
            let mut v = [vmulq_f32(vcvtq_f32_s32(acc[0]), scale), vmulq_f32(vcvtq_f32_s32(acc[1]), scale)];
            if let Some(r) = buf.residual {
                let r = load(r.add(at), lanes);
                v = [vaddq_f32(v[0], r[0]), vaddq_f32(v[1], r[1])];
            }
            if e.relu {
                // f32::max: the number where one side is a NaN (fmaxnm).
                v = [vmaxnmq_f32(v[0], zero), vmaxnmq_f32(v[1], zero)];
            }
            if let Some(out) = buf.f32_out {
                store(out.add(at), lanes, v);
            }
            if let (Some(out), Some((scale, zero_point))) = (buf.i8_out, buf.quantize) {
                let q = quantize(v, scale, zero_point);
                if lanes == PIXELS {
                    vst1_s8(out.add(at), q);
                } else {
                    let mut bytes = [0i8; PIXELS];
                    vst1_s8(bytes.as_mut_ptr(), q);
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.add(at), lanes);
                }
            }
        }
    }
}

/// `lanes` (1 to 8) f32 at `p`, in two registers (zeros past `lanes`).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load(p: *const f32, lanes: usize) -> [float32x4_t; 2] {
    if lanes == PIXELS {
        return [vld1q_f32(p), vld1q_f32(p.add(4))];
    }
    let mut v = [0f32; PIXELS];
    std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), lanes);
    [vld1q_f32(v.as_ptr()), vld1q_f32(v.as_ptr().add(4))]
}

/// The first `lanes` (1 to 8) f32 of `v` to `p`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn store(p: *mut f32, lanes: usize, v: [float32x4_t; 2]) {
    if lanes == PIXELS {
        vst1q_f32(p, v[0]);
        vst1q_f32(p.add(4), v[1]);
        return;
    }
    let mut out = [0f32; PIXELS];
    vst1q_f32(out.as_mut_ptr(), v[0]);
    vst1q_f32(out.as_mut_ptr().add(4), v[1]);
    std::ptr::copy_nonoverlapping(out.as_ptr(), p, lanes);
}

/// `crate::ops::quantize::quantize` on 8 lanes: `clamp(round_ties_even(clamp(v * scale, +-1024))
/// + zero_point, -128, 127)`, NaN -> `zero_point`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn quantize(v: [float32x4_t; 2], scale: f32, zero_point: i32) -> int8x8_t {
    let (scale, zp) = (vdupq_n_f32(scale), vdupq_n_s32(zero_point));
    let (lo, hi) = (quantize4(v[0], scale, zp), quantize4(v[1], scale, zp));
    // In -1152..=1151: exact in i16, then saturated to i8.
    vqmovn_s16(vcombine_s16(vqmovn_s32(lo), vqmovn_s32(hi)))
}

/// [`quantize`] on 4 lanes, before the saturation to i8.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn quantize4(v: float32x4_t, scale: float32x4_t, zp: int32x4_t) -> int32x4_t {
    let v = vmulq_f32(v, scale);
    // NaN -> 0: its lanes are not equal to themselves.
    let v = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), vceqq_f32(v, v)));
    let v = vminq_f32(vmaxq_f32(v, vdupq_n_f32(-1024.0)), vdupq_n_f32(1024.0));
    // fcvtns: to nearest, ties to even.
    vaddq_s32(vcvtnq_s32_f32(v), zp)
}

/// One tile's integer sums: 8 channels (`w`: per step, 8 x 4 signed bytes) by 8 pixels (`x`:
/// per step, 8 x 4 signed bytes), over `k4` steps (at least 1), plus `offsets[j]` for channel
/// `j`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn dot(w: *const i8, x: *const i8, k4: usize, offsets: &[i32]) -> Tile {
    let mut a: Tile = std::array::from_fn(|j| [vdupq_n_s32(offsets[j]); 2]);
    // One step: 8 pixels (x0: 0-3, x1: 4-7) and 8 channels (w0: 0-3, w1: 4-7), 16 sdot.
    macro_rules! step {
        () => {
            concat!(
                "ldp {x0:q}, {x1:q}, [{x}], #32\n",
                "ldp {w0:q}, {w1:q}, [{w}], #32\n",
                "sdot {a00:v}.4s, {x0:v}.16b, {w0:v}.4b[0]\n",
                "sdot {a01:v}.4s, {x1:v}.16b, {w0:v}.4b[0]\n",
                "sdot {a10:v}.4s, {x0:v}.16b, {w0:v}.4b[1]\n",
                "sdot {a11:v}.4s, {x1:v}.16b, {w0:v}.4b[1]\n",
                "sdot {a20:v}.4s, {x0:v}.16b, {w0:v}.4b[2]\n",
                "sdot {a21:v}.4s, {x1:v}.16b, {w0:v}.4b[2]\n",
                "sdot {a30:v}.4s, {x0:v}.16b, {w0:v}.4b[3]\n",
                "sdot {a31:v}.4s, {x1:v}.16b, {w0:v}.4b[3]\n",
                "sdot {a40:v}.4s, {x0:v}.16b, {w1:v}.4b[0]\n",
                "sdot {a41:v}.4s, {x1:v}.16b, {w1:v}.4b[0]\n",
                "sdot {a50:v}.4s, {x0:v}.16b, {w1:v}.4b[1]\n",
                "sdot {a51:v}.4s, {x1:v}.16b, {w1:v}.4b[1]\n",
                "sdot {a60:v}.4s, {x0:v}.16b, {w1:v}.4b[2]\n",
                "sdot {a61:v}.4s, {x1:v}.16b, {w1:v}.4b[2]\n",
                "sdot {a70:v}.4s, {x0:v}.16b, {w1:v}.4b[3]\n",
                "sdot {a71:v}.4s, {x1:v}.16b, {w1:v}.4b[3]\n",
            )
        };
    }
    // An odd step first, then two per loop turn.
    asm!(
        "tbz {k}, #0, 3f",
        step!(),
        "3:",
        "lsr {k}, {k}, #1",
        "cbz {k}, 4f",
        "2:",
        step!(),
        step!(),
        "subs {k}, {k}, #1",
        "b.ne 2b",
        "4:",
        x = inout(reg) x => _,
        w = inout(reg) w => _,
        k = inout(reg) k4 => _,
        x0 = out(vreg) _,
        x1 = out(vreg) _,
        w0 = out(vreg_low16) _,
        w1 = out(vreg_low16) _,
        a00 = inout(vreg) a[0][0],
        a01 = inout(vreg) a[0][1],
        a10 = inout(vreg) a[1][0],
        a11 = inout(vreg) a[1][1],
        a20 = inout(vreg) a[2][0],
        a21 = inout(vreg) a[2][1],
        a30 = inout(vreg) a[3][0],
        a31 = inout(vreg) a[3][1],
        a40 = inout(vreg) a[4][0],
        a41 = inout(vreg) a[4][1],
        a50 = inout(vreg) a[5][0],
        a51 = inout(vreg) a[5][1],
        a60 = inout(vreg) a[6][0],
        a61 = inout(vreg) a[6][1],
        a70 = inout(vreg) a[7][0],
        a71 = inout(vreg) a[7][1],
        options(nostack, readonly),
    );
    a
}

impl EvalOp for SdotConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let e = &self.epilogue;
        let patches = &inputs[0];
        let len = self.panels() * self.panel_len();
        ensure!(
            patches.datum_type() == i8::datum_type() && patches.len() == len,
            "SdotConv: patches {:?} {:?}, planned for {len} bytes",
            patches.datum_type(),
            patches.shape(),
        );
        let residual = e
            .residual_input("SdotConv", &inputs)?
            .map(|r| unsafe { r.as_ptr_unchecked::<f32>() });
        let quantize = e.quantizer();
        let (mut f, mut i) = e.uninitialized_outputs()?;
        let buf = Buffers {
            patches: unsafe { patches.as_ptr_unchecked::<i8>() },
            residual,
            f32_out: f.as_mut().map(|t| unsafe { t.as_ptr_mut_unchecked::<f32>() }),
            i8_out: i.as_mut().map(|t| unsafe { t.as_ptr_mut_unchecked::<i8>() }),
            quantize,
        };
        ensure!(crate::cpu::Cpu::get().dotprod, "SdotConv: this CPU has no dotprod");
        // SAFETY: the CPU has dotprod; the sizes are checked above. Each range of channel
        // blocks writes its own rows of the outputs.
        crate::ops::parallel::for_ranges(self.m.div_ceil(CHANNELS), |blocks| unsafe {
            self.run(buf, blocks)
        });
        let outputs: TVec<Tensor> = f.into_iter().chain(i).collect();
        Ok(outputs.into_iter().map(|t| t.into_tvalue()).collect())
    }
}

impl TypedOp for SdotConv {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(self.epilogue.output_facts())
    }
}

/// The [`SdotConv`] for an int8 conv `chain`, on its patches.
fn kernel(chain: Int8Chain) -> Option<Swap> {
    let Int8Chain { w, offsets, n, epilogue, patches, .. } = chain;
    Some(Swap {
        conv: Box::new(SdotConv::new(&w, &offsets, n, epilogue)),
        input: Box::new(patches),
        input_suffix: "im2col",
    })
}

/// Replaces every `FastIm2col -> OptMatMul -> Int8Epilogue` chain of an optimized model (and
/// the 1x1 convs' `OptMatMulPack -> OptMatMul -> Int8Epilogue`) by [`SdotConv`] on patches
/// in its layout; returns how many. Plugged by `crate::kernels::aarch64::plug` where the CPU
/// has dotprod (and a no-op on one without). Run after `crate::ops::epilogue::speed_up`.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    // The op runs `sdot`: never wired in on a CPU without it, whoever calls.
    if !crate::cpu::Cpu::get().dotprod {
        return Ok(0);
    }
    int8_chains::swap_in(model, "sdot", KernelPatches::Sdot, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::quantize::{quantize, FastQuantize};
    use crate::ops::test_util::random_i8 as random;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// `x` (`[k][n]`) in the kernel's patch layout: per panel of 8 pixels, per step of 4
    /// rows, 8 x 4 bytes; zeros past `k` and past `n`.
    fn patches(x: &[Vec<i8>], n: usize) -> Tensor {
        let (k4, panels) = (x.len().div_ceil(4), n.div_ceil(PIXELS));
        let mut bytes = vec![0i8; panels * k4 * STEP];
        for (kk, row) in x.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let (p, lane) = (j / PIXELS, j % PIXELS);
                bytes[(p * k4 + kk / 4) * STEP + 4 * lane + kk % 4] = *v;
            }
        }
        Tensor::from_shape(&[bytes.len()], &bytes).unwrap()
    }

    /// The kernel against a scalar evaluation of the same function (integer sums, then
    /// `Int8Epilogue`'s f32 steps), bit for bit, on sizes that leave partial tiles (channels
    /// and pixels) and odd and even step counts, every epilogue variant, and on two threads.
    #[test]
    fn dotprod_kernel_equals_scalar_reference() {
        if !crate::cpu::Cpu::get().dotprod {
            eprintln!("skipped: this CPU has no dotprod (the plan keeps tract's kernels)");
            return;
        }
        // (m, n, k)
        let sizes = [
            (20, 37, 13),
            (8, 8, 4),
            (64, 49, 576),
            (8, 203, 27),
            (33, 1, 9),
            (3, 5, 147),
            (16, 16, 8),
            (13, 11, 1),
        ];
        for (case, &(m, n, k)) in sizes.iter().enumerate() {
            let mut next = random(case as u64 + 7);
            let w: Vec<Vec<i8>> = (0..m).map(|_| (0..k).map(|_| next()).collect()).collect();
            let mut x: Vec<Vec<i8>> = (0..k).map(|_| (0..n).map(|_| next()).collect()).collect();
            // The extremes: -128 x -128 sums.
            if case == 1 {
                x.iter_mut().for_each(|r| r.fill(-128));
            }
            let offsets: Vec<i32> = (0..m).map(|c| c as i32 * 977 - 9000).collect();
            let scale: Vec<f32> = (0..m).map(|c| 1e-3 * (1.0 + c as f32 / 7.0)).collect();
            let mut residual: Vec<f32> =
                (0..m * n).map(|i| (next() as f32) / 16.0 + i as f32 * 1e-4).collect();
            // NaN and infinities on the way: ReLU and quantization keep f32::max's and
            // quantize's answers.
            residual[0] = f32::NAN;
            if m * n > 2 {
                residual[1] = f32::INFINITY;
                residual[2] = f32::NEG_INFINITY;
            }
            for variant in 0..16 {
                let (with_residual, relu) = (variant & 1 != 0, variant & 2 != 0);
                let (quantized, keep_f32) = (variant & 4 != 0, variant & 8 != 0);
                if keep_f32 && !quantized {
                    continue;
                }
                let q = FastQuantize { scale: 11.5, zero_point: if relu { -128 } else { 3 } };
                let epilogue = Int8Epilogue {
                    scale: scale.clone(),
                    residual: with_residual,
                    relu,
                    quantize: quantized.then(|| q.clone()),
                    keep_f32,
                    shape: tvec![1, m, n],
                };
                let conv = SdotConv::new(&w, &offsets, n, epilogue);
                let mut inputs = tvec![patches(&x, n).into_tvalue()];
                if with_residual {
                    inputs.push(Tensor::from_shape(&[1, m, n], &residual).unwrap().into_tvalue());
                }
                let one = conv.eval(&EvalContext::out_of_plan(), inputs.clone()).unwrap();
                let two = multithread_tract_scope(Executor::multithread(2), || {
                    conv.eval(&EvalContext::out_of_plan(), inputs.clone()).unwrap()
                });
                // (NaN != NaN: compare the bits.)
                let bits = |t: &TVec<TValue>| -> Vec<Vec<u8>> {
                    t.iter().map(|t| t.try_as_plain_ram().unwrap().as_bytes().to_vec()).collect()
                };
                assert_eq!(bits(&one), bits(&two), "case {case} variant {variant}: threads differ");
                // The reference.
                let mut want_f = vec![0f32; m * n];
                let mut want_i = vec![0i8; m * n];
                for c in 0..m {
                    for j in 0..n {
                        let sum: i32 =
                            (0..k).map(|kk| i32::from(w[c][kk]) * i32::from(x[kk][j])).sum();
                        let mut v = (sum + offsets[c]) as f32 * scale[c];
                        if with_residual {
                            v += residual[c * n + j];
                        }
                        if relu {
                            v = v.max(0.0);
                        }
                        want_f[c * n + j] = v;
                        want_i[c * n + j] = quantize(v, q.scale, i32::from(q.zero_point));
                    }
                }
                let mut outputs = one.iter();
                if !quantized || keep_f32 {
                    let got = outputs.next().unwrap().try_as_plain_ram().unwrap();
                    let got = got.as_slice::<f32>().unwrap();
                    for (i, (a, b)) in got.iter().zip(&want_f).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "case {case} variant {variant} f32 {i}: {a} vs {b}"
                        );
                    }
                }
                if quantized {
                    let got = outputs.next().unwrap().try_as_plain_ram().unwrap();
                    let got = got.as_slice::<i8>().unwrap();
                    assert_eq!(got, &want_i[..], "case {case} variant {variant}: i8");
                }
            }
        }
    }
}
