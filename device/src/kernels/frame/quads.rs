//! The padded input the int8 dot-product kernels read directly instead of patches (x86
//! `crate::kernels::x86_64::vnni`, aarch64 `crate::kernels::aarch64::dotprod`): the layout
//! ([`Quads`]) and the op that writes it ([`QuadsOp`]), each instruction set writing the rows
//! its own way ([`QuadsFill`]).
//!
//! Patches are 9 times the input for 3x3 convs: tract's im2col writes each input byte once per
//! kernel tap. The quads write the input once, with its zero-point padding around it; the
//! kernels then read each kernel tap of a run of consecutive output positions as one run of
//! consecutive positions.

use crate::ops::im2col::ConvShape;
use std::marker::PhantomData;
use std::ops::Range;
use tract_core::internal::*;

/// The layout: the input with its padding (the zero point) around it, split by row and column
/// phase (`y % stride_y`, `x % stride_x`, as `crate::ops::im2col` does) so that each kernel
/// tap of consecutive output pixels is a contiguous run, channels in quads, 4 bytes per
/// position (channel `c % 4` at byte `c % 4`). Per channel quad, per phase, a plane of
/// `hq x wq` positions: padded position `(Y, X)` is at `(Y / sy) * wq + X / sx` of phase
/// `(Y % sy, X % sx)`. The planes cover the extent the kernel taps reach; the missing channels
/// of the last quad hold the padding (their weights are zero).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quads {
    pub(crate) g: ConvShape,
}

impl Quads {
    pub(crate) fn quads(&self) -> usize {
        self.g.channels.div_ceil(4)
    }

    /// Positions per channel quad: its planes.
    pub(crate) fn quad_len(&self) -> usize {
        self.g.phases() * self.g.plane()
    }

    /// Bytes: every plane, then room for what a last tile of `lanes` positions reads past it
    /// (the lanes past the last row, plus the taps of the last row).
    pub(crate) fn len(&self, lanes: usize) -> usize {
        (self.quads() * self.quad_len() + lanes + self.g.kernel.1) * 4
    }

    /// The kernel's weights `w` (`[m][k]`, tract's order along k: channel, kernel y, kernel
    /// x) in the order a kernel reading these quads steps through: channel quad, kernel tap,
    /// channel % 4, with zero weights for the channels past the last.
    pub(crate) fn reorder(&self, w: &[Vec<i8>]) -> Vec<Vec<i8>> {
        let taps = self.g.kernel.0 * self.g.kernel.1;
        w.iter()
            .map(|row| {
                let mut r = vec![0i8; taps * self.quads() * 4];
                for c in 0..self.g.channels {
                    for t in 0..taps {
                        r[(c / 4 * taps + t) * 4 + c % 4] = row[c * taps + t];
                    }
                }
                r
            })
            .collect()
    }
}

/// How one instruction set writes [`Quads`] (and which kernel reads them): its rows, where it
/// has a fast way for the geometry; [`Quads::fill`] does the rest.
pub trait QuadsFill: 'static + Send + Sync {
    /// The op's name (`device inspect`, node names).
    const NAME: &'static str;
    /// Positions a tile of the kernel reads at once: the room past the last plane.
    const LANES: usize;
    /// The bytes as the kernel reads them (`u8`: `x ^ 0x80` for `vpdpbusd`; `i8` for `sdot`).
    type Byte: Datum + Copy;
    /// The byte of the room past the last plane (only padding lanes read it).
    const TAIL: Self::Byte;

    /// The kernel's byte for the input value `v`.
    fn byte(v: i8) -> Self::Byte;

    /// Writes input row `y` of the channels `channels` (one quad, whose planes start at `dst`
    /// and hold the padding `pad` already) of `x` (`[c][h][w]` i8), if this instruction set
    /// has a way for `q`'s geometry; false leaves the row to [`Quads::fill`]'s byte loop.
    ///
    /// # Safety
    /// The CPU has the instruction set; `x` holds the input, `dst` the quad's planes.
    unsafe fn fill_row(q: &Quads, x: *const i8, y: usize, channels: &Range<usize>, pad: Self::Byte, dst: *mut Self::Byte) -> bool;
}

impl Quads {
    /// The plane row and the row phase of input row `y`.
    pub(crate) fn plane_row(&self, y: usize) -> (usize, usize) {
        let (sy, top) = (self.g.stride.0, self.g.pad.0);
        ((y + top) / sy, (y + top) % sy)
    }

