//! Arithmetic of a network counted from its layer shapes, for `pretext bench`'s roofline
//! figure: how many floating-point operations a training step or an inference pass does,
//! so that a measured time becomes GFLOP/s beside the machine's GEMM peak.
//!
//! Every convolution of the backbones goes through [`super::conv2d`], which reports its
//! shape here while a [`trace`] is running on the calling thread (otherwise it costs one
//! thread-local read). Only convolutions are counted: they are the GEMMs. Batch norm,
//! ReLU, pooling, the linear head and the optimizer step do few operations per byte and are
//! left out. Taps that read only padding at every output position are counted, though the
//! forward on our kernels skips them (`conv::kernel::cropped`): on 1×1 planes (ResNet-18's
//! and ResNet-50's last stage on 32-pixel inputs) the count exceeds the work the forward
//! does, by about 19% of ResNet-18's forward at 32 pixels, and GFLOP/s there are effective
//! rates.

use std::cell::RefCell;

/// One convolution as a trace saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Multiply-adds of the forward pass: batch × c_out × out_h × out_w × c_in/groups × kh × kw.
    pub macs: u64,
    /// Whether its input is part of the autodiff graph, so that a backward pass also
    /// computes the input's gradient (not for the first layer, whose input is the image).
    pub input_tracked: bool,
}

/// Floating-point operations (one multiply-add = 2) of one pass over a traced network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepFlops {
    pub forward: u64,
    pub grad_input: u64,
    pub grad_weight: u64,
}

impl StepFlops {
    /// Forward only (inference) and forward + both gradients (a training step) of `convs`.
    pub fn of(convs: &[ConvShape]) -> Self {
        let mut f = Self::default();
        for c in convs {
            // Each of the three is one GEMM of the same size: y = W·col(x),
            // dcol = Wᵀ·dy, dW = dy·col(x)ᵀ.
            f.forward += 2 * c.macs;
            f.grad_weight += 2 * c.macs;
            if c.input_tracked {
                f.grad_input += 2 * c.macs;
            }
        }
        f
    }

    pub fn training(&self) -> u64 {
        self.forward + self.grad_input + self.grad_weight
    }
}

thread_local! {
    static TRACE: RefCell<Option<Vec<ConvShape>>> = const { RefCell::new(None) };
}

/// Whether a trace is running on this thread (the convolution asks before it computes
/// anything for the trace).
pub fn tracing() -> bool {
    TRACE.with(|t| t.borrow().is_some())
}

/// Called by [`super::conv2d`] for each convolution while tracing.
pub(crate) fn record(c: ConvShape) {
    TRACE.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.push(c);
        }
    });
}

/// Run `f` and return the convolutions it ran on this thread, in order.
pub fn trace<R>(f: impl FnOnce() -> R) -> (R, Vec<ConvShape>) {
    let outer = TRACE.with(|t| t.replace(Some(vec![])));
    // Restore the caller's trace whatever `f` does (a nested trace, a panic).
    struct Restore(Option<Option<Vec<ConvShape>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(outer) = self.0.take() {
                TRACE.with(|t| t.replace(outer));
            }
        }
    }
    let mut restore = Restore(Some(outer));
    let r = f();
    let seen = TRACE.with(|t| t.replace(restore.0.take().unwrap()));
    (r, seen.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::head::ClassifierNet;
    use crate::models::{Arch, BackboneConfig, Classifier};
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Tensor};

    /// One 3×3 convolution, 3 → 8 channels on 2 images of 5×5 with padding 1: 2 × 8 × 5 × 5
    /// outputs of 3 × 9 multiply-adds each = 10,800; stride 2 leaves 3 × 3 outputs: 3,888.
    #[test]
    fn a_convolution_counts_its_multiply_adds_by_hand() {
        let dev = Device::flex().autodiff();
        for (stride, macs) in [(1, 10_800), (2, 3_888)] {
            let conv = Conv2dConfig::new([3, 8], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(&dev);
            let x = Tensor::<4>::ones([2, 3, 5, 5], &dev);
            let (_, seen) = trace(|| crate::cpu::conv2d(&conv, x.clone()));
            assert_eq!(
                seen,
                vec![ConvShape {
                    macs,
                    input_tracked: false
                }]
            );
            let f = StepFlops::of(&seen);
            assert_eq!((f.forward, f.training()), (2 * macs, 4 * macs));
            // An input inside the graph also needs its gradient.
            let (_, seen) = trace(|| crate::cpu::conv2d(&conv, x.clone().require_grad()));
            assert_eq!(StepFlops::of(&seen).training(), 6 * macs);
        }
        // A bias takes burn's path, and is counted the same.
        let biased = Conv2dConfig::new([3, 8], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&dev);
        let (_, seen) =
            trace(|| crate::cpu::conv2d(&biased, Tensor::<4>::ones([2, 3, 5, 5], &dev)));
        assert_eq!(seen[0].macs, 10_800);
        // A trace inside a trace takes only its own convolutions, and the outer one then
        // goes on with its own: 2 images, then 1 image (5,400 multiply-adds) outside the
        // inner trace.
        let ((_, inner), outer) = trace(|| {
            let inner =
                trace(|| crate::cpu::conv2d(&biased, Tensor::<4>::ones([2, 3, 5, 5], &dev)));
            let _ = crate::cpu::conv2d(&biased, Tensor::<4>::ones([1, 3, 5, 5], &dev));
            inner
        });
        assert_eq!(inner.iter().map(|c| c.macs).collect::<Vec<_>>(), [10_800]);
        assert_eq!(outer.iter().map(|c| c.macs).collect::<Vec<_>>(), [5_400]);
        assert!(!tracing(), "no trace is left running");
    }

    /// ResNet-18 with the CIFAR stem on one 32×32 image, worked out by hand:
    /// stem 64·32²·27 = 1,769,472; stage 1, four 3×3 64→64 at 32²: 150,994,944; stages 2–4
    /// each 134,217,728 (the strided 3×3, three more 3×3 and the 1×1 shortcut):
    /// 555,417,600 multiply-adds in all (the usual "0.56 GMACs" for this network).
    #[test]
    fn resnet18_cifar_counts_its_published_multiply_adds() {
        let dev = Device::flex().autodiff();
        let mut cfg = BackboneConfig::new(Arch::Resnet18Cifar, 32);
        cfg.width = 64;
        let net = ClassifierNet::new(&cfg, 10, &dev);
        let x = Tensor::<4>::zeros([1, 3, 32, 32], &dev);
        let (_, seen) = trace(|| net.logits(x));
        assert_eq!(seen.iter().map(|c| c.macs).sum::<u64>(), 555_417_600);
        assert_eq!(seen.len(), 20);
        // Only the stem sees the image.
        assert_eq!(seen.iter().filter(|c| !c.input_tracked).count(), 1);
        assert!(!seen[0].input_tracked);
    }
}
