//! Our own CPU convolution.
//!
//! [`conv2d`] is what the backbones call instead of `Conv2d::forward`. On the Flex backend,
//! for the convolutions the backbones use (f32, no bias, one group, no dilation, symmetric
//! padding) it runs the kernels in [`kernel`], forward and both gradients; anything else
//! (another backend, a bias, groups) goes through burn's own `Conv2d::forward`, which stays
//! the reference the tests compare against. `PRETEXT_CONV=burn` in the environment forces
//! burn's path everywhere, to compare the two on the same build.
//!
//! The weights stay in burn's `Conv2d` module, so checkpoints are the same either way.

pub mod kernel;

use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, Flex, TensorMetadata, backend_extension};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::{DType, Tensor, TensorData};

pub use kernel::Geometry;

use super::{burn_forced, tensor_values};

/// The extension: a bias-free, single-group, undilated 2-D convolution with symmetric padding.
#[backend_extension(Flex, Autodiff)]
pub trait CpuConv: Backend {
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;
}

/// The three kernels a backend needs for [`CpuConv`] under autodiff.
pub trait ConvKernels: Backend {
    fn conv_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        g: Geometry,
    ) -> FloatTensor<Self>;
    fn conv_grad_input(
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        g: Geometry,
    ) -> FloatTensor<Self>;
    fn conv_grad_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        g: Geometry,
    ) -> FloatTensor<Self>;
}

fn geometry(x: &[usize], w: &[usize], stride: [usize; 2], pad: [usize; 2]) -> Geometry {
    Geometry {
        batch: x[0],
        c_in: x[1],
        h: x[2],
        w: x[3],
        c_out: w[0],
        kh: w[2],
        kw: w[3],
        stride,
        pad,
    }
}

/// The geometry of a convolution of Flex tensors `x` by `weight`.
fn flex_geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    pad: [usize; 2],
) -> Geometry {
    geometry(
        &x.shape().dims::<4>(),
        &weight.shape().dims::<4>(),
        stride,
        pad,
    )
}

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl ConvKernels for Flex {
    fn conv_forward(x: FlexTensor, weight: FlexTensor, g: Geometry) -> FlexTensor {
        let y = kernel::forward(&tensor_values(&x), &tensor_values(&weight), &g);
        tensor(y, [g.batch, g.c_out, g.out_h(), g.out_w()])
    }
    fn conv_grad_input(weight: FlexTensor, dy: FlexTensor, g: Geometry) -> FlexTensor {
        let dx = kernel::grad_input(&tensor_values(&weight), &tensor_values(&dy), &g);
        tensor(dx, [g.batch, g.c_in, g.h, g.w])
    }
    fn conv_grad_weight(x: FlexTensor, dy: FlexTensor, g: Geometry) -> FlexTensor {
        let dw = kernel::grad_weight(&tensor_values(&x), &tensor_values(&dy), &g);
        tensor(dw, [g.c_out, g.c_in, g.kh, g.kw])
    }
}

impl CpuConv for Flex {
    fn cpu_conv2d(
        x: FlexTensor,
        weight: FlexTensor,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FlexTensor {
        let g = flex_geometry(&x, &weight, [stride_h, stride_w], [pad_h, pad_w]);
        Self::conv_forward(x, weight, g)
    }
}

impl<B: ConvKernels, C: CheckpointStrategy> CpuConv for Autodiff<B, C> {
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvBackward;

        impl<B: ConvKernels> Backward<B, 2> for ConvBackward {
            type State = (NodeId, NodeId, Geometry);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_w] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x_state, w_state, g) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                let weight: FloatTensor<B> = checkpointer.retrieve_node_output(w_state);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::conv_grad_input(weight, dy.clone(), g));
                }
                if let Some(node) = node_w {
                    grads.register::<B>(node.id, B::conv_grad_weight(x, dy, g));
                }
            }
        }

        let g = geometry(
            &x.primitive().shape().dims::<4>(),
            &weight.primitive().shape().dims::<4>(),
            [stride_h, stride_w],
            [pad_h, pad_w],
        );
        match ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let w_state = prep.checkpoint(&weight);
                let y = B::conv_forward(x.into_primitive(), weight.into_primitive(), g);
                prep.finish((x_state, w_state, g), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv_forward(
                x.into_primitive(),
                weight.into_primitive(),
                g,
            )),
        }
    }
}

