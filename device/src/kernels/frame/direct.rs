//! What the direct large-kernel float convs (ResNet's 7x7/2 stem: x86
//! `crate::kernels::x86_64::direct`, aarch64 `crate::kernels::aarch64::direct`) share: the
//! input split once by row and column phase (`x % stride`), so that one kernel tap of
//! consecutive output pixels is a run of consecutive floats ([`Split`]), the per-step offsets
//! into it, and the weights in blocks of output channels.

use crate::kernels::frame::float_conv::{shape, Epilogue};
use crate::ops::im2col::ConvShape;
use tract_core::internal::*;

/// The split input of a conv of geometry `g`: per channel, one plane per phase (`hq x wq`
/// positions, zeros where the padding is), padded position `(Y, X)` at `(Y / sy) * wq + X / sx`
/// of phase `(Y % sy, X % sx)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub g: ConvShape,
}

impl Split {
    /// Floats per input channel: one plane per phase.
    pub(crate) fn channel_len(&self) -> usize {
        self.g.phases() * self.g.plane()
    }

    /// Floats of the split input: every channel, then `slack` for what the last tile reads
    /// past it.
    pub(crate) fn len(&self, slack: usize) -> usize {
        self.g.channels * self.channel_len() + slack
    }

    /// Per step (channel, ky, kx), its offset in the split input from a tile's first position.
    pub(crate) fn steps(&self) -> Vec<usize> {
        let (channel, taps) = (self.channel_len(), self.g.tap_offsets());
        (0..self.g.channels).flat_map(|c| taps.iter().map(move |t| c * channel + t)).collect()
    }

    /// The output's shape, `k` channels: `[1, K, OH, OW]` if `batched`, else `[K, OH, OW]`.
    pub(crate) fn output_shape(&self, batched: bool, k: usize) -> TVec<usize> {
        shape(batched, [k, self.g.out_height, self.g.out_width])
    }

    /// The op's input `x` checked against the plan (`T`, `[1, C, H, W]` if `batched`, else
    /// `[C, H, W]`) and split, `slack` zeros after.
    pub(crate) fn read<T: Datum + Copy + Default>(&self, x: &TValue, batched: bool, slack: usize) -> TractResult<Vec<T>> {
        let g = &self.g;
        let planned = shape(batched, [g.channels, g.height, g.width]);
        ensure!(
            x.datum_type() == T::datum_type() && x.shape() == &planned[..],
            "DirectConv: input {:?} {:?}, planned for {planned:?} {:?}",
            x.datum_type(),
            x.shape(),
            T::datum_type(),
        );
        let x = x.try_as_plain_ram()?.as_slice::<T>()?;
        let mut split = vec![T::default(); self.len(slack)];
        for c in 0..g.channels {
            self.fill(x, &mut split, c);
        }
        Ok(split)
    }

    /// `device inspect`'s lines for a direct conv op with `k` output channels.
    pub(crate) fn info(&self, k: usize, kernel: &str, epilogue: &Epilogue) -> Vec<String> {
        let g = &self.g;
        vec![
            format!(
                "{}->{} channels, {}x{} -> {}x{}, kernel {:?} stride {:?} pad {:?}, [{kernel}]",
                g.channels, k, g.height, g.width, g.out_height, g.out_width, g.kernel, g.stride, g.pad,
            ),
            format!("{epilogue:?}"),
        ]
    }

    /// A direct conv op's `Debug`.
    pub(crate) fn describe(&self, f: &mut std::fmt::Formatter<'_>, k: usize, epilogue: &Epilogue) -> std::fmt::Result {
        let g = &self.g;
        write!(f, "DirectConv {{ c: {}, k: {k}, kernel: {:?}, stride: {:?}, {epilogue:?} }}", g.channels, g.kernel, g.stride)
    }

    /// Writes channel `c` of `x` (`[C, H, W]`) into `split` (zeroed), split by phase.
    pub(crate) fn fill<T: Copy>(&self, x: &[T], split: &mut [T], c: usize) {
        let g = &self.g;
        let (sy, sx) = g.stride;
        let (hp, wp) = g.extent();
        let (top, left) = g.pad;
        let (wq, plane) = (g.plane_width(), g.plane());
        let dst = &mut split[c * self.channel_len()..][..self.channel_len()];
        for y in 0..g.height.min(hp.saturating_sub(top)) {
            let (yy, py) = ((y + top) / sy, (y + top) % sy);
            let row = &x[(c * g.height + y) * g.width..][..g.width.min(wp.saturating_sub(left))];
            let planes = &mut dst[py * sx * plane..][..sx * plane];
            if sx == 2 {
                // The stem: the row's even and odd columns to their two phases, a pair at a
                // time (a loop the compiler vectorizes: `ld2` on NEON).
                let (first, second) = planes.split_at_mut(plane);
                let (even, odd) = if left % 2 == 0 { (first, second) } else { (second, first) };
                let even = &mut even[yy * wq + left / 2..];
                let odd = &mut odd[yy * wq + (left + 1) / 2..];
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    even[row.len() / 2] = *last;
                }
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                    *e = pair[0];
                    *o = pair[1];
                }
                continue;
            }
            // Column phase and position of padded column `xi + left`, kept without a division.
            let (mut xx, mut px) = (left / sx, left % sx);
            for v in row {
                planes[px * plane + yy * wq + xx] = *v;
                px += 1;
                if px == sx {
                    px = 0;
                    xx += 1;
                }
            }
        }
    }
}

