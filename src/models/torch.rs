//! The PyTorch bridge: a backbone's weights under PyTorch's parameter names and layouts,
//! both ways, and the Python module that loads them (`pretext export` / `pretext import`).
//!
//! One walk ([`walk`]) names every convolution and batch norm of a backbone as PyTorch
//! would: ResNets with torchvision's names (`conv1`, `bn1`, `layer1.0.conv1`, …,
//! `layer2.0.downsample.0`), NIN and AlexNet with the names of the module in
//! [`PYTHON`] (`blocks.0.convs.0.conv`, `convs.0.bn`). Export and import both go through
//! it, so the two directions cannot disagree about a name. The layouts need no change:
//! burn's convolution weight is PyTorch's `[out, in, kh, kw]`, and a batch norm's
//! gamma/beta are PyTorch's weight/bias. The backbones hold no linear layer (whose layout
//! would be transposed).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use burn::module::RunningState;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors};

use super::layers::ConvBnRelu;
use super::resnet::Block;
use super::{Arch, Backbone, BackboneConfig};

/// A module of a backbone, reached by the walk at its PyTorch name.
pub enum Slot<'a> {
    Conv(&'a mut Conv2d),
    Bn(&'a mut BatchNorm),
}

type Visit<'f> = dyn FnMut(&str, Slot<'_>) -> Result<()> + 'f;

fn conv_bn(prefix: &str, m: &mut ConvBnRelu, f: &mut Visit<'_>) -> Result<()> {
    f(&format!("{prefix}.conv"), Slot::Conv(&mut m.conv))?;
    f(&format!("{prefix}.bn"), Slot::Bn(&mut m.bn))
}