/// Inference only: a convolution and the batch norm (+ ReLU) after it in one pass per image
/// (see [`kernel::forward_affine`]).
#[backend_extension(Flex)]
pub trait CpuConvBnEval: Backend {
    #[allow(clippy::too_many_arguments)]
    fn cpu_conv_bn_eval(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;
}

impl CpuConvBnEval for Flex {
    fn cpu_conv_bn_eval(
        x: FlexTensor,
        weight: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        relu: bool,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FlexTensor {
        let g = flex_geometry(&x, &weight, [stride_h, stride_w], [pad_h, pad_w]);
        let stats = [&gamma, &beta, &mean, &var].map(tensor_values);
        let stats = [&*stats[0], &*stats[1], &*stats[2], &*stats[3]];
        let y = kernel::forward_affine(
            &tensor_values(&x),
            &tensor_values(&weight),
            &g,
            |o| super::batch_norm::kernel::affine(stats, epsilon, o),
            relu,
        );
        tensor(y, [g.batch, g.c_out, g.out_h(), g.out_w()])
    }
}

/// `bn(conv(x))`, then ReLU if `relu`: fused on our kernels when both would run on them in
/// inference mode, else [`conv2d`] then [`super::batch_norm`].
pub fn conv_bn(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    if let Some((stride, pad)) = fused_path(conv, bn, &x) {
        let [running_mean, running_var] = super::batch_norm::running_stats(bn, &x.device());
        return Tensor::from_dispatch(Dispatch::cpu_conv_bn_eval(
            x.into_dispatch(),
            conv.weight.val().into_dispatch(),
            bn.gamma.val().into_dispatch(),
            bn.beta.val().into_dispatch(),
            running_mean.into_dispatch(),
            running_var.into_dispatch(),
            bn.epsilon,
            relu,
            stride[0],
            stride[1],
            pad[0],
            pad[1],
        ));
    }
    super::batch_norm(bn, conv2d(conv, x), relu)
}

/// Stride and padding when [`conv_bn`] runs fused: our convolution, batch norm in inference.
fn fused_path(conv: &Conv2d, bn: &BatchNorm, x: &Tensor<4>) -> Option<([usize; 2], [usize; 2])> {
    // The FLOP trace counts convolutions in `conv2d`; a traced pass takes the unfused path.
    if super::flops::tracing() || !super::batch_norm::in_inference(bn, x) {
        return None;
    }
    fast_path(conv, x)
}

/// Stride and symmetric padding when our kernels can run this convolution on this input.
fn fast_path(conv: &Conv2d, x: &Tensor<4>) -> Option<([usize; 2], [usize; 2])> {
    if burn_forced()
        || conv.bias.is_some()
        || conv.groups != 1
        || conv.dilation != [1, 1]
        || x.dtype() != DType::F32
    {
        return None;
    }
    if !matches!(x.device().inner().as_dispatch(), DispatchDevice::Flex(_)) {
        return None;
    }
    let pad = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    let g = geometry(&x.dims(), &conv.weight.dims(), conv.stride, pad);
    // A kernel larger than the padded input has no output position: burn's path says so,
    // where our output size would wrap around.
    (x.dims()[1] == conv.weight.dims()[1] && g.valid()).then_some((conv.stride, pad))
}

/// `conv.forward(x)`, on our kernels where they apply (see the module docs).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if super::flops::tracing() {
        let tracked = x.is_tracked();
        let y = conv2d_untraced(conv, x);
        let [n, c_out, oh, ow] = y.dims();
        let [_, c_in_per_group, kh, kw] = conv.weight.dims();
        super::flops::record(super::flops::ConvShape {
            macs: (n * c_out * oh * ow * c_in_per_group * kh * kw) as u64,
            input_tracked: tracked,
        });
        return y;
    }
    conv2d_untraced(conv, x)
}

