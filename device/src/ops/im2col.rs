//! A faster im2col for tract's integer convolutions.
//!
//! tract lowers an int8 convolution to `Im2col` (input patches packed for the matmul kernel) ->
//! its integer matrix product (`*_mmm_i32_*`, the kernels the int8 tests require). Its `Im2col`
//! writes the packed matrix one byte at a time through a panel writer, because each output row
//! (56 pixels in ResNet's first stage) straddles the kernel's 8-wide panels. Measured on
//! ResNet-18 int8 (x86, AVX-512 VNNI, one thread): 33% of the inference in
//! `Patcher::padded_valid_x_loop`, against 27% in the matrix product itself.
//!
//! [`FastIm2Col`] produces the same packed bytes in bulk instead: it writes the input once with
//! the zero-point padding around it and each row split by column phase (`x % stride`), so that
//! every row of the unpacked matrix (input channel, kernel y, kernel x) is a run of contiguous
//! copies at any stride; blocks of 16 such rows are then scattered into the panels (plain
//! copies for the K-outer layout, a 4-row byte interleave for the K4 layout of the dot-product
//! kernels). [`speed_up`] swaps it in for every `Im2col` of the optimized plan it can handle
//! (i8 activations, NCHW with one image or CHW, one group, no dilation, tract's `PackedFormat`
//! or `PackedI8K4`); anything else keeps tract's op. Results are bit-identical (tests below
//! compare both on odd geometries; `tests/int8_kernels.rs` compares whole networks).

use tract_core::internal::*;
use tract_core::ops::cnn::conv::Im2Col;
use tract_core::ops::cnn::PoolSpec;
use tract_linalg::mmm::{EagerPackedInput, MMMInputFormat, PackedExoticFact, PackedMatrixStorage};
use tract_linalg::pack::{PackedFormat, PackedI8K4};

/// The two activation layouts tract's integer kernels read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Packing {
    /// `PackedFormat`: per panel, row `kk` holds the `r` lanes at `kk * r`.
    KOuter(PackedFormat),
    /// `PackedI8K4` (dot-product kernels: AVX-512 VNNI, aarch64 SDOT): per panel, lane `m` of
    /// row `kk` is at `(kk / 4) * 4r + 4m + kk % 4`; rows padded to a multiple of 4 with zeros.
    K4(PackedI8K4),
    /// The K4 layout of one of the device's own int8 kernels, a plain tensor rather than one of
    /// tract's packed values.
    Kernel(KernelPatches),
}

/// The patch layouts of the device's own int8 conv kernels (`crate::kernels`): tract's K4
/// layout (lane `m` of row `kk` of a panel at `(kk / 4) * 4r + 4m + kk % 4`, rows padded to a
/// multiple of 4 with zeros), as a plain tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KernelPatches {
    /// 16 lanes wide, as unsigned bytes `x ^ 0x80` (= `x + 128`), a u8 tensor:
    /// `crate::kernels::x86_64::vnni` (`vpdpbusd` multiplies unsigned by signed bytes).
    Vnni,
    /// 8 lanes wide, signed, an i8 tensor: `crate::kernels::aarch64::dotprod` (`sdot`).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Sdot,
}

impl KernelPatches {
    /// Lanes (output pixels) per panel.
    pub(crate) fn lanes(self) -> usize {
        match self {
            KernelPatches::Vnni => 16,
            KernelPatches::Sdot => 8,
        }
    }

    fn datum_type(self) -> DatumType {
        match self {
            KernelPatches::Vnni => u8::datum_type(),
            KernelPatches::Sdot => i8::datum_type(),
        }
    }

    /// For the kernels' tests: `x` (`[k][n]`) in this layout, zeros past `k` and past `n`.
    #[cfg(test)]
    pub(crate) fn pack(self, x: &[Vec<i8>], n: usize) -> Tensor {
        let (k4, r) = (x.len().div_ceil(4), self.lanes());
        let mut bytes = vec![0i8; n.div_ceil(r) * k4 * 4 * r];
        for (kk, row) in x.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let v = if self == KernelPatches::Vnni { v ^ i8::MIN } else { *v };
                bytes[(j / r * k4 + kk / 4) * 4 * r + 4 * (j % r) + kk % 4] = v;
            }
        }
        match self {
            KernelPatches::Vnni => {
                let bytes: Vec<u8> = bytes.iter().map(|v| *v as u8).collect();
                Tensor::from_shape(&[bytes.len()], &bytes).unwrap()
            }
            KernelPatches::Sdot => Tensor::from_shape(&[bytes.len()], &bytes).unwrap(),
        }
    }
}

impl Packing {
    fn r(&self) -> usize {
        match self {
            Packing::KOuter(f) => f.r,
            Packing::K4(f) => f.r,
            Packing::Kernel(p) => p.lanes(),
        }
    }
    fn panel_len(&self, k: usize) -> usize {
        match self {
            Packing::KOuter(f) => f.single_panel_len(k),
            Packing::K4(f) => f.single_panel_len(k),
            Packing::Kernel(p) => k.next_multiple_of(4) * p.lanes(),
        }
    }
    fn alignment(&self) -> usize {
        match self {
            Packing::KOuter(f) => f.alignment(),
            Packing::K4(f) => f.alignment(),
            Packing::Kernel(_) => 64,
        }
    }
    /// tract's format, for the packings tract's kernels read.
    fn format(&self) -> Option<Box<dyn MMMInputFormat>> {
        match self {
            Packing::KOuter(f) => Some(Box::new(f.clone())),
            Packing::K4(f) => Some(Box::new(f.clone())),
            Packing::Kernel(_) => None,
        }
    }
}