    /// Writes the planes of channel quads `quads` of `x` (`[c][h][w]` i8) padded with `pad`
    /// into `out`: each quad's planes set to the padding, then each input row by
    /// `F::fill_row`, or byte by byte where it has no way.
    ///
    /// # Safety
    /// As `F::fill_row`; `out` holds [`Quads::len`] bytes; no other thread writes these quads.
    pub(crate) unsafe fn fill<F: QuadsFill>(&self, x: *const i8, pad: i8, out: *mut F::Byte, quads: Range<usize>) {
        let g = &self.g;
        let sx = g.stride.1;
        let (hp, wp) = g.extent();
        let (wq, plane) = (g.plane_width(), g.plane());
        let (top, left) = g.pad;
        let pad = F::byte(pad);
        let rows = g.height.min(hp.saturating_sub(top));
        let cols = g.width.min(wp.saturating_sub(left));
        for quad in quads {
            let dst = out.add(quad * self.quad_len() * 4);
            std::slice::from_raw_parts_mut(dst, self.quad_len() * 4).fill(pad);
            let channels = 4 * quad..(4 * quad + 4).min(g.channels);
            for y in 0..rows {
                if F::fill_row(self, x, y, &channels, pad, dst) {
                    continue;
                }
                let (yy, py) = self.plane_row(y);
                for (j, c) in channels.clone().enumerate() {
                    let src = x.add((c * g.height + y) * g.width);
                    for xi in 0..cols {
                        let (xx, px) = ((xi + left) / sx, (xi + left) % sx);
                        let at = (py * sx + px) * plane + yy * wq + xx;
                        *dst.add(at * 4 + j) = F::byte(*src.add(xi));
                    }
                }
            }
        }
    }
}

/// The input of a kernel reading [`Quads`] from an i8 `[1, C, H, W]` or `[C, H, W]` input and
/// its zero point (the padding value): the input once, instead of once per kernel tap as
/// patches.
pub struct QuadsOp<F: QuadsFill> {
    pub(crate) quads: Quads,
    fill: PhantomData<fn() -> F>,
}

impl<F: QuadsFill> QuadsOp<F> {
    pub(crate) fn new(quads: Quads) -> Self {
        QuadsOp {
            quads,
            fill: PhantomData,
        }
    }
}

// By hand: a derive would ask the same of `F`.
impl<F: QuadsFill> Clone for QuadsOp<F> {
    fn clone(&self) -> Self {
        Self::new(self.quads.clone())
    }
}
impl<F: QuadsFill> PartialEq for QuadsOp<F> {
    fn eq(&self, o: &Self) -> bool {
        self.quads == o.quads
    }
}
impl<F: QuadsFill> Eq for QuadsOp<F> {}
impl<F: QuadsFill> std::hash::Hash for QuadsOp<F> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.quads.hash(h)
    }
}
impl<F: QuadsFill> std::fmt::Debug for QuadsOp<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {{ {:?} }}", F::NAME, self.quads.g)
    }
}

impl<F: QuadsFill> Op for QuadsOp<F> {
    fn name(&self) -> StaticName {
        F::NAME.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.quads.g;
        Ok(vec![format!(
            "{}x{}x{} kernel {:?} stride {:?} pad {:?} -> {} planes of {}x{}",
            g.channels,
            g.height,
            g.width,
            g.kernel,
            g.stride,
            g.pad,
            self.quads.quads() * g.phases(),
            g.plane() / g.plane_width(),
            g.plane_width()
        )])
    }

    op_as_typed_op!();
}

