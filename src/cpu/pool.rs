//! Our own CPU max and average pooling (2-D, NCHW, floor mode), forward and backward.
//!
//! burn's Flex pooling is written for 3-D windows with dilation and keeps the max-pool's
//! argmax as an index tensor that its backward scatters through; in a NIN-96 training step
//! its forward and backward were ~12% of all samples (`BENCHMARKS.md`), more than all batch
//! norms together. Here each `[h, w]` plane is pooled by one worker into its own output plane
//! (written once, see [`super::fill`]), and the max-pool's backward finds each window's
//! maximum again in the input, which autodiff keeps anyway, instead of storing indices.
//!
//! The semantics are burn's (and PyTorch's): padding is never the maximum (the window is
//! clipped to the image), a NaN in a window wins (the last one), ties keep the first maximum
//! in row-major order; the average divides by the window's size inside the padded image
//! (`count_include_pad`), so a border window over the padding divides by the full `k·k`.
//! [`max_pool2d`]/[`avg_pool2d`] take burn's own modules' path on any other backend and when
//! `PRETEXT_CONV=burn`; the tests check the two against each other.

use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::{AvgPool2dConfig, MaxPool2dConfig};
use burn::tensor::{DType, Tensor, TensorData};

use super::fill;
use super::{burn_forced, tensor_values};

/// Shapes and hyper-parameters of one pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Planes: batch × channels.
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
}

impl Window {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad[0] - self.k[0]) / self.stride[0] + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad[1] - self.k[1]) / self.stride[1] + 1
    }
    /// The input rows (`axis` 0) or columns (1) under output position `o`, clipped to the
    /// image, and the window's extent inside the padded image (the average's divisor).
    fn span(&self, axis: usize, o: usize) -> (usize, usize, usize) {
        let (size, k, s, p) = (
            [self.h, self.w][axis],
            self.k[axis],
            self.stride[axis],
            self.pad[axis],
        );
        let lo = (o * s) as isize - p as isize;
        let hi = lo + k as isize;
        let padded = (hi.min((size + p) as isize) - lo) as usize;
        (
            lo.max(0) as usize,
            hi.clamp(0, size as isize) as usize,
            padded,
        )
    }
    /// Whether the shapes describe a pooling with at least one output position per plane and
    /// a window that never lies wholly in the padding (burn and PyTorch require `pad ≤ k/2`).
    pub fn valid(&self) -> bool {
        self.k[0] > 0
            && self.k[1] > 0
            && self.stride[0] > 0
            && self.stride[1] > 0
            && 2 * self.pad[0] <= self.k[0]
            && 2 * self.pad[1] <= self.k[1]
            && self.h + 2 * self.pad[0] >= self.k[0]
            && self.w + 2 * self.pad[1] >= self.k[1]
    }
}

/// Per output position along one axis: the clipped input range and the divisor's extent
/// (see [`Window::span`]), worked out once per call rather than once per window.
fn spans(g: &Window, axis: usize) -> Vec<(usize, usize, usize)> {
    let n = [g.out_h(), g.out_w()][axis];
    (0..n).map(|o| g.span(axis, o)).collect()
}

/// `a` unless `b` is larger, a NaN in either wins: the max-pool's order, without a branch
/// (a select the compiler vectorises).
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

/// The position (in the plane) of the window's maximum: the last NaN if there is one, else
/// the first of the largest values. Selects rather than branches: on real activations the
/// comparison is a coin toss the branch predictor loses.
#[inline(always)]
fn argmax(plane: &[f32], w: usize, (y0, y1): (usize, usize), (x0, x1): (usize, usize)) -> usize {
    let mut best = y0 * w + x0;
    let mut m = plane[best];
    for y in y0..y1 {
        let row = &plane[y * w + x0..y * w + x1];
        for (j, &v) in row.iter().enumerate() {
            let take = v > m || v.is_nan();
            m = if take { v } else { m };
            best = if take { y * w + x0 + j } else { best };
        }
    }
    best
}