/// The weights `kernel` (`[k][steps]`, `k` a multiple of `r`) per block of `r` output
/// channels, per step: the block's `r` weights, made `T` by `cast`.
pub(crate) fn blocked_weights<T: Copy + Default>(kernel: &[f32], k: usize, r: usize, cast: fn(f32) -> T) -> Vec<T> {
    let steps = kernel.len() / k;
    let mut u = vec![T::default(); k * steps];
    for o in 0..k {
        for s in 0..steps {
            u[((o / r) * steps + s) * r + o % r] = cast(kernel[o * steps + s]);
        }
    }
    u
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::kernels::frame::float_conv::Epilogue;
    use crate::ops::im2col::ConvShape;
    use crate::ops::test_util::random_f32 as random;
    use tract_core::internal::*;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};

    /// The values of `v` rounded to `T` (the op's tensors and weights), as f32.
    pub(crate) fn rounded<T: Datum>(v: &[f32]) -> Vec<f32> {
        let t = tensor1(v).cast_to::<T>().unwrap().cast_to::<f32>().unwrap().into_owned();
        t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    /// A direct conv op (made by `new`) on `T` tensors against a direct float64 convolution
    /// of the same inputs, weights and bias (rounded to `T`): the ResNet stem and smaller odd
    /// shapes (7x7, 5x5, 3x3), strides 1 to 3, with and without ReLU, on one and two threads (same bits).
    /// Each output within `tolerance` of the sum of its terms' magnitudes.
    pub(crate) fn equals_float64_convolution<T: Datum, C: EvalOp>(
        new: fn(ConvShape, usize, bool, &[f32], &[f32], Epilogue) -> C,
        tolerance: f64,
    ) {
        // (c, k, h, w, kernel, stride, pad)
        let cases = [
            (3, 64, 224, 224, 7, 2, 3),
            (3, 8, 31, 17, 7, 2, 3),
            (2, 16, 9, 40, 5, 1, 2),
            (1, 8, 12, 11, 5, 3, 0),
            // 3x3 stride 2 (ResNet's downsampling convs: 56 -> 28, and 7 wide), stride 1.
            (16, 8, 56, 56, 3, 2, 1),
            (5, 16, 14, 13, 3, 2, 1),
            (4, 8, 10, 13, 3, 1, 0),
        ];
        for (case, &(c, k, h, w, ks, s, p)) in cases.iter().enumerate() {
            let mut next = random(case as u64 + 5);
            let (out_h, out_w) = ((h + 2 * p - ks) / s + 1, (w + 2 * p - ks) / s + 1);
            let kernel = rounded::<T>(&(0..k * c * ks * ks).map(|_| next()).collect::<Vec<_>>());
            let bias = rounded::<T>(&(0..k).map(|_| next()).collect::<Vec<_>>());
            let x = rounded::<T>(&(0..c * h * w).map(|_| next()).collect::<Vec<_>>());
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
            let conv = new(g, k, true, &kernel, &bias, epilogue);
            let input = Tensor::from_shape(&[1, c, h, w], &x).unwrap().cast_to::<T>().unwrap().into_owned();
            let input = tvec![input.into_tvalue()];
            let ctx = EvalContext::out_of_plan();
            let one = conv.eval(&ctx, input.clone()).unwrap();
            let two = multithread_tract_scope(Executor::multithread(2), || {
                conv.eval(&ctx, input.clone()).unwrap()
            });
            assert_eq!(one, two, "case {case}: threads differ");
            assert_eq!(one[0].datum_type(), T::datum_type());
            let got = one[0].cast_to::<f64>().unwrap();
            let got = got.try_as_plain_ram().unwrap().as_slice::<f64>().unwrap();
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
                        let g = got[(o * out_h + y) * out_w + xo];
                        assert!(
                            (g - sum).abs() <= tolerance * scale.max(1e-3),
                            "case {case} channel {o} at ({y}, {xo}): {g} vs {sum}"
                        );
                    }
                }
            }
        }
    }
}