impl<F: QuadsFill> EvalOp for QuadsOp<F> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.quads.g;
        let x = &inputs[0];
        ensure!(
            x.datum_type() == i8::datum_type()
                && x.len() == g.channels * g.height * g.width
                && x.shape().ends_with(&[g.channels, g.height, g.width]),
            "{}: input {:?} {:?}, planned for [1, {}, {}, {}] i8",
            F::NAME,
            x.datum_type(),
            x.shape(),
            g.channels,
            g.height,
            g.width
        );
        let pad = match inputs.get(1) {
            Some(t) => t.cast_to_scalar::<i8>()?,
            None => 0,
        };
        let len = self.quads.len(F::LANES);
        let mut out = unsafe { Tensor::uninitialized_aligned::<F::Byte>(&[len], 64)? };
        let planes = self.quads.quads();
        let tail = planes * self.quads.quad_len() * 4;
        struct Ptrs<B>(*const i8, *mut B);
        // SAFETY: each range of planes writes its own bytes of `out`.
        unsafe impl<B> Sync for Ptrs<B> {}
        let p = unsafe {
            Ptrs(
                x.as_ptr_unchecked::<i8>(),
                out.as_ptr_mut_unchecked::<F::Byte>(),
            )
        };
        crate::ops::parallel::for_ranges(planes, |r| unsafe {
            let p = &p;
            self.quads.fill::<F>(p.0, pad, p.1, r)
        });
        // The room past the last plane: any initialized bytes (only padding lanes read them).
        unsafe { out.as_slice_mut_unchecked::<F::Byte>()[tail..].fill(F::TAIL) };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl<F: QuadsFill> TypedOp for QuadsOp<F> {
    as_op!();

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(F::Byte::fact([self.quads.len(F::LANES)])))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops::epilogue::Int8Epilogue;
    use crate::ops::quantize::{quantize, FastQuantize};
    use crate::ops::test_util::random_i8 as random;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// An implicit kernel (`QuadsOp<F>` -> the conv `implicit` makes) against a scalar integer
    /// convolution (zero-point padding) and `Int8Epilogue`'s f32 steps, bit for bit, on one and
    /// two threads, for `cases` (channels, height, width, kernel, stride, padding, output
    /// channels), weights from `min_weight` up. Skipped where the CPU lacks the kernel's
    /// instructions (`cpu_has`).
    pub(crate) fn implicit_equals_scalar_convolution<F: QuadsFill, C: EvalOp>(
        cpu_has: (bool, &str),
        cases: &[(usize, usize, usize, usize, usize, usize, usize)],
        min_weight: i8,
        implicit: impl Fn(&[Vec<i8>], &[i32], Quads, Int8Epilogue) -> C,
    ) {
        if !cpu_has.0 {
            eprintln!(
                "skipped: this CPU has no {} (the plan keeps tract's kernels)",
                cpu_has.1
            );
            return;
        }
        for (case, &(c, h, w, k, s, p, m)) in cases.iter().enumerate() {
            let mut next = random(case as u64 + 99);
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let kk = c * k * k;
            let wts: Vec<Vec<i8>> =
                (0..m).map(|_| (0..kk).map(|_| next().max(min_weight)).collect()).collect();
            let x: Vec<i8> = (0..c * h * w).map(|_| next()).collect();
            let zp = next();
            let offsets: Vec<i32> = (0..m).map(|o| o as i32 * 311 - 5000).collect();
            let scale: Vec<f32> = (0..m).map(|o| 1e-3 * (1.0 + o as f32 / 5.0)).collect();
            let residual: Vec<f32> = (0..m * oh * ow).map(|i| i as f32 * 1e-3 - 2.0).collect();
            let q = FastQuantize {
                scale: 7.25,
                zero_point: -3,
            };
            let epilogue = Int8Epilogue {
                scale: scale.clone(),
                residual: true,
                relu: case % 2 == 0,
                quantize: Some(q.clone()),
                keep_f32: true,
                shape: tvec![1, m, oh * ow],
            };
            let shape = ConvShape {
                channels: c,
                height: h,
                width: w,
                kernel: (k, k),
                stride: (s, s),
                pad: (p, p),
                out_height: oh,
                out_width: ow,
            };
            let quads = Quads { g: shape };
            let fill = QuadsOp::<F>::new(quads.clone());
            let conv = implicit(&wts, &offsets, quads, epilogue.clone());
            let input = tvec![
                Tensor::from_shape(&[1, c, h, w], &x).unwrap().into_tvalue(),
                tensor0(zp).into_tvalue(),
            ];
            let run = || {
                let ctx = EvalContext::out_of_plan();
                let patches = fill.eval(&ctx, input.clone()).unwrap().remove(0);
                let r = Tensor::from_shape(&[1, m, oh * ow], &residual).unwrap();
                conv.eval(&ctx, tvec![patches, r.into_tvalue()]).unwrap()
            };
            let one = run();
            let two = multithread_tract_scope(Executor::multithread(2), run);
            assert_eq!(one, two, "case {case}: threads differ");
            let got_f = one[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap();
            let got_i = one[1].try_as_plain_ram().unwrap().as_slice::<i8>().unwrap();
            for o in 0..m {
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut sum = 0i32;
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (y * s + ky, xo * s + kx);
                                    let v = if iy < p || ix < p || iy - p >= h || ix - p >= w {
                                        zp
                                    } else {
                                        x[(ci * h + iy - p) * w + ix - p]
                                    };
                                    let wv = wts[o][(ci * k + ky) * k + kx];
                                    sum += i32::from(wv) * i32::from(v);
                                }
                            }
                        }
                        let at = (o * oh + y) * ow + xo;
                        let mut v = (sum + offsets[o]) as f32 * scale[o] + residual[at];
                        if epilogue.relu {
                            v = v.max(0.0);
                        }
                        assert_eq!(
                            got_f[at].to_bits(),
                            v.to_bits(),
                            "case {case} channel {o} at ({y}, {xo}): {} vs {v}",
                            got_f[at]
                        );
                        let want = quantize(v, q.scale, i32::from(q.zero_point));
                        assert_eq!(got_i[at], want, "case {case} channel {o} at ({y}, {xo})");
                    }
                }
            }
        }
    }
}