/// Max (`max`) or average pooling of `x` `[planes, h, w]` → `[planes, oh, ow]`. Separable:
/// for each output row the window's rows are first reduced column by column (contiguous, so
/// vectorised), then each output reduces its few columns of that.
pub fn forward(x: &[f32], g: &Window, max: bool) -> Vec<f32> {
    assert!(g.valid(), "{g:?}");
    assert_eq!(x.len(), g.planes * g.h * g.w);
    let (oh, ow, w) = (g.out_h(), g.out_w(), g.w);
    let (rows, cols) = (spans(g, 0), spans(g, 1));
    let init = || (Vec::with_capacity(w), Vec::with_capacity(oh * ow));
    fill::build(
        g.planes * oh * ow,
        oh * ow,
        true,
        init,
        |(col, out_plane), i, out| {
            let plane = &x[i * g.h * w..(i + 1) * g.h * w];
            out_plane.clear();
            for &(y0, y1, py) in &rows {
                col.clear();
                col.extend_from_slice(&plane[y0 * w..(y0 + 1) * w]);
                for y in y0 + 1..y1 {
                    let r = &plane[y * w..(y + 1) * w];
                    if max {
                        col.iter_mut()
                            .zip(r)
                            .for_each(|(c, &v)| *c = nan_max(*c, v));
                    } else {
                        col.iter_mut().zip(r).for_each(|(c, &v)| *c += v);
                    }
                }
                out_plane.extend(cols.iter().map(|&(x0, x1, px)| {
                    let c = &col[x0..x1];
                    if max {
                        c[1..].iter().fold(c[0], |m, &v| nan_max(m, v))
                    } else {
                        c.iter().sum::<f32>() / (py * px) as f32
                    }
                }));
            }
            out.map(out_plane, |v| v)
        },
    )
}

/// The input gradient of [`forward`] from `dy` `[planes, oh, ow]`; the max-pool's needs the
/// input `x` (its windows' maxima are found again), the average's only the shapes.
pub fn backward(x: Option<&[f32]>, dy: &[f32], g: &Window) -> Vec<f32> {
    assert!(g.valid(), "{g:?}");
    let (oh, ow, w, hw) = (g.out_h(), g.out_w(), g.w, g.h * g.w);
    assert_eq!(dy.len(), g.planes * oh * ow);
    if let Some(x) = x {
        assert_eq!(x.len(), g.planes * hw);
    }
    let (rows, cols) = (spans(g, 0), spans(g, 1));
    let init = || Vec::with_capacity(w);
    fill::build(g.planes * hw, hw, true, init, |spread, i, dx| {
        let (dx, written) = dx.zeroed();
        let dy = &dy[i * oh * ow..(i + 1) * oh * ow];
        for (oy, &(y0, y1, py)) in rows.iter().enumerate() {
            let dy = &dy[oy * ow..(oy + 1) * ow];
            match x {
                Some(x) => {
                    let plane = &x[i * hw..(i + 1) * hw];
                    for (&d, &(x0, x1, _)) in dy.iter().zip(&cols) {
                        dx[argmax(plane, w, (y0, y1), (x0, x1))] += d;
                    }
                }
                None => {
                    // The row's gradients spread over their columns, then added to each
                    // of the window's rows (separable, like the forward).
                    spread.clear();
                    spread.resize(w, 0.0);
                    for (&d, &(x0, x1, px)) in dy.iter().zip(&cols) {
                        let d = d / (py * px) as f32;
                        spread[x0..x1].iter_mut().for_each(|v| *v += d);
                    }
                    for y in y0..y1 {
                        let r = &mut dx[y * w..(y + 1) * w];
                        r.iter_mut().zip(spread.iter()).for_each(|(a, &b)| *a += b);
                    }
                }
            }
        }
        written
    })
}

