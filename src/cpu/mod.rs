//! Our own CPU kernels for the layers that dominate a training step, registered with burn
//! through its backend-extension API (`#[backend_extension]`: an operation implemented for the
//! Flex backend, and for `Autodiff<B>` with a hand-written backward pass).
//!
//! - [`conv2d`]: convolution, forward and both gradients (see [`conv`]).
//! - [`batch_norm`]: training-mode batch norm with the ReLU after it fused in.
//! - [`pool`]: max and average pooling, forward and backward.
//!
//! They replace burn's ops only on the Flex backend and only for the cases they cover; burn's
//! own path is kept for everything else and is what the tests check them against.
//! `PRETEXT_CONV=burn` in the environment forces burn's path everywhere, to compare the two on
//! the same build.

pub mod batch_norm;
pub mod conv;
mod fill;
pub mod flops;
pub mod gemm;
pub mod pool;

use std::borrow::Cow;
use std::sync::OnceLock;

use burn::backend::flex::FlexTensor;

pub use batch_norm::batch_norm;
pub use conv::{conv_bn, conv2d};
pub use pool::{avg_pool2d, max_pool2d};

/// Whether `PRETEXT_CONV=burn` asked for burn's kernels everywhere.
fn burn_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("PRETEXT_CONV").is_ok_and(|v| v == "burn"))
}

/// The tensor's f32 values in row-major order, copied (once) only if its layout is not
/// already that.
fn tensor_values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => s.into(),
        None => t
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .expect("an f32 tensor")
            .into(),
    }
}

/// max |a − b| / max |b|: how the tests compare our kernels with burn's.
#[cfg(test)]
fn rel_err<const D: usize>(a: burn::tensor::Tensor<D>, b: burn::tensor::Tensor<D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>();
    let diff = (a - b).abs().max().into_scalar::<f32>();
    diff / scale.max(1e-12)
}