/// Geometry of one convolution's im2col, resolved for the plan's concrete input shape: the
/// convolution's [`ConvShape`] and the patch matrix tract's kernel reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Geometry {
    conv: ConvShape,
    /// Rows of the packed matrix: channels x kernel height x kernel width.
    k: usize,
    /// Columns: output pixels.
    n: usize,
    packing: Packing,
}

/// The geometry of a one-group, undilated convolution over a `channels x height x width`
/// input: kernel `(kh, kw)`, stride, padding before `(top, left)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ConvShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub out_height: usize,
    pub out_width: usize,
}

impl ConvShape {
    /// The shape of tract's 2-D window `spec` (a `Conv`'s or `Im2col`'s pool spec) over a
    /// `channels x height x width` input.
    pub fn of_window(spec: &PoolSpec, channels: usize, height: usize, width: usize) -> ConvShape {
        let padding = spec.computed_padding(&[height, width]);
        let strides = spec.strides();
        ConvShape {
            channels,
            height,
            width,
            kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
            stride: (strides[0], strides[1]),
            pad: (padding[0].pad_before, padding[1].pad_before),
            out_height: padding[0].convoluted,
            out_width: padding[1].convoluted,
        }
    }
}

/// The input split by row and column phase (`y % stride_y`, `x % stride_x`) that
/// `crate::kernels::x86_64::vnni` and `crate::kernels::x86_64::direct` read instead of patches: per channel (or channel quad),
/// per phase, a plane of positions; padded position `(Y, X)` is at `(Y / sy) * wq + X / sx`
/// of phase `(Y % sy, X % sx)`. Every kernel tap of consecutive output positions
/// `q = y * wq + x` is then a run of consecutive positions; those with `x >= out_width` fall
/// in the padding, are computed and dropped.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl ConvShape {
    /// Phases: `stride_y x stride_x` planes per channel.
    pub fn phases(&self) -> usize {
        self.stride.0 * self.stride.1
    }

    /// The padded extent the taps reach: `(height, width)`.
    pub fn extent(&self) -> (usize, usize) {
        (
            (self.out_height - 1) * self.stride.0 + self.kernel.0,
            (self.out_width - 1) * self.stride.1 + self.kernel.1,
        )
    }

    /// Positions per plane row (`wq`).
    pub fn plane_width(&self) -> usize {
        self.extent().1.div_ceil(self.stride.1)
    }

    /// Positions per plane.
    pub fn plane(&self) -> usize {
        self.extent().0.div_ceil(self.stride.0) * self.plane_width()
    }

    /// Per kernel tap (`ky`, then `kx`): its offset from an output position, in positions of
    /// one channel's planes.
    pub fn tap_offsets(&self) -> Vec<usize> {
        let ((kh, kw), (sy, sx)) = (self.kernel, self.stride);
        let (wq, plane) = (self.plane_width(), self.plane());
        (0..kh)
            .flat_map(|ky| {
                (0..kw).map(move |kx| ((ky % sy) * sx + kx % sx) * plane + (ky / sy) * wq + kx / sx)
            })
            .collect()
    }

    /// Per vector of `lanes` (at most 16) consecutive output positions: the mask of its lanes
    /// that are outputs (`x < out_width`, rows inside) and the output index (`y * out_width +
    /// x`) of the first; the outputs of the kept lanes are consecutive.
    pub fn output_lanes(&self, lanes: usize) -> Vec<(u16, usize)> {
        assert!(lanes <= 16, "output_lanes: {lanes} lanes in a 16-bit mask");
        self.output_lanes_32(lanes).into_iter().map(|(mask, first)| (mask as u16, first)).collect()
    }

    /// [`ConvShape::output_lanes`] for vectors of up to 32 lanes.
    pub fn output_lanes_32(&self, lanes: usize) -> Vec<(u32, usize)> {
        assert!(lanes <= 32, "output_lanes: {lanes} lanes in a 32-bit mask");
        let (oh, ow, wq) = (self.out_height, self.out_width, self.plane_width());
        (0..(oh * wq).div_ceil(lanes))
            .map(|v| {
                let mut mask = 0u32;
                let mut first = None;
                for lane in 0..lanes {
                    let q = v * lanes + lane;
                    if q < oh * wq && q % wq < ow {
                        mask |= 1 << lane;
                        first.get_or_insert((q / wq) * ow + q % wq);
                    }
                }
                (mask, first.unwrap_or(0))
            })
            .collect()
    }
}

/// `Im2col` for i8 NCHW inputs, writing tract's packed layout panel by panel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FastIm2Col {
    geometry: Geometry,
}