/// The extension: max (`max`) or average 2-D pooling in floor mode.
#[backend_extension(Flex, Autodiff)]
pub trait CpuPool: Backend {
    fn cpu_pool2d(
        x: FloatTensor<Self>,
        max: bool,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self>;
}

/// The two kernels a backend needs for [`CpuPool`] under autodiff.
pub trait PoolKernels: Backend {
    fn pool_forward(x: FloatTensor<Self>, g: Window, max: bool) -> FloatTensor<Self>;
    fn pool_backward(
        x: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
        g: Window,
    ) -> FloatTensor<Self>;
}

/// A square window over the planes of `x` `[n, c, h, w]`.
fn window(x: &[usize], k: usize, stride: usize, pad: usize) -> Window {
    Window {
        planes: x[0] * x[1],
        h: x[2],
        w: x[3],
        k: [k, k],
        stride: [stride, stride],
        pad: [pad, pad],
    }
}

impl PoolKernels for Flex {
    fn pool_forward(x: FlexTensor, g: Window, max: bool) -> FlexTensor {
        let [n, c, ..] = x.shape().dims::<4>();
        let y = forward(&tensor_values(&x), &g, max);
        FlexTensor::from_data(TensorData::new(y, [n, c, g.out_h(), g.out_w()]))
    }
    fn pool_backward(x: Option<FlexTensor>, dy: FlexTensor, g: Window) -> FlexTensor {
        let [n, c, ..] = dy.shape().dims::<4>();
        let x = x.as_ref().map(tensor_values);
        let dx = backward(x.as_deref(), &tensor_values(&dy), &g);
        FlexTensor::from_data(TensorData::new(dx, [n, c, g.h, g.w]))
    }
}

impl CpuPool for Flex {
    fn cpu_pool2d(x: FlexTensor, max: bool, k: usize, stride: usize, pad: usize) -> FlexTensor {
        let g = window(&x.shape().dims::<4>(), k, stride, pad);
        Self::pool_forward(x, g, max)
    }
}

impl<B: PoolKernels, C: CheckpointStrategy> CpuPool for Autodiff<B, C> {
    fn cpu_pool2d(
        x: FloatTensor<Self>,
        max: bool,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct PoolBackward;

        impl<B: PoolKernels> Backward<B, 1> for PoolBackward {
            /// The input's checkpoint (max-pooling only) and the shapes.
            type State = (Option<NodeId>, Window);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x_state, g) = ops.state;
                let x: Option<FloatTensor<B>> =
                    x_state.map(|s| checkpointer.retrieve_node_output(s));
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::pool_backward(x, dy, g));
                }
            }
        }

        let g = window(&x.primitive().shape().dims::<4>(), k, stride, pad);
        match PoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = max.then(|| prep.checkpoint(&x));
                let y = B::pool_forward(x.into_primitive(), g, max);
                prep.finish((x_state, g), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::pool_forward(x.into_primitive(), g, max)),
        }
    }
}

/// Whether our kernels run this pooling on this input.
fn fast_path(x: &Tensor<4>, k: usize, s: usize, p: usize) -> bool {
    let [_, _, h, w] = x.dims();
    !burn_forced()
        && x.dtype() == DType::F32
        && matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_))
        && window(&x.dims(), k, s, p).valid()
        && h * w > 0
}

fn pool(x: Tensor<4>, max: bool, k: usize, s: usize, p: usize) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::cpu_pool2d(x.into_dispatch(), max, k, s, p))
}

/// Burn's own pooling modules: the path on other backends, and the tests' reference.
fn burn_pool(x: Tensor<4>, max: bool, k: usize, s: usize, p: usize) -> Tensor<4> {
    let pad = PaddingConfig2d::Explicit(p, p, p, p);
    if max {
        MaxPool2dConfig::new([k, k])
            .with_strides([s, s])
            .with_padding(pad)
            .init()
            .forward(x)
    } else {
        AvgPool2dConfig::new([k, k])
            .with_strides([s, s])
            .with_padding(pad)
            .init()
            .forward(x)
    }
}

/// Max pooling, `k×k` window, stride `s`, padding `p` (burn's `MaxPool2d` semantics).
pub fn max_pool2d(x: Tensor<4>, k: usize, s: usize, p: usize) -> Tensor<4> {
    if fast_path(&x, k, s, p) {
        pool(x, true, k, s, p)
    } else {
        burn_pool(x, true, k, s, p)
    }
}

