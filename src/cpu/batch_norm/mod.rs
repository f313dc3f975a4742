//! Training-mode batch norm (+ ReLU) on our kernels, registered like the convolution.
//!
//! [`batch_norm`] replaces `BatchNorm::forward` (and the ReLU after it) where the module is
//! training on an autodiff Flex device; it updates the running statistics exactly as burn's
//! module does. Inference, other backends and `PRETEXT_CONV=burn` use burn's module.

pub mod kernel;

use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Backend, Dispatch, DispatchDevice, ExtensionType, Flex, TensorMetadata, backend_extension,
};
use burn::nn::BatchNorm;
use burn::tensor::activation::relu as relu_op;
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::{burn_forced, tensor_values};
use kernel::Planes;

/// The normalized output and the batch statistics (mean, biased variance) per channel.
#[derive(ExtensionType)]
pub struct BnTrain<B: Backend> {
    pub output: FloatTensor<B>,
    pub mean: FloatTensor<B>,
    pub var: FloatTensor<B>,
}

#[backend_extension(Flex, Autodiff)]
pub trait CpuBatchNorm: Backend {
    fn cpu_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> BnTrain<Self>;
}

/// Inference-mode batch norm (+ ReLU) with the running statistics: one pass instead of
/// burn's five (subtract, divide, multiply, add, ReLU), used when extracting features.
#[backend_extension(Flex)]
pub trait CpuBatchNormEval: Backend {
    fn cpu_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self>;
}

impl CpuBatchNormEval for Flex {
    fn cpu_batch_norm_eval(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> FlexTensor {
        let y = kernel::normalize(
            &tensor_values(&x),
            planes(&x),
            [
                &tensor_values(&gamma),
                &tensor_values(&beta),
                &tensor_values(&mean),
                &tensor_values(&var),
            ],
            epsilon,
            relu,
        );
        tensor(y, x.shape().to_vec())
    }
}

/// The backward kernel a backend needs for [`CpuBatchNorm`] under autodiff.
pub trait BnKernels: CpuBatchNorm {
    /// `(dx, dγ, dβ)`; `beta` is given when the forward ended in ReLU (its mask is found
    /// again from `x`, γ, β and the statistics).
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> [FloatTensor<Self>; 3];
}

fn planes(x: &FlexTensor) -> Planes {
    let dims = x.shape().to_vec();
    Planes {
        n: dims[0],
        c: dims[1],
        hw: dims[2..].iter().product(),
    }
}

fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl CpuBatchNorm for Flex {
    fn cpu_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> BnTrain<Self> {
        let p = planes(&x);
        let xv = tensor_values(&x);
        let (mean, var) = kernel::stats(&xv, p);
        let y = kernel::normalize(
            &xv,
            p,
            [&tensor_values(&gamma), &tensor_values(&beta), &mean, &var],
            epsilon,
            relu,
        );
        BnTrain {
            output: tensor(y, x.shape().to_vec()),
            mean: tensor(mean, vec![p.c]),
            var: tensor(var, vec![p.c]),
        }
    }
}

impl BnKernels for Flex {
    fn bn_backward(
        x: FlexTensor,
        dy: FlexTensor,
        gamma: FlexTensor,
        beta: Option<FlexTensor>,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
    ) -> [FlexTensor; 3] {
        let p = planes(&x);
        let beta = beta.as_ref().map(tensor_values);
        let (dx, dg, db) = kernel::backward(
            &tensor_values(&x),
            &tensor_values(&dy),
            p,
            [
                &tensor_values(&gamma),
                &tensor_values(&mean),
                &tensor_values(&var),
            ],
            beta.as_deref(),
            epsilon,
        );
        [
            tensor(dx, x.shape().to_vec()),
            tensor(dg, vec![p.c]),
            tensor(db, vec![p.c]),
        ]
    }
}

impl<B: BnKernels, C: CheckpointStrategy> CpuBatchNorm for Autodiff<B, C> {
    fn cpu_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> BnTrain<Self> {
        #[derive(Debug)]
        struct BnBackward;

        impl<B: BnKernels> Backward<B, 3> for BnBackward {
            /// x, γ, then β where ReLU follows (its mask is found again from them), mean,
            /// variance, ε.
            type State = (
                NodeId,
                NodeId,
                Option<NodeId>,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x_state, gamma_state, beta_state, mean, var, epsilon) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(gamma_state);
                let beta: Option<FloatTensor<B>> =
                    beta_state.map(|s| checkpointer.retrieve_node_output(s));
                let [dx, dgamma, dbeta] = B::bn_backward(x, dy, gamma, beta, mean, var, epsilon);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_gamma {
                    grads.register::<B>(node.id, dgamma);
                }
                if let Some(node) = node_beta {
                    grads.register::<B>(node.id, dbeta);
                }
            }
        }