impl Op for FastIm2Col {
    fn name(&self) -> StaticName {
        "FastIm2col".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{}x{} kernel {:?} stride {:?} pad {:?} -> k={} n={} r={}",
            g.conv.channels,
            g.conv.height,
            g.conv.width,
            g.conv.kernel,
            g.conv.stride,
            g.conv.pad,
            g.k,
            g.n,
            g.packing.r()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FastIm2Col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geometry;
        let x = &inputs[0];
        ensure!(
            x.len() == g.conv.channels * g.conv.height * g.conv.width
                && x.shape().ends_with(&[g.conv.channels, g.conv.height, g.conv.width]),
            "FastIm2col: input shape {:?}, planned for [1, {}, {}, {}]",
            x.shape(),
            g.conv.channels,
            g.conv.height,
            g.conv.width
        );
        let pad_value = match inputs.get(1) {
            Some(t) => t.cast_to_scalar::<i8>()?,
            None => 0,
        };
        let x = unsafe { x.as_slice_unchecked::<i8>() };
        let (r, panel_len) = (g.packing.r(), g.packing.panel_len(g.k));
        let panels = g.n.div_ceil(r);
        let dt = match g.packing {
            Packing::Kernel(p) => p.datum_type(),
            _ => i8::datum_type(),
        };
        let mut data = unsafe {
            Tensor::uninitialized_aligned_dt(dt, &[panels * panel_len], g.packing.alignment())?
        };
        {
            // SAFETY: i8 and u8 have the same size and alignment; the bytes are written as i8.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(data.as_ptr_mut_unchecked::<i8>(), data.len())
            };
            // The lanes past `n` in the last panel are multiplied by the kernel and discarded:
            // they must be initialized (tract zeroes them too). K4's rows past `k` are written
            // as zeros by `fill`.
            if g.n % r != 0 {
                buf[(panels - 1) * panel_len..].fill(0);
            }
            fill(g, x, pad_value, buf, r, panel_len);
        }
        let Some(format) = g.packing.format() else {
            return Ok(tvec!(data.into_tvalue()));
        };
        let packed = EagerPackedInput {
            fact: PackedExoticFact {
                format,
                k: g.k,
                mn: g.n.to_dim(),
            },
            packed: data.into_blob()?.into(),
            panel_bytes: panel_len,
            mn: g.n,
        };
        let storage = PackedMatrixStorage::new_batched(&[1, 1], tvec!(Box::new(packed) as _));
        Ok(tvec!(storage.into_tensor(i8::datum_type()).into_tvalue()))
    }
}

impl TypedOp for FastIm2Col {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = &self.geometry;
        let Some(format) = g.packing.format() else {
            let Packing::Kernel(p) = g.packing else {
                bail!("FastIm2col: {:?} has no tract format", g.packing)
            };
            let len = g.n.div_ceil(p.lanes()) * g.packing.panel_len(g.k);
            return Ok(tvec!(p.datum_type().fact([len])));
        };
        let fact = PackedExoticFact {
            format,
            k: g.k,
            mn: g.n.to_dim(),
        };
        Ok(tvec!(inputs[0]
            .datum_type
            .fact([1usize, 1])
            .with_exotic_fact(fact)))
    }
}

/// The input with the padding written around it, so that every tap of every output pixel is
/// inside, and each row split by column phase (`x % stride_x`): tap `kx` of output column `xo`
/// is column `xo + kx / stride_x` of phase `kx % stride_x`, so every row of the unpacked matrix
/// is a run of contiguous copies, at any stride. Per channel: phases x rows x `width` columns.
struct Padded {
    data: Vec<i8>,
    height: usize,
    /// Columns per phase.
    width: usize,
    phases: usize,
}

impl Padded {
    fn new(g: &Geometry, x: &[i8], pad_value: i8) -> Padded {
        let (kh, kw) = g.conv.kernel;
        let (sh, sw) = g.conv.stride;
        // The extent the taps cover.
        let height = (g.conv.out_height - 1) * sh + kh;
        let full_width = (g.conv.out_width - 1) * sw + kw;
        let width = full_width.div_ceil(sw);
        let mut data = vec![pad_value; g.conv.channels * sw * height * width];
        // Input rows/columns that land inside the extent.
        let (top, left) = g.conv.pad;
        let rows = g.conv.height.min(height.saturating_sub(top));
        let cols = g.conv.width.min(full_width.saturating_sub(left));
        for (dst, src) in data
            .chunks_exact_mut(sw * height * width)
            .zip(x.chunks_exact(g.conv.height * g.conv.width))
        {
            for y in 0..rows {
                let line = &src[y * g.conv.width..][..cols];
                if sw == 1 {
                    let d = (top + y) * width + left;
                    dst[d..d + cols].copy_from_slice(line);
                    continue;
                }
                // Stride 2: input column i goes to position (i + left) / 2 of phase
                // (i + left) % 2; 32 columns at a time split into their even and odd ones.
                let mut done = 0;
                if sw == 2 {
                    let (even, odd) = (left % 2, (left + 1) % 2);
                    while done < cols {
                        // (The last, partial chunk through a copy.)
                        let n = 32.min(cols - done);
                        let mut chunk = [0i8; 32];
                        copy_run(&mut chunk[..n], &line[done..]);
                        let (e, o) = (
                            (even * height + top + y) * width + (done + left) / 2,
                            (odd * height + top + y) * width + (done + left + 1) / 2,
                        );
                        let mut halves = ([0i8; 16], [0i8; 16]);
                        deinterleave32(&chunk, &mut halves.0, &mut halves.1);
                        copy_run(&mut dst[e..e + n.div_ceil(2)], &halves.0);
                        copy_run(&mut dst[o..o + n / 2], &halves.1);
                        done += n;
                    }
                }
                for phase in 0..sw {
                    // The first input column of this phase (from `done` on), and where it goes.
                    let first = done + (phase + sw - (done + left) % sw) % sw;
                    if first >= cols {
                        continue;
                    }
                    let row = &mut dst[(phase * height + top + y) * width..][..width];
                    let row = &mut row[(left + first) / sw..];
                    for (d, v) in row.iter_mut().zip(line[first..].iter().step_by(sw)) {
                        *d = *v;
                    }
                }
            }
        }
        if g.packing == Packing::Kernel(KernelPatches::Vnni) {
            for v in &mut data {
                *v ^= i8::MIN; // x + 128 as u8
            }
        }
        Padded {
            data,
            height,
            width,
            phases: sw,
        }
    }

