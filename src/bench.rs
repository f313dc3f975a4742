//! `pretext bench`: training and inference throughput per backbone on synthetic batches
//! (medians over timed steps after warm-up). Run by hand; results go in BENCHMARKS.md.

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::Serialize;

use crate::models::head::ClassifierNet;
use crate::models::{Arch, BackboneConfig};
use crate::train::OptimConfig;
use crate::train::trainer::{Classifier, cross_entropy};

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub backbone: String,
    pub width: usize,
    pub input: usize,
    pub batch: usize,
    pub train_images_per_s: f64,
    pub infer_images_per_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Time `steps` training steps and inference passes of `cfg` on `batch` inputs.
pub fn measure(
    cfg: &BackboneConfig,
    batch: usize,
    warmup: usize,
    steps: usize,
    dev: &Device,
) -> BenchRow {
    let tdev = dev.clone().autodiff();
    tdev.seed(0);
    let mut model = ClassifierNet::new(cfg, 4, &tdev);
    let mut optim = OptimConfig::rotnet().init();
    let s = cfg.input_size;
    let shape = [batch, cfg.in_channels, s, s];
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &tdev);
    let y: Vec<i64> = (0..batch as i64).map(|i| i % 4).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch]), &tdev);
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = cross_entropy(model.logits(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model, grads);
        let _ = tdev.sync();
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let train = batch as f64 / median(times);
    let infer_model = model.valid();
    let xi = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), dev);
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let out = infer_model.logits(xi.clone());
        let _ = out.into_data();
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    BenchRow {
        backbone: format!("{:?}", cfg.arch),
        width: cfg.width,
        input: s,
        batch,
        train_images_per_s: train,
        infer_images_per_s: batch as f64 / median(times),
    }
}

/// The default set: each backbone at its standard width on 32×32 inputs, NIN also at half width.
pub fn default_configs() -> Vec<BackboneConfig> {
    let mut v = Vec::new();
    for (arch, width) in [
        (Arch::Nin, 192),
        (Arch::Nin, 96),
        (Arch::Alexnet, 64),
        (Arch::Resnet18Cifar, 64),
        (Arch::Resnet18, 64),
        (Arch::Resnet50, 64),
    ] {
        let mut c = BackboneConfig::new(arch, 32);
        c.width = width;
        v.push(c);
    }
    v
}