fn conv2d_untraced(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match fast_path(conv, &x) {
        Some((stride, pad)) => Tensor::from_dispatch(Dispatch::cpu_conv2d(
            x.into_dispatch(),
            conv.weight.val().into_dispatch(),
            stride[0],
            stride[1],
            pad[0],
            pad[1],
        )),
        None => conv.forward(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::rel_err;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution};

    /// Our forward and both gradients against burn's own convolution on random inputs.
    #[test]
    fn matches_burn_forward_and_gradients() {
        let dev = Device::flex().autodiff();
        dev.seed(7);
        // (c_in, c_out, kernel, stride, pad, side, batch)
        let cases = [
            (3, 8, 1, 1, 0, 9, 4),
            (5, 7, 1, 2, 0, 9, 3),
            (4, 6, 3, 1, 1, 8, 5),
            (4, 6, 3, 2, 1, 9, 2),
            (3, 5, 5, 1, 2, 8, 3),
            (6, 4, 5, 2, 2, 11, 1),
            (2, 3, 3, 1, 0, 7, 1),
        ];
        for (ci, co, k, s, p, side, n) in cases {
            check_against_burn(&dev, [ci, co], [k, k], [s, s], [p, p], [side, side], n);
        }
    }

    /// Forward, input gradient and weight gradient of one convolution, ours against burn's.
    fn check_against_burn(
        dev: &Device,
        [ci, co]: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        [ph, pw]: [usize; 2],
        [h, w]: [usize; 2],
        n: usize,
    ) {
        let conv = Conv2dConfig::new([ci, co], kernel)
            .with_stride(stride)
            .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
            .with_bias(false)
            .init(dev);
        let x =
            Tensor::<4>::random([n, ci, h, w], Distribution::Normal(0.0, 1.0), dev).require_grad();
        let what = format!("{ci}->{co} k{kernel:?} s{stride:?} p{ph},{pw} {h}×{w} n{n}");
        assert!(fast_path(&conv, &x).is_some(), "{what}: not on our path");
        let y_ours = conv2d(&conv, x.clone());
        let y_burn = conv.forward(x.clone());
        assert_eq!(y_ours.dims(), y_burn.dims(), "{what}");
        let e = rel_err(y_ours.clone(), y_burn.clone());
        assert!(e < 1e-4, "forward {what}: {e}");
        // A random upstream gradient, the same for both.
        let r = Tensor::<4>::random(y_burn.dims(), Distribution::Normal(0.0, 1.0), dev);
        let g_ours = (y_ours * r.clone()).sum().backward();
        let g_burn = (y_burn * r).sum().backward();
        let dx = rel_err(x.grad(&g_ours).unwrap(), x.grad(&g_burn).unwrap());
        assert!(dx < 1e-4, "input gradient {what}: {dx}");
        let wt = conv.weight.val();
        let dw = rel_err(wt.grad(&g_ours).unwrap(), wt.grad(&g_burn).unwrap());
        assert!(dw < 1e-4, "weight gradient {what}: {dw}");
    }

    /// With more images than threads, the batch is split into one slice per thread (each
    /// with its own weight-gradient partial sum): that branch, with non-square kernels,
    /// strides, paddings and images, under pools of 2 and 3 threads.
    #[test]
    fn matches_burn_with_more_images_than_threads_and_non_square_kernels() {
        let dev = Device::flex().autodiff();
        dev.seed(11);
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                assert_eq!(rayon::current_num_threads(), threads);
                check_against_burn(&dev, [3, 5], [3, 1], [1, 1], [1, 0], [9, 7], 7);
                check_against_burn(&dev, [4, 6], [1, 5], [2, 1], [0, 2], [8, 11], 8);
                check_against_burn(&dev, [2, 4], [2, 3], [1, 2], [1, 1], [6, 9], 5);
                check_against_burn(&dev, [6, 3], [1, 1], [1, 1], [0, 0], [5, 5], 9);
            });
        }
    }

    /// A strided view (here a transposed one) as input is read in its logical order.
    #[test]
    fn a_non_contiguous_input_is_read_in_order() {
        let dev = Device::flex();
        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&dev);
        let x =
            Tensor::<4>::random([2, 3, 6, 5], Distribution::Normal(0.0, 1.0), &dev).swap_dims(2, 3);
        assert!(fast_path(&conv, &x).is_some());
        let e = rel_err(conv2d(&conv, x.clone()), conv.forward(x));
        assert!(e < 1e-4, "{e}");
    }

    /// Inference: the fused convolution + batch norm (+ ReLU) gives exactly what the two
    /// kernels give one after the other, and matches burn's modules; with more images than
    /// threads (parallel over images) and a single image (the GEMM parallel), 1×1 and strided
    /// 5×5 geometries, running statistics moved away from 0/1 by a few training steps.
    #[test]
    fn fused_inference_matches_the_two_kernels_and_burn() {
        use burn::module::Module;
        use burn::nn::BatchNormConfig;
        use burn::tensor::activation::relu as relu_op;
        let train = Device::flex().autodiff();
        train.seed(13);
        // (c_in, c_out, kernel, stride, pad, side, batch)
        for (ci, co, k, s, p, side, n) in [(3, 5, 5, 2, 2, 9, 5), (4, 6, 1, 1, 0, 7, 1)] {
            let bn = BatchNormConfig::new(co).init(&train);
            for _ in 0..3 {
                let y = Tensor::<4>::random([4, co, 3, 3], Distribution::Normal(1.0, 2.0), &train);
                let _ = crate::cpu::batch_norm(&bn, y, false);
            }
            let dev = Device::flex();
            let bn = bn.valid();
            let conv = Conv2dConfig::new([ci, co], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init(&dev);
            let x = Tensor::<4>::random([n, ci, side, side], Distribution::Normal(0.0, 1.0), &dev);
            assert!(fused_path(&conv, &bn, &x).is_some());
            for relu in [false, true] {
                let what = format!("{ci}->{co} k{k} s{s} p{p} n{n} relu={relu}");
                let fused = conv_bn(&conv, &bn, x.clone(), relu);
                let apart = crate::cpu::batch_norm(&bn, conv2d(&conv, x.clone()), relu);
                assert_eq!(
                    fused.to_data().try_to_vec::<f32>().unwrap(),
                    apart.to_data().try_to_vec::<f32>().unwrap(),
                    "{what}"
                );
                let theirs = bn.forward(conv.forward(x.clone()));
                let theirs = if relu { relu_op(theirs) } else { theirs };
                let e = rel_err(fused, theirs);
                assert!(e < 1e-4, "{what}: {e}");
            }
        }
    }

    #[test]
    fn a_bias_or_groups_take_burns_path() {
        let dev = Device::flex();
        let x = Tensor::<4>::ones([1, 4, 5, 5], &dev);
        let with_bias = Conv2dConfig::new([4, 2], [3, 3]).init(&dev);
        assert!(fast_path(&with_bias, &x).is_none());
        let grouped = Conv2dConfig::new([4, 2], [3, 3])
            .with_groups(2)
            .with_bias(false)
            .init(&dev);
        assert!(fast_path(&grouped, &x).is_none());
        let plain = Conv2dConfig::new([4, 2], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&dev);
        assert_eq!(fast_path(&plain, &x), Some(([1, 1], [1, 1])));
        // 6×6 kernel on a 5×5 image without padding: no output position, burn's path.
        let too_large = Conv2dConfig::new([4, 2], [6, 6])
            .with_bias(false)
            .init(&dev);
        assert!(fast_path(&too_large, &x).is_none());
    }
}