    /// Row `y` of channel `c`, phase `phase`.
    fn row(&self, c: usize, phase: usize, y: usize) -> &[i8] {
        let at = ((c * self.phases + phase) * self.height + y) * self.width;
        &self.data[at..at + self.width]
    }
}

/// `even[i] = src[2i]`, `odd[i] = src[2i + 1]`: a stride-2 input row's two column phases, 32
/// columns at a time (`ld2` on NEON, two byte packs on SSE2; byte by byte, 9 instructions a byte,
/// this was 4.3 M of ResNet-18 int8's aarch64 instructions).
#[inline(always)]
fn deinterleave32(src: &[i8; 32], even: &mut [i8; 16], odd: &mut [i8; 16]) {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of aarch64; the 32-byte load and 16-byte stores stay inside the arrays.
    unsafe {
        use std::arch::aarch64::*;
        let v = vld2q_s8(src.as_ptr());
        vst1q_s8(even.as_mut_ptr(), v.0);
        vst1q_s8(odd.as_mut_ptr(), v.1);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86_64; the 16-byte loads and stores stay inside the arrays.
    unsafe {
        use std::arch::x86_64::*;
        let a = _mm_loadu_si128(src.as_ptr() as *const __m128i);
        let b = _mm_loadu_si128(src.as_ptr().add(16) as *const __m128i);
        // Each 16-bit lane's low byte is an even column, its high byte an odd one; packing the
        // (0..=255) halves back to bytes keeps them.
        let low = _mm_set1_epi16(0xff);
        let e = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
        let o = _mm_packus_epi16(_mm_srli_epi16::<8>(a), _mm_srli_epi16::<8>(b));
        _mm_storeu_si128(even.as_mut_ptr() as *mut __m128i, e);
        _mm_storeu_si128(odd.as_mut_ptr() as *mut __m128i, o);
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    for i in 0..16 {
        even[i] = src[2 * i];
        odd[i] = src[2 * i + 1];
    }
}

/// `dst.copy_from_slice(src)` for the short runs of im2col (one output row, 7 to 112 bytes),
/// in fixed 16- or 8-byte moves that compile to single loads and stores instead of a `memcpy`
/// call per run (the call overhead was a tenth of the op).
#[inline(always)]
fn copy_run(dst: &mut [i8], src: &[i8]) {
    let n = dst.len();
    let src = &src[..n];
    if n >= 16 {
        let mut i = 0;
        while i + 16 <= n {
            let s: &[i8; 16] = src[i..i + 16].try_into().unwrap();
            dst[i..i + 16].copy_from_slice(s);
            i += 16;
        }
        if i < n {
            let s: &[i8; 16] = src[n - 16..].try_into().unwrap();
            dst[n - 16..].copy_from_slice(s);
        }
    } else if n >= 8 {
        let s: &[i8; 8] = src[..8].try_into().unwrap();
        dst[..8].copy_from_slice(s);
        let s: &[i8; 8] = src[n - 8..].try_into().unwrap();
        dst[n - 8..].copy_from_slice(s);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// Writes one row of the unpacked im2col matrix: tap (`ky`, `kx`) of channel `c` for every
/// output pixel.
fn unpacked_row(g: &Geometry, padded: &Padded, c: usize, ky: usize, kx: usize, row: &mut [i8]) {
    let (sh, sw) = g.conv.stride;
    for (yo, out) in row.chunks_exact_mut(g.conv.out_width).enumerate() {
        let line = padded.row(c, kx % sw, yo * sh + ky);
        copy_run(out, &line[kx / sw..]);
    }
}

/// Writes the packed matrix. Rows `kk = (c * kh + ky) * kw + kx` (tract's order) are built
/// unpacked, [`ROW_BLOCK`] at a time, then scattered into the panels: panel `p` holds output
/// pixels `p*r .. p*r + r`. A block of rows is a contiguous run of whole cache lines in every
/// panel, written in one go (one row, or one group of four for K4, would fill a fraction of a
/// line per panel and come back for the rest later).
fn fill(g: &Geometry, x: &[i8], pad_value: i8, buf: &mut [i8], r: usize, panel_len: usize) {
    let padded = Padded::new(g, x, pad_value);
    // Rows stored per panel: K4 pads k to a multiple of 4 with zero rows.
    let k_stored = match g.packing {
        Packing::KOuter(_) => g.k,
        Packing::K4(_) | Packing::Kernel(_) => g.k.next_multiple_of(4),
    };
    let panels = Panels {
        ptr: buf.as_mut_ptr(),
        len: buf.len(),
    };
    // Blocks of rows on tract's threads (`--threads`): each writes its own rows of every panel.
    crate::ops::parallel::for_ranges(k_stored.div_ceil(ROW_BLOCK), |blocks| {
        let mut rows = vec![0i8; ROW_BLOCK * g.n];
        for start in blocks.map(|b| b * ROW_BLOCK) {
            let count = ROW_BLOCK.min(k_stored - start);
            // SAFETY: the rows start..start + count of each panel belong to this block only.
            unsafe { fill_block(g, &padded, &mut rows, start, count, &panels, r, panel_len) };
        }
    });
}

/// The packed matrix, shared by the threads that fill it.
struct Panels {
    ptr: *mut i8,
    len: usize,
}

// SAFETY: the threads write disjoint parts (see `fill`), and `fill` outlives them.
unsafe impl Send for Panels {}
unsafe impl Sync for Panels {}

impl Panels {
    /// `len` bytes at `at`.
    ///
    /// # Safety
    /// No other slice of that range is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [i8] {
        assert!(at + len <= self.len, "im2col: {at}+{len} past {}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(at), len)
    }
}

/// Builds rows `start..start + count` of the unpacked matrix in `rows` and scatters them into
/// the panels.
///
/// # Safety
/// No other thread writes those rows of the panels.
#[allow(clippy::too_many_arguments)]
unsafe fn fill_block(
    g: &Geometry,
    padded: &Padded,
    rows: &mut [i8],
    start: usize,
    count: usize,
    buf: &Panels,
    r: usize,
    panel_len: usize,
) {
    let (kh, kw) = g.conv.kernel;
    let n = g.n;
    for (q, row) in rows.chunks_exact_mut(n).take(count).enumerate() {
        let kk = start + q;
        if kk >= g.k {
            row.fill(0); // K4 rows past k: zeros
            continue;
        }
        let (c, tap) = (kk / (kh * kw), kk % (kh * kw));
        unpacked_row(g, padded, c, tap / kw, tap % kw, row);
    }
    let rows = &rows[..count * n];
    match g.packing {
        Packing::KOuter(_) => {
            for p in 0..n.div_ceil(r) {
                let (j0, at) = (p * r, p * panel_len + start * r);
                let lanes = r.min(n - j0);
                let dst = buf.slice(at, count * r);
                for (d, row) in dst.chunks_exact_mut(r).zip(rows.chunks_exact(n)) {
                    d[..lanes].copy_from_slice(&row[j0..j0 + lanes]);
                }
            }
        }
        Packing::K4(_) | Packing::Kernel(_) => {
            let quads: Vec<[&[i8]; 4]> = rows
                .chunks_exact(4 * n)
                .map(|q| [&q[..n], &q[n..2 * n], &q[2 * n..3 * n], &q[3 * n..]])
                .collect();
            let full = n / r * r;
            if r == 8 {
                // The common case (8-wide kernels), with fixed sizes the compiler turns
                // into byte shuffles.
                for (p, j0) in (0..full).step_by(8).enumerate() {
                    let at = p * panel_len + start * 8;
                    let dst = buf.slice(at, count * 8);
                    for (d, [r0, r1, r2, r3]) in dst.chunks_exact_mut(32).zip(&quads) {
                        interleave8(
                            r0[j0..j0 + 8].try_into().unwrap(),
                            r1[j0..j0 + 8].try_into().unwrap(),
                            r2[j0..j0 + 8].try_into().unwrap(),
                            r3[j0..j0 + 8].try_into().unwrap(),
                            d.try_into().unwrap(),
                        );
                    }
                }
            }
            if r == 16 {
                for (p, j0) in (0..full).step_by(16).enumerate() {
                    let at = p * panel_len + start * 16;
                    let dst = buf.slice(at, count * 16);
                    for (d, [r0, r1, r2, r3]) in dst.chunks_exact_mut(64).zip(&quads) {
                        interleave16(
                            r0[j0..j0 + 16].try_into().unwrap(),
                            r1[j0..j0 + 16].try_into().unwrap(),
                            r2[j0..j0 + 16].try_into().unwrap(),
                            r3[j0..j0 + 16].try_into().unwrap(),
                            d.try_into().unwrap(),
                        );
                    }
                }
            }
            let first_slow = if r == 8 || r == 16 { full } else { 0 };
            for j0 in (first_slow..n).step_by(r) {
                let at = j0 / r * panel_len + start * r;
                let lanes = r.min(n - j0);
                let dst = buf.slice(at, count * r);
                for (d, [r0, r1, r2, r3]) in dst.chunks_exact_mut(4 * r).zip(&quads) {
                    for (m, d) in d[..4 * lanes].chunks_exact_mut(4).enumerate() {
                        let j = j0 + m;
                        d.copy_from_slice(&[r0[j], r1[j], r2[j], r3[j]]);
                    }
                }
            }
        }
    }
}

/// Rows of the unpacked matrix built and scattered together (a multiple of 4, for K4). 16
/// rather than 4: ResNet-18 int8 19.0 against 19.4 ms (x86, one thread).
const ROW_BLOCK: usize = 16;

/// `dst[4m + q] = row_q[m]`: 8 lanes of 4 rows in the K4 layout (two byte-unpack steps on
/// SSE2 and NEON, which both targets always have).
#[inline(always)]
fn interleave8(a: &[i8; 8], b: &[i8; 8], c: &[i8; 8], d: &[i8; 8], dst: &mut [i8; 32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86_64; unaligned 8-byte loads and 16-byte stores stay inside
    // the arrays.
    unsafe {
        use std::arch::x86_64::*;
        let ld = |x: &[i8; 8]| _mm_loadl_epi64(x.as_ptr() as *const __m128i);
        let ab = _mm_unpacklo_epi8(ld(a), ld(b));
        let cd = _mm_unpacklo_epi8(ld(c), ld(d));
        _mm_storeu_si128(dst.as_mut_ptr() as *mut __m128i, _mm_unpacklo_epi16(ab, cd));
        _mm_storeu_si128(
            dst.as_mut_ptr().add(16) as *mut __m128i,
            _mm_unpackhi_epi16(ab, cd),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of aarch64; 8-byte loads and 16-byte stores stay inside the arrays.
    unsafe {
        use std::arch::aarch64::*;
        let ab = vzip_s8(vld1_s8(a.as_ptr()), vld1_s8(b.as_ptr()));
        let cd = vzip_s8(vld1_s8(c.as_ptr()), vld1_s8(d.as_ptr()));
        let ab = vreinterpretq_s16_s8(vcombine_s8(ab.0, ab.1));
        let cd = vreinterpretq_s16_s8(vcombine_s8(cd.0, cd.1));
        let z = vzipq_s16(ab, cd);
        vst1q_s8(dst.as_mut_ptr(), vreinterpretq_s8_s16(z.0));
        vst1q_s8(dst.as_mut_ptr().add(16), vreinterpretq_s8_s16(z.1));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    for m in 0..8 {
        dst[4 * m] = a[m];
        dst[4 * m + 1] = b[m];
        dst[4 * m + 2] = c[m];
        dst[4 * m + 3] = d[m];
    }
}

/// `dst[4m + q] = row_q[m]`: 16 lanes of 4 rows in the K4 layout.
#[inline(always)]
pub(crate) fn interleave16(a: &[i8; 16], b: &[i8; 16], c: &[i8; 16], d: &[i8; 16], dst: &mut [i8; 64]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86_64; unaligned 16-byte loads and stores stay inside the arrays.
    unsafe {
        use std::arch::x86_64::*;
        let ld = |x: &[i8; 16]| _mm_loadu_si128(x.as_ptr() as *const __m128i);
        let (a, b, c, d) = (ld(a), ld(b), ld(c), ld(d));
        let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
        let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
        let out = dst.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(out, _mm_unpacklo_epi16(ab_lo, cd_lo));
        _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
        _mm_storeu_si128(out.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
        _mm_storeu_si128(out.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
    }
    #[cfg(not(target_arch = "x86_64"))]
    for m in 0..16 {
        dst[4 * m] = a[m];
        dst[4 * m + 1] = b[m];
        dst[4 * m + 2] = c[m];
        dst[4 * m + 3] = d[m];
    }
}

// The kernels are per architecture; the layouts are tested everywhere.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
impl FastIm2Col {
    /// The same patches in a device kernel's layout (from tract's K4 layout, or its K-outer
    /// one on CPUs without a dot product).
    pub(crate) fn for_kernel(&self, layout: KernelPatches) -> Option<FastIm2Col> {
        let mut geometry = self.geometry.clone();
        if !matches!(geometry.packing, Packing::K4(_) | Packing::KOuter(_)) {
            return None;
        }
        geometry.packing = Packing::Kernel(layout);
        Some(FastIm2Col { geometry })
    }

    /// The patches of a 1x1 stride-1 convolution over a `channels x height x width` input (a
    /// repacking of the input itself: tract lowers such convs to matrix products without an
    /// `Im2col`), in a device kernel's layout.
    pub(crate) fn pointwise(
        layout: KernelPatches,
        channels: usize,
        height: usize,
        width: usize,
    ) -> FastIm2Col {
        FastIm2Col {
            geometry: Geometry {
                conv: ConvShape {
                    channels,
                    height,
                    width,
                    kernel: (1, 1),
                    stride: (1, 1),
                    pad: (0, 0),
                    out_height: height,
                    out_width: width,
                },
                k: channels,
                n: height * width,
                packing: Packing::Kernel(layout),
            },
        }
    }

    /// The geometry of the convolution (also of the 1x1 convs' patches in a kernel's layout).
    pub(crate) fn shape(&self) -> &ConvShape {
        &self.geometry.conv
    }

    /// The geometry of the convolution, if this writes patches for tract (for the convs the
    /// int8 kernels run on the padded input directly, without patches).
    pub(crate) fn conv_shape(&self) -> Option<ConvShape> {
        let g = &self.geometry;
        matches!(g.packing, Packing::K4(_) | Packing::KOuter(_)).then(|| g.conv.clone())
    }

    /// Rows (`channels x kernel height x kernel width`) and columns (output pixels) of the
    /// patch matrix.
    pub(crate) fn k_n(&self) -> (usize, usize) {
        (self.geometry.k, self.geometry.n)
    }
}

/// The geometry of an `Im2col` node if [`FastIm2Col`] can replace it.
fn geometry(model: &TypedModel, node: &TypedNode, op: &Im2Col) -> TractResult<Option<Geometry>> {
    let input = model.outlet_fact(node.inputs[0])?;
    let spec = &op.pool_spec;
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    use tract_core::ops::nn::DataFormat;
    // NCHW with one image, or CHW (tract drops the batch axis after 1x1 convs it turned into
    // matrix products, as in ResNet-50's bottlenecks): channel-major planes either way.
    let shape: &[usize] = match (spec.data_format, shape) {
        (DataFormat::NCHW, [1, chw @ ..]) | (DataFormat::CHW, chw) => chw,
        _ => return Ok(None),
    };
    if input.datum_type != i8::datum_type()
        || op.group != 1
        || shape.len() != 3
        || spec.kernel_shape.len() != 2
        || spec.dilations().iter().any(|d| *d != 1)
        || node.inputs.len() > 2
    {
        return Ok(None);
    }
    let output = &model.outlet_fact(OutletId::new(node.id, 0))?;
    let Some(packed) = output
        .exotic_fact()
        .and_then(|f| f.downcast_ref::<PackedExoticFact>())
    else {
        return Ok(None);
    };
    let packing = if let Some(f) = packed.format.downcast_ref::<PackedFormat>() {
        Packing::KOuter(f.clone())
    } else if let Some(f) = packed.format.downcast_ref::<PackedI8K4>() {
        Packing::K4(f.clone())
    } else {
        return Ok(None);
    };
    let conv = ConvShape::of_window(spec, shape[0], shape[1], shape[2]);
    let k = conv.channels * conv.kernel.0 * conv.kernel.1;
    let n = conv.out_height * conv.out_width;
    if packed.k != k || packed.mn != n.to_dim() {
        return Ok(None);
    }
    Ok(Some(Geometry { conv, k, n, packing }))
}

/// Replaces every `Im2col` of an optimized model that [`FastIm2Col`] handles; returns how many.
pub fn speed_up(model: &mut TypedModel) -> TractResult<usize> {
    crate::ops::matching::replace_ops::<Im2Col>(model, |model, node, op| {
        Ok(geometry(model, node, op)?.map(|geometry| Box::new(FastIm2Col { geometry }) as _))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::import::Window;
    use tract_core::ops::cnn::conv::KernelFormat;
    use tract_core::ops::cnn::Conv;

    /// A quantized conv like `crate::engine::import` builds (i8 x i8 -> i32, input zero point `zp`).
    fn conv_model(
        c: usize,
        hw: (usize, usize),
        o: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        zp: i8,
        seed: u64,
    ) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", i8::fact([1, c, hw.0, hw.1])).unwrap();
        let mut next = crate::ops::test_util::random_i8(seed);
        let w: Vec<i8> = (0..o * c * kernel * kernel).map(|_| next()).collect();
        let b: Vec<i32> = (0..o).map(|i| i as i32 * 7 - 20).collect();
        let k = m
            .add_const(
                "w",
                Tensor::from_shape(&[o, c, kernel, kernel], &w).unwrap(),
            )
            .unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[o], &b).unwrap())
            .unwrap();
        let x0 = m.add_const("x0", tensor0(zp as i32)).unwrap();
        let one = m.add_const("one", tensor0(1f32)).unwrap();
        let zero = m.add_const("zero", tensor0(0i32)).unwrap();
        let spec = Window {
            in_channels: c,
            out_channels: o,
            kernel,
            stride,
            padding: pad,
        }
        .pool_spec();
        let op = Conv::new(spec, KernelFormat::OIHW, 1, Some(i32::datum_type()));
        let y = m
            .wire_node("conv", op, &[x, k, b, x0, one, zero, one, zero, one])
            .unwrap()[0];
        m.select_output_outlets(&[y]).unwrap();
        m.into_optimized().unwrap()
    }

    fn run(model: TypedModel, input: &Tensor) -> Tensor {
        let plan = SimplePlan::new(model).unwrap();
        plan.run(tvec!(input.clone().into_tvalue())).unwrap()[0]
            .clone()
            .into_tensor()
    }

    #[test]
    fn bit_identical_to_tract_on_odd_geometries() {
        // (channels, (h, w), out channels, kernel, stride, pad, zero point)
        let cases = [
            (3, (13, 11), 8, 3, 1, 1, -128i8),
            (5, (9, 17), 16, 3, 2, 1, 3),
            (3, (23, 19), 8, 7, 2, 3, -5),
            (16, (10, 10), 24, 1, 2, 0, -128),
            // Stride 2 on rows of 32 columns and more (their phases split 32 at a time), left
            // paddings 3, 1 and 0, odd and even widths.
            (3, (21, 77), 8, 7, 2, 3, -5),
            (4, (9, 66), 8, 3, 2, 1, 5),
            (8, (6, 97), 16, 1, 2, 0, -128),
            (4, (7, 9), 8, 5, 1, 2, 0),
            (8, (56, 56), 16, 3, 1, 1, -128),
            (2, (4, 3), 8, 3, 1, 1, 17),
        ];
        for (i, &(c, hw, o, k, s, p, zp)) in cases.iter().enumerate() {
            let reference = conv_model(c, hw, o, k, s, p, zp, i as u64 + 1);
            let mut fast = reference.clone();
            let im2cols = reference
                .nodes()
                .iter()
                .filter(|n| n.op_is::<Im2Col>())
                .count();
            let replaced = speed_up(&mut fast).unwrap();
            // A 1x1 stride-2 conv becomes a subsampling + matmul, without an im2col.
            assert_eq!(replaced, im2cols, "case {i}: {fast}");
            assert_eq!(replaced, usize::from(k > 1), "case {i}: {fast}");
            let mut rng = 99u32 + i as u32;
            let input = Tensor::from_shape(
                &[1, c, hw.0, hw.1],
                &(0..c * hw.0 * hw.1)
                    .map(|_| {
                        rng = rng.wrapping_mul(1103515245).wrapping_add(12345);
                        (rng >> 16) as i8
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            let want = run(reference, &input);
            let got = run(fast, &input);
            assert_eq!(want, got, "case {i}: {:?}", cases[i]);
        }
    }

    /// The unpacked `[k][n]` matrix of a packed one: K4 (tract's, `r` lanes) or a kernel's.
    fn unpack(g: &Geometry, t: &Tensor) -> Vec<Vec<i8>> {
        let (bytes, r, panel_len): (Vec<i8>, usize, usize) = match &g.packing {
            Packing::K4(f) => {
                let storage = t.try_storage_as::<PackedMatrixStorage>().unwrap();
                let packed = storage.values()[0]
                    .downcast_ref::<EagerPackedInput>()
                    .unwrap();
                let bytes = packed.packed.as_bytes().iter().map(|b| *b as i8).collect();
                (bytes, f.r, f.single_panel_len(g.k))
            }
            Packing::Kernel(p) => {
                let bytes: Vec<i8> = match p {
                    KernelPatches::Vnni => {
                        let bytes = t.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap();
                        bytes.iter().map(|b| *b as i8).collect()
                    }
                    KernelPatches::Sdot => {
                        t.try_as_plain_ram().unwrap().as_slice::<i8>().unwrap().to_vec()
                    }
                };
                (bytes, p.lanes(), g.packing.panel_len(g.k))
            }
            Packing::KOuter(_) => unreachable!(),
        };
        (0..g.k)
            .map(|kk| {
                (0..g.n)
                    .map(|j| bytes[j / r * panel_len + (kk / 4) * 4 * r + 4 * (j % r) + kk % 4])
                    .collect()
            })
            .collect()
    }

    /// The kernels' patches are tract's (`crate::kernels::aarch64::dotprod`'s) or tract's plus
    /// 128 as unsigned bytes (`crate::kernels::x86_64::vnni`'s), on the same odd geometries; and
    /// a 1x1 conv's are the input itself.
    #[test]
    fn kernel_patches_are_tracts() {
        let cases = [
            (3, (13, 11), 8, 3, 1, 1, -128i8),
            (5, (9, 17), 16, 3, 2, 1, 3),
            (3, (23, 19), 8, 7, 2, 3, -5),
            (3, (21, 77), 8, 7, 2, 3, -5),
            (4, (9, 66), 8, 3, 2, 1, 5),
            (8, (56, 56), 16, 3, 1, 1, -128),
            (2, (4, 3), 8, 3, 1, 1, 17),
        ];
        let flip = |m: Vec<Vec<i8>>| -> Vec<Vec<i8>> {
            m.into_iter()
                .map(|row| row.into_iter().map(|v| v ^ i8::MIN).collect())
                .collect()
        };
        let mut compared = 0;
        for (i, &(c, hw, o, k, s, p, zp)) in cases.iter().enumerate() {
            let model = conv_model(c, hw, o, k, s, p, zp, i as u64 + 1);
            let node = model.nodes().iter().find(|n| n.op_is::<Im2Col>()).unwrap();
            let g = geometry(&model, node, node.op_as::<Im2Col>().unwrap())
                .unwrap()
                .unwrap();
            if !matches!(g.packing, Packing::K4(_)) {
                continue; // no dot-product kernel on this CPU: tract packs K-outer
            }
            let tract = FastIm2Col { geometry: g };
            let mut next = 7u32 + i as u32;
            let x: Vec<i8> = (0..c * hw.0 * hw.1)
                .map(|_| {
                    next = next.wrapping_mul(1103515245).wrapping_add(12345);
                    (next >> 16) as i8
                })
                .collect();
            let inputs = tvec![
                Tensor::from_shape(&[1, c, hw.0, hw.1], &x)
                    .unwrap()
                    .into_tvalue(),
                tensor0(zp).into_tvalue()
            ];
            let ctx = EvalContext::out_of_plan();
            let a = tract.eval(&ctx, inputs.clone()).unwrap().remove(0);
            let tracts = unpack(&tract.geometry, &a);
            // 1x1: the input, channel-major.
            let input: Vec<Vec<i8>> = x.chunks(hw.0 * hw.1).map(|r| r.to_vec()).collect();
            let t = Tensor::from_shape(&[c, hw.0, hw.1], &x)
                .unwrap()
                .into_tvalue();
            for layout in [KernelPatches::Vnni, KernelPatches::Sdot] {
                let (want, want_1x1) = match layout {
                    KernelPatches::Vnni => (flip(tracts.clone()), flip(input.clone())),
                    KernelPatches::Sdot => (tracts.clone(), input.clone()),
                };
                let kernel = tract.for_kernel(layout).unwrap();
                let b = kernel.eval(&ctx, inputs.clone()).unwrap().remove(0);
                let facts = kernel.output_facts(&[&i8::fact([1, c, hw.0, hw.1])]).unwrap();
                assert_eq!(facts[0].datum_type, b.datum_type());
                assert_eq!(facts[0].shape.as_concrete(), Some(b.shape()));
                let got = unpack(&kernel.geometry, &b);
                assert_eq!(want, got, "case {i} {layout:?}: {:?}", cases[i]);
                let pointwise = FastIm2Col::pointwise(layout, c, hw.0, hw.1);
                let b = pointwise.eval(&ctx, tvec![t.clone()]).unwrap().remove(0);
                let got = unpack(&pointwise.geometry, &b);
                assert_eq!(want_1x1, got, "case {i} {layout:?}: 1x1");
            }
            compared += 1;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::Cpu::get().avx512_vnni {
            assert_eq!(compared, cases.len(), "tract packs K4 for its VNNI kernel");
        }
        #[cfg(target_arch = "aarch64")]
        if crate::kernels::aarch64::dotprod::takes_over(crate::cpu::Cpu::get()) {
            assert_eq!(compared, cases.len(), "tract packs K4 for its SDOT kernel");
        }
        if compared == 0 {
            eprintln!("skipped: tract packs K-outer on this CPU (no dot-product kernel)");
        }
    }
}