/// Average pooling, `k×k` window, stride `s`, padding `p`, padding counted in the divisor
/// (burn's `AvgPool2d` default, PyTorch's `count_include_pad=True`).
pub fn avg_pool2d(x: Tensor<4>, k: usize, s: usize, p: usize) -> Tensor<4> {
    if fast_path(&x, k, s, p) {
        pool(x, false, k, s, p)
    } else {
        burn_pool(x, false, k, s, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::rel_err;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn a_known_4x4_plane_by_hand() {
        // 1..16 row-major; 3×3 windows, stride 2, padding 1 → 2×2 outputs. The windows
        // cover rows/cols {0,1}, {1,2,3} (clipped at the top/left padding).
        let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        let g = Window {
            planes: 1,
            h: 4,
            w: 4,
            k: [3, 3],
            stride: [2, 2],
            pad: [1, 1],
        };
        assert_eq!((g.out_h(), g.out_w()), (2, 2));
        // Max: the bottom-right cell of each window: 6, 8, 14, 16.
        assert_eq!(forward(&x, &g, true), [6.0, 8.0, 14.0, 16.0]);
        // Average over 9 (padding counted): (1+2+5+6)/9, (2+3+4+6+7+8)/9,
        // (5+6+9+10+13+14)/9, (6+7+8+10+11+12+14+15+16)/9.
        let avg = forward(&x, &g, false);
        let want = [14.0 / 9.0, 30.0 / 9.0, 57.0 / 9.0, 99.0 / 9.0];
        for (a, b) in avg.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{avg:?}");
        }
        // Max backward: each output's gradient lands on its maximum's cell.
        let dx = backward(Some(&x), &[1.0, 2.0, 3.0, 4.0], &g);
        let mut want = [0.0; 16];
        (want[5], want[7], want[13], want[15]) = (1.0, 2.0, 3.0, 4.0);
        assert_eq!(dx, want);
        // Average backward: cell (1,1) lies in all four windows: (1+2+3+4)/9.
        let dx = backward(None, &[1.0, 2.0, 3.0, 4.0], &g);
        assert!((dx[5] - 10.0 / 9.0).abs() < 1e-6 && (dx[0] - 1.0 / 9.0).abs() < 1e-6);
    }

    #[test]
    fn a_nan_wins_and_ties_keep_the_first() {
        let g = Window {
            planes: 1,
            h: 2,
            w: 2,
            k: [2, 2],
            stride: [2, 2],
            pad: [0, 0],
        };
        assert!(forward(&[1.0, f32::NAN, 3.0, 2.0], &g, true)[0].is_nan());
        assert_eq!(
            backward(Some(&[5.0, 5.0, 1.0, 5.0]), &[1.0], &g),
            [1.0, 0.0, 0.0, 0.0]
        );
    }

    /// Forward and input gradient against burn's modules on random inputs: odd sizes, the
    /// strides and paddings the backbones use and others, more planes than threads; and on
    /// inputs full of ties (after ReLU most of a window is 0, as in the backbones, plus values
    /// rounded to halves), where the max-pool's gradient goes to the tie it picks.
    #[test]
    fn matches_burn_forward_and_gradient() {
        let dev = Device::flex().autodiff();
        dev.seed(5);
        // (kernel, stride, pad, h, w, n, c)
        let cases = [
            (3, 2, 1, 32, 32, 2, 3),
            (3, 2, 1, 9, 7, 3, 2),
            (2, 2, 0, 8, 6, 1, 5),
            (3, 1, 1, 5, 6, 2, 2),
            (3, 3, 0, 10, 11, 1, 3),
            (5, 2, 2, 7, 9, 2, 1),
        ];
        for ((k, s, p, h, w, n, c), ties) in cases.into_iter().flat_map(|c| [(c, false), (c, true)])
        {
            for max in [true, false] {
                let what = format!("max {max} k{k} s{s} p{p} {h}×{w} n{n} c{c} ties {ties}");
                let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &dev);
                let x = if ties {
                    x.mul_scalar(2.0).round().div_scalar(2.0).clamp_min(0.0)
                } else {
                    x
                };
                let x = x.require_grad();
                assert!(fast_path(&x, k, s, p), "{what}");
                let ours = pool(x.clone(), max, k, s, p);
                let theirs = burn_pool(x.clone(), max, k, s, p);
                assert_eq!(ours.dims(), theirs.dims(), "{what}");
                let e = rel_err(ours.clone(), theirs.clone());
                assert!(e < 1e-6, "forward {what}: {e}");
                let r = Tensor::<4>::random(theirs.dims(), Distribution::Normal(0.0, 1.0), &dev);
                let g_ours = (ours * r.clone()).sum().backward();
                let g_burn = (theirs * r).sum().backward();
                let e = rel_err(x.grad(&g_ours).unwrap(), x.grad(&g_burn).unwrap());
                assert!(e < 1e-5, "gradient {what}: {e}");
            }
        }
    }

    #[test]
    fn a_window_wider_than_twice_its_padding_is_required() {
        let dev = Device::flex();
        let x = Tensor::<4>::ones([1, 1, 4, 4], &dev);
        assert!(fast_path(&x, 3, 2, 1));
        assert!(!fast_path(&x, 3, 2, 2));
        assert!(!fast_path(&x, 5, 1, 0));
    }
}