        let prepared = BnBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        // The statistics leave as constants: burn's module detaches them too.
        let constant = <FloatTensor<Self>>::new;
        match prepared {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let beta_state = relu.then(|| prep.checkpoint(&beta));
                let r = B::cpu_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                    relu,
                );
                let state = (
                    x_state,
                    gamma_state,
                    beta_state,
                    r.mean.clone(),
                    r.var.clone(),
                    epsilon,
                );
                BnTrain {
                    output: prep.finish(state, r.output),
                    mean: constant(r.mean),
                    var: constant(r.var),
                }
            }
            OpsKind::UnTracked(prep) => {
                let r = B::cpu_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                    relu,
                );
                BnTrain {
                    output: prep.finish(r.output),
                    mean: constant(r.mean),
                    var: constant(r.var),
                }
            }
        }
    }
}

/// Which of our kernels, if any, this module takes on this input.
#[derive(Debug, PartialEq, Eq)]
enum Path {
    Burn,
    Train,
    Eval,
}

fn path(bn: &BatchNorm, x: &Tensor<4>) -> Path {
    let dev = x.device();
    if burn_forced()
        || x.dtype() != DType::F32
        || !matches!(dev.clone().inner().as_dispatch(), DispatchDevice::Flex(_))
    {
        return Path::Burn;
    }
    match (dev.is_autodiff(), bn.training.is_enabled()) {
        (true, true) => Path::Train,
        // Frozen on a training device: burn's module, which keeps the graph.
        (true, false) => Path::Burn,
        (false, _) => Path::Eval,
    }
}

/// Whether `bn` on `x` runs our inference kernel (running statistics, no autodiff).
pub(crate) fn in_inference(bn: &BatchNorm, x: &Tensor<4>) -> bool {
    matches!(path(bn, x), Path::Eval)
}

/// The running mean and variance on `device`, for the inference kernels.
pub(crate) fn running_stats(bn: &BatchNorm, device: &Device) -> [Tensor<1>; 2] {
    [
        bn.running_mean.value().to_device(device),
        bn.running_var.value().to_device(device),
    ]
}

