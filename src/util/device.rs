//! The one place a backend is named: `--device` → a burn `Device`.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// Backends this build can use, for help texts and errors.
pub fn available() -> Vec<&'static str> {
    let mut v = vec!["flex"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// Parse a device name: `flex` (pure-Rust CPU, the default), `wgpu[:N]`, `vulkan[:N]`,
/// `cuda[:N]` (each needs its cargo feature).
pub fn parse(name: &str) -> Result<Device> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("device index in {name:?} is not a number"))?,
        ),
        None => (name, 0),
    };
    let _ = index;
    match kind {
        "flex" | "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index))),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index))),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(index)),
        // Reachable for whichever of these this build left out.
        #[allow(unreachable_patterns)]
        "wgpu" | "vulkan" | "cuda" => bail!(
            "device {kind:?} is not compiled in: rebuild with `cargo build --release --features {kind}` \
             (available here: {})",
            available().join(", ")
        ),
        _ => bail!(
            "unknown device {name:?}; expected one of: {}",
            available().join(", ")
        ),
    }
}

/// The training device: autodiff on top of the chosen backend.
pub fn training(dev: &Device) -> Device {
    dev.clone().autodiff()
}