/// Every convolution and batch norm of `b`, in forward order, with its PyTorch name.
pub fn walk(b: &mut Backbone, f: &mut Visit<'_>) -> Result<()> {
    match b {
        Backbone::Nin(n) => {
            for (bi, block) in n.blocks.iter_mut().enumerate() {
                for (ci, c) in block.convs.iter_mut().enumerate() {
                    conv_bn(&format!("blocks.{bi}.convs.{ci}"), c, f)?;
                }
            }
        }
        Backbone::AlexNet(a) => {
            for (i, c) in a.convs.iter_mut().enumerate() {
                conv_bn(&format!("convs.{i}"), c, f)?;
            }
        }
        Backbone::ResNet(r) => {
            f("conv1", Slot::Conv(&mut r.stem.conv))?;
            f("bn1", Slot::Bn(&mut r.stem.bn))?;
            for (l, layer) in r.layers.iter_mut().enumerate() {
                for (i, block) in layer.iter_mut().enumerate() {
                    let p = format!("layer{}.{i}", l + 1);
                    let shortcut = match block {
                        Block::Basic(b) => {
                            f(&format!("{p}.conv1"), Slot::Conv(&mut b.a.conv))?;
                            f(&format!("{p}.bn1"), Slot::Bn(&mut b.a.bn))?;
                            f(&format!("{p}.conv2"), Slot::Conv(&mut b.conv2))?;
                            f(&format!("{p}.bn2"), Slot::Bn(&mut b.bn2))?;
                            &mut b.shortcut
                        }
                        Block::Bottleneck(b) => {
                            f(&format!("{p}.conv1"), Slot::Conv(&mut b.a.conv))?;
                            f(&format!("{p}.bn1"), Slot::Bn(&mut b.a.bn))?;
                            f(&format!("{p}.conv2"), Slot::Conv(&mut b.b.conv))?;
                            f(&format!("{p}.bn2"), Slot::Bn(&mut b.b.bn))?;
                            f(&format!("{p}.conv3"), Slot::Conv(&mut b.conv3))?;
                            f(&format!("{p}.bn3"), Slot::Bn(&mut b.bn3))?;
                            &mut b.shortcut
                        }
                    };
                    if let Some(s) = shortcut {
                        f(&format!("{p}.downsample.0"), Slot::Conv(&mut s.conv))?;
                        f(&format!("{p}.downsample.1"), Slot::Bn(&mut s.bn))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The values of one exported tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    /// A batch norm's `num_batches_tracked` (PyTorch's strict loading asks for it).
    I64(Vec<i64>),
}

/// One tensor of a PyTorch state dict.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Entry {
    /// A float tensor's values under `name`.
    pub fn f32<const D: usize>(name: String, t: Tensor<D>) -> Result<Self> {
        let shape = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        Ok(Self {
            name,
            shape,
            values: Values::F32(v),
        })
    }

    /// Little-endian bytes, as safetensors stores them.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.values {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    pub fn dtype(&self) -> Dtype {
        match self.values {
            Values::F32(_) => Dtype::F32,
            Values::I64(_) => Dtype::I64,
        }
    }
}

/// The backbone's state dict in PyTorch's names, in the order of the walk. Batch norms
/// give weight (gamma), bias (beta), running_mean, running_var and num_batches_tracked
/// (0: pretext does not count batches; PyTorch reads it only when momentum is None).
pub fn state_dict(b: &Backbone) -> Result<Vec<Entry>> {
    let mut out = vec![];
    walk(&mut b.clone(), &mut |p, slot| {
        match slot {
            Slot::Conv(c) => {
                out.push(Entry::f32(format!("{p}.weight"), c.weight.val())?);
                if let Some(bias) = &c.bias {
                    out.push(Entry::f32(format!("{p}.bias"), bias.val())?);
                }
            }
            Slot::Bn(bn) => {
                out.push(Entry::f32(format!("{p}.weight"), bn.gamma.val())?);
                out.push(Entry::f32(format!("{p}.bias"), bn.beta.val())?);
                out.push(Entry::f32(
                    format!("{p}.running_mean"),
                    bn.running_mean.value(),
                )?);
                out.push(Entry::f32(
                    format!("{p}.running_var"),
                    bn.running_var.value(),
                )?);
                out.push(Entry {
                    name: format!("{p}.num_batches_tracked"),
                    shape: vec![],
                    values: Values::I64(vec![0]),
                });
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Float tensors by PyTorch name: shape and values.
pub type StateDict = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A safetensors file's float tensors by name, as f32 (F16, BF16 and F64 are converted).
pub fn read_floats(st: &SafeTensors) -> Result<StateDict> {
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let v: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            // Integer entries are counters (num_batches_tracked): nothing to load.
            _ => continue,
        };
        out.insert(name, (view.shape().to_vec(), v));
    }
    Ok(out)
}

/// Entries of a PyTorch checkpoint that are not the backbone and are left out on purpose:
/// torchvision's classifier (`fc`) and the batch counters.
fn ignorable(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with(".num_batches_tracked")
}

/// `b` with every weight and batch-norm statistic taken from `tensors` (PyTorch names).
/// Every entry the backbone needs must be there with its shape, and every float entry
/// must be used (but for torchvision's `fc` classifier, which is returned as ignored):
/// a checkpoint of another architecture or width is refused, naming what differs,
/// rather than half-loaded.
pub fn load_state_dict(mut b: Backbone, mut tensors: StateDict) -> Result<(Backbone, Vec<String>)> {
    let mut missing = vec![];
    let mut wrong = vec![];
    // Entries are moved out as they are placed: what is left at the end was not used.
    let mut take = |name: String, want: &[usize]| -> Option<TensorData> {
        match tensors.remove(&name) {
            None => {
                missing.push(name);
                None
            }
            Some((shape, _)) if shape.as_slice() != want => {
                wrong.push(format!("{name}: {shape:?} where the backbone has {want:?}"));
                None
            }
            Some((shape, v)) => Some(TensorData::new(v, shape)),
        }
    };
    walk(&mut b, &mut |p, slot| {
        match slot {
            Slot::Conv(c) => {
                let dev = c.weight.val().device();
                if let Some(d) = take(format!("{p}.weight"), &c.weight.dims()) {
                    c.weight = c.weight.clone().map(|_| Tensor::<4>::from_data(d, &dev));
                }
                if let Some(bias) = &mut c.bias
                    && let Some(d) = take(format!("{p}.bias"), &bias.dims())
                {
                    *bias = bias.clone().map(|_| Tensor::<1>::from_data(d, &dev));
                }
            }
            Slot::Bn(bn) => {
                let dev = bn.gamma.val().device();
                let n = bn.gamma.dims();
                if let Some(d) = take(format!("{p}.weight"), &n) {
                    bn.gamma = bn.gamma.clone().map(|_| Tensor::<1>::from_data(d, &dev));
                }
                if let Some(d) = take(format!("{p}.bias"), &n) {
                    bn.beta = bn.beta.clone().map(|_| Tensor::<1>::from_data(d, &dev));
                }
                if let Some(d) = take(format!("{p}.running_mean"), &n) {
                    bn.running_mean = RunningState::new(Tensor::<1>::from_data(d, &dev));
                }
                if let Some(d) = take(format!("{p}.running_var"), &n) {
                    bn.running_var = RunningState::new(Tensor::<1>::from_data(d, &dev));
                }
            }
        }
        Ok(())
    })?;
    let (unused, ignored): (Vec<String>, Vec<String>) =
        tensors.into_keys().partition(|k| !ignorable(k));
    if !missing.is_empty() || !wrong.is_empty() || !unused.is_empty() {
        let list = |v: &[String]| {
            let more = v.len().saturating_sub(5);
            let head = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if more > 0 {
                format!("{head} and {more} more")
            } else {
                head
            }
        };
        let mut why = vec![];
        if !missing.is_empty() {
            why.push(format!("{} missing ({})", missing.len(), list(&missing)));
        }
        if !wrong.is_empty() {
            why.push(format!(
                "{} of another shape ({})",
                wrong.len(),
                list(&wrong)
            ));
        }
        if !unused.is_empty() {
            why.push(format!(
                "{} the backbone has no place for ({})",
                unused.len(),
                list(&unused)
            ));
        }
        bail!(
            "the checkpoint is not this backbone's state dict: entries {}",
            why.join("; ")
        );
    }
    Ok((b, ignored))
}

/// The backbone configuration a PyTorch state dict of `arch` was saved from: width and
/// input channels from its first convolution, NIN's block count from its names, AlexNet's
/// stem (5×5 for small inputs, 11×11 from 96 px up) checked against `input_size`.
pub fn infer_config(arch: Arch, tensors: &StateDict, input_size: usize) -> Result<BackboneConfig> {
    let first = match arch {
        Arch::Nin => "blocks.0.convs.0.conv.weight",
        Arch::Alexnet => "convs.0.conv.weight",
        _ => "conv1.weight",
    };
    let (shape, _) = tensors.get(first).with_context(|| {
        format!(
            "no {first:?} entry: not a {} state dict in PyTorch's names{}",
            arch_name(arch),
            if matches!(arch, Arch::Nin | Arch::Alexnet) {
                " as `pretext export` writes them"
            } else {
                " (torchvision's)"
            }
        )
    })?;
    if shape.len() != 4 {
        bail!("{first:?} has shape {shape:?}, not a convolution's [out, in, kh, kw]");
    }
    let mut cfg = BackboneConfig::new(arch, input_size);
    cfg.width = shape[0];
    cfg.in_channels = shape[1];
    match arch {
        Arch::Nin => {
            cfg.blocks = tensors
                .keys()
                .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse().ok())
                .map(|b: usize| b + 1)
                .max()
                .unwrap_or(1);
        }
        Arch::Alexnet => {
            let want = if input_size < 96 { 5 } else { 11 };
            if shape[2] != want {
                bail!(
                    "this AlexNet's conv1 is {k}×{k}, made for {} inputs; at {input_size} px \
                     pretext builds a {want}×{want} conv1 (pass --image-size to match)",
                    if shape[2] == 5 {
                        "small (< 96 px)"
                    } else {
                        "large (≥ 96 px)"
                    },
                    k = shape[2]
                );
            }
        }
        Arch::Resnet18Cifar | Arch::Resnet18 | Arch::Resnet50 => {
            let want = if arch == Arch::Resnet18Cifar { 3 } else { 7 };
            if shape[2] != want {
                bail!(
                    "conv1 is {k}×{k}: not the {} stem ({want}×{want}){}",
                    arch_name(arch),
                    if shape[2] == 3 {
                        "; a CIFAR-stem ResNet-18 is --backbone resnet18-cifar"
                    } else {
                        ""
                    },
                    k = shape[2]
                );
            }
        }
    }
    Ok(cfg)
}

/// The name `--backbone` takes.
pub fn arch_name(arch: Arch) -> String {
    clap::ValueEnum::to_possible_value(&arch)
        .map(|v| v.get_name().to_string())
        .unwrap_or_else(|| format!("{arch:?}"))
}

/// The Python module `pretext export` writes beside the weights (`CONFIG` is filled in).
pub const PYTHON: &str = include_str!("pretext_backbone.py");

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::Device;

    fn build(arch: Arch, width: usize, seed: u64) -> Backbone {
        let dev = Device::flex();
        dev.seed(seed);
        let mut cfg = BackboneConfig::new(arch, 32);
        cfg.width = width;
        cfg.init(&dev)
    }

    fn floats(entries: &[Entry]) -> StateDict {
        entries
            .iter()
            .filter_map(|e| match &e.values {
                Values::F32(v) => Some((e.name.clone(), (e.shape.clone(), v.clone()))),
                Values::I64(_) => None,
            })
            .collect()
    }

    #[test]
    fn resnets_carry_torchvisions_names_and_counts() {
        // torchvision's resnet18 state dict has 122 entries and resnet50's 320; both end
        // with fc.weight and fc.bias, which a backbone does not have.
        let r18 = state_dict(&build(Arch::Resnet18, 64, 0)).unwrap();
        assert_eq!(r18.len(), 120);
        let names: Vec<&str> = r18.iter().map(|e| e.name.as_str()).collect();
        for n in [
            "conv1.weight",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "layer1.0.conv1.weight",
            "layer1.1.bn2.bias",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean",
            "layer4.1.conv2.weight",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert!(!names.contains(&"layer1.0.downsample.0.weight"));
        let shape = |n: &str| r18.iter().find(|e| e.name == n).unwrap().shape.clone();
        assert_eq!(shape("conv1.weight"), [64, 3, 7, 7]);
        assert_eq!(shape("layer3.0.downsample.0.weight"), [256, 128, 1, 1]);
        assert_eq!(shape("layer4.1.conv2.weight"), [512, 512, 3, 3]);
        assert_eq!(shape("bn1.num_batches_tracked"), Vec::<usize>::new());

        let r50 = state_dict(&build(Arch::Resnet50, 64, 0)).unwrap();
        assert_eq!(r50.len(), 318);
        let shape = |n: &str| r50.iter().find(|e| e.name == n).unwrap().shape.clone();
        assert_eq!(shape("layer1.0.conv3.weight"), [256, 64, 1, 1]);
        assert_eq!(shape("layer1.0.downsample.0.weight"), [256, 64, 1, 1]);
        assert_eq!(shape("layer2.0.conv2.weight"), [128, 128, 3, 3]);
        assert_eq!(shape("layer4.2.bn3.weight"), [2048]);
    }

    #[test]
    fn a_state_dict_loads_back_into_a_fresh_network_bit_for_bit() {
        let dev = Device::flex();
        dev.seed(3);
        let x = Tensor::<4>::random(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        for arch in [
            Arch::Nin,
            Arch::Alexnet,
            Arch::Resnet18Cifar,
            Arch::Resnet50,
        ] {
            let a = build(arch, 8, 1);
            let sd = state_dict(&a).unwrap();
            let (b, ignored) = load_state_dict(build(arch, 8, 2), floats(&sd)).unwrap();
            assert!(ignored.is_empty());
            assert_eq!(state_dict(&b).unwrap(), sd, "{arch:?}");
            let (ya, yb) = (a.valid().forward(x.clone()), b.valid().forward(x.clone()));
            let d = (ya.clone() - yb)
                .abs()
                .max()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()[0];
            assert_eq!(d, 0.0, "{arch:?}");
            // A different seed gives a different network: the load did something.
            let c = build(arch, 8, 2).valid().forward(x.clone());
            assert!(
                (ya - c)
                    .abs()
                    .max()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap()[0]
                    > 0.0
            );
        }
    }

    #[test]
    fn a_wrong_checkpoint_is_refused_naming_what_differs() {
        let sd = floats(&state_dict(&build(Arch::Resnet18, 8, 0)).unwrap());
        // Another width: every shape differs.
        let e = load_state_dict(build(Arch::Resnet18, 16, 0), sd.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("of another shape") && e.contains("conv1.weight"),
            "{e}"
        );
        // Another depth: resnet50 needs conv3 entries resnet18 lacks.
        let e = load_state_dict(build(Arch::Resnet50, 8, 0), sd.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing") && e.contains("conv3"), "{e}");
        // An entry nothing takes is refused; torchvision's classifier is set aside.
        let mut extra = sd.clone();
        extra.insert("layer5.0.conv1.weight".into(), (vec![1], vec![0.0]));
        let e = load_state_dict(build(Arch::Resnet18, 8, 0), extra)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no place for (layer5.0.conv1.weight)"), "{e}");
        let mut fc = sd.clone();
        fc.insert("fc.weight".into(), (vec![10, 512], vec![0.0; 5120]));
        let (_, ignored) = load_state_dict(build(Arch::Resnet18, 8, 0), fc).unwrap();
        assert_eq!(ignored, ["fc.weight"]);
    }

    #[test]
    fn the_configuration_is_read_off_the_shapes() {
        let nin = floats(&state_dict(&build(Arch::Nin, 24, 0)).unwrap());
        let c = infer_config(Arch::Nin, &nin, 32).unwrap();
        assert_eq!((c.width, c.blocks, c.in_channels), (24, 4, 3));
        let r = floats(&state_dict(&build(Arch::Resnet18Cifar, 16, 0)).unwrap());
        assert_eq!(infer_config(Arch::Resnet18Cifar, &r, 32).unwrap().width, 16);
        let e = infer_config(Arch::Resnet18, &r, 32)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("resnet18-cifar"), "{e}");
        let e = infer_config(Arch::Nin, &r, 32).err().unwrap().to_string();
        assert!(e.contains("blocks.0.convs.0.conv.weight"), "{e}");
        let a = floats(&state_dict(&build(Arch::Alexnet, 8, 0)).unwrap());
        assert!(infer_config(Arch::Alexnet, &a, 32).is_ok());
        assert!(infer_config(Arch::Alexnet, &a, 224).is_err());
    }
}