/// `bn.forward(x)`, followed by ReLU if `relu`; on our kernels on Flex.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>, relu: bool) -> Tensor<4> {
    match path(bn, &x) {
        Path::Burn => {
            let y = bn.forward(x);
            return if relu { relu_op(y) } else { y };
        }
        Path::Eval => {
            let [running_mean, running_var] = running_stats(bn, &x.device());
            return Tensor::from_dispatch(Dispatch::cpu_batch_norm_eval(
                x.into_dispatch(),
                bn.gamma.val().into_dispatch(),
                bn.beta.val().into_dispatch(),
                running_mean.into_dispatch(),
                running_var.into_dispatch(),
                bn.epsilon,
                relu,
            ));
        }
        Path::Train => {}
    }
    let device = x.device();
    let r = Dispatch::cpu_batch_norm_train(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        bn.epsilon,
        relu,
    );
    let (mean, var) = (
        Tensor::<1>::from_dispatch(r.mean),
        Tensor::<1>::from_dispatch(r.var),
    );
    // The same update as burn's `BatchNorm::forward_train`.
    let momentum = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(
        running_mean
            .mul_scalar(1.0 - momentum)
            .add(mean.detach().mul_scalar(momentum))
            .detach(),
    );
    bn.running_var.update(
        running_var
            .mul_scalar(1.0 - momentum)
            .add(var.detach().mul_scalar(momentum))
            .detach(),
    );
    Tensor::from_dispatch(r.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::rel_err;
    use burn::module::{Module, Param};
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Distribution};

    /// Output, gradients (x, γ, β) and running statistics against burn's BatchNorm (+ ReLU).
    #[test]
    fn matches_burns_batch_norm() {
        let dev = Device::flex().autodiff();
        dev.seed(3);
        for relu in [false, true] {
            // (9, 3, 3): more images than this machine has threads.
            for (n, c, side) in [(4, 3, 5), (2, 8, 7), (1, 2, 4), (9, 3, 3)] {
                // Two modules with the same non-trivial γ, β, so that their gradients matter.
                let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &dev);
                let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &dev);
                let make = || BatchNorm {
                    gamma: Param::from_tensor(gamma.clone()),
                    beta: Param::from_tensor(beta.clone()),
                    ..BatchNormConfig::new(c).init(&dev)
                };
                let (ours, theirs) = (make(), make());
                let x =
                    Tensor::<4>::random([n, c, side, side], Distribution::Normal(2.0, 3.0), &dev)
                        .require_grad();
                assert_eq!(path(&ours, &x), Path::Train);
                let y_ours = batch_norm(&ours, x.clone(), relu);
                let y_burn = {
                    let y = theirs.forward(x.clone());
                    if relu { relu_op(y) } else { y }
                };
                let what = format!("n{n} c{c} {side}px relu={relu}");
                assert!(
                    rel_err(y_ours.clone(), y_burn.clone()) < 1e-4,
                    "output {what}"
                );
                let r = Tensor::<4>::random(y_burn.dims(), Distribution::Normal(0.0, 1.0), &dev);
                let g_ours = (y_ours * r.clone()).sum().backward();
                let g_burn = (y_burn * r).sum().backward();
                let e = rel_err(x.grad(&g_ours).unwrap(), x.grad(&g_burn).unwrap());
                assert!(e < 1e-4, "dx {what}: {e}");
                for (name, p_ours, p_burn) in [
                    ("gamma", &ours.gamma, &theirs.gamma),
                    ("beta", &ours.beta, &theirs.beta),
                ] {
                    let a = p_ours.val().grad(&g_ours).unwrap();
                    let b = p_burn.val().grad(&g_burn).unwrap();
                    let e = rel_err(a, b);
                    assert!(e < 1e-4, "d{name} {what}: {e}");
                }
                for (a, b) in [
                    (ours.running_mean.value(), theirs.running_mean.value()),
                    (ours.running_var.value(), theirs.running_var.value()),
                ] {
                    assert!(rel_err(a, b) < 1e-5, "running statistics {what}");
                }
            }
        }
    }

    /// Inference with running statistics (after a few training steps moved them) against
    /// burn's module, with and without ReLU.
    #[test]
    fn inference_matches_burns_batch_norm() {
        let train = Device::flex().autodiff();
        train.seed(5);
        let bn = BatchNormConfig::new(4).init(&train);
        for _ in 0..3 {
            let x = Tensor::<4>::random([3, 4, 5, 5], Distribution::Normal(1.0, 2.0), &train);
            let _ = batch_norm(&bn, x, true);
        }
        let bn = bn.valid();
        let dev = Device::flex();
        let x = Tensor::<4>::random([2, 4, 6, 6], Distribution::Normal(1.0, 2.0), &dev);
        assert_eq!(path(&bn, &x), Path::Eval);
        for relu in [false, true] {
            let ours = batch_norm(&bn, x.clone(), relu);
            let theirs = if relu {
                relu_op(bn.forward(x.clone()))
            } else {
                bn.forward(x.clone())
            };
            assert!(rel_err(ours, theirs) < 1e-5, "relu={relu}");
        }
    }

    #[test]
    fn a_frozen_layer_on_a_training_device_takes_burns_path() {
        let dev = Device::flex().autodiff();
        let bn = BatchNormConfig::new(3).init(&dev).freeze();
        let x = Tensor::<4>::ones([1, 3, 2, 2], &dev);
        assert_eq!(path(&bn, &x), Path::Burn);
    }
}
