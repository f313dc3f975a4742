//! Colorization with hypercolumns (Larsson, Maire & Shakhnarovich, ECCV 2016). The network
//! sees lightness L* only; at ~128 random pixels per image the hypercolumn (features of
//! every tap, bilinearly sampled there) predicts the pixel's color as two 32-bin
//! histograms: hue and chroma (hue's loss weighted by chroma, as hue is undefined for
//! gray), or a* and b* (the Lab variant). Targets are the bins of the true color.

use std::f64::consts::PI;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{PretextTask, Task, TaskConfig, TrainingDefaults};
use crate::data::ImageSet;
use crate::data::augment::{AugmentConfig, Normalize, crop_image};
use crate::data::lab::{InputTransform, lab_to_srgb, srgb_to_lab};
use crate::data::loader::{SampleMaker, SampleOut, preview_indices};
use crate::draw::preview::{self, Cell};
use crate::models::hypercolumn::ColorNet;
use crate::run::Job;
use crate::train::TrainOutcome;
use crate::train::trainer::{Learner, Step, StepStats};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Int;
use burn::tensor::activation::log_softmax;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

/// Largest chroma C* of an sRGB color (pure blue, ≈ 133.8).
pub const MAX_CHROMA: f64 = 134.0;
/// a* and b* histograms span [-AB_RANGE, AB_RANGE) (sRGB reaches -86..98 and -108..95).
pub const AB_RANGE: f64 = 110.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ColorTarget {
    /// Hue and chroma histograms (the paper's main model).
    HueChroma,
    /// a* and b* histograms (the paper's Lab variant).
    Lab,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColorizationConfig {
    pub target: ColorTarget,
    /// Bins per histogram (paper: 32).
    pub bins: usize,
    /// Pixels sampled per image for training (paper: 128).
    pub pixels: usize,
    /// Width of the MLP's hidden layer over the hypercolumn (paper: 1024).
    pub hidden: usize,
    /// Weight of the hue loss at full chroma (paper: λ_H = 5; it is scaled by C*/134).
    pub hue_weight: f64,
}

impl Default for ColorizationConfig {
    fn default() -> Self {
        Self {
            target: ColorTarget::HueChroma,
            bins: 32,
            pixels: 128,
            hidden: 1024,
            hue_weight: 5.0,
        }
    }
}

/// The two target bins of a color and the first one's loss weight.
pub fn bins_of(lab: [f64; 3], cfg: &ColorizationConfig) -> (usize, usize, f32) {
    let k = cfg.bins as f64;
    let top = cfg.bins - 1;
    match cfg.target {
        ColorTarget::HueChroma => {
            let chroma = lab[1].hypot(lab[2]);
            let hue = lab[2].atan2(lab[1]).rem_euclid(2.0 * PI);
            let hb = ((hue / (2.0 * PI) * k) as usize).min(top);
            let cb = ((chroma / MAX_CHROMA * k) as usize).min(top);
            let w = cfg.hue_weight * (chroma / MAX_CHROMA).min(1.0);
            (hb, cb, w as f32)
        }
        ColorTarget::Lab => {
            let bin = |v: f64| (((v + AB_RANGE) / (2.0 * AB_RANGE) * k).max(0.0) as usize).min(top);
            (bin(lab[1]), bin(lab[2]), 1.0)
        }
    }
}

/// The color at the centers of two bins with lightness `l` (for previews).
pub fn color_of(l: f64, a_bin: f64, b_bin: f64, cfg: &ColorizationConfig) -> [f64; 3] {
    let k = cfg.bins as f64;
    let lab = match cfg.target {
        ColorTarget::HueChroma => {
            let hue = (a_bin + 0.5) / k * 2.0 * PI;
            let chroma = (b_bin + 0.5) / k * MAX_CHROMA;
            [l, chroma * hue.cos(), chroma * hue.sin()]
        }
        ColorTarget::Lab => {
            let v = |b: f64| (b + 0.5) / k * 2.0 * AB_RANGE - AB_RANGE;
            [l, v(a_bin), v(b_bin)]
        }
    };
    lab_to_srgb(lab).map(|v| v.clamp(0.0, 1.0))
}

pub struct Colorization {
    pub cfg: ColorizationConfig,
    pub augment: AugmentConfig,
    /// Statistics of L*/100.
    pub norm: Normalize,
}

impl Colorization {
    pub fn new(
        cfg: ColorizationConfig,
        augment: AugmentConfig,
        norm: Normalize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(cfg.bins >= 2, "colorization needs at least 2 bins");
        anyhow::ensure!(
            cfg.pixels >= 1 && cfg.pixels <= augment.crop * augment.crop,
            "colorization samples {} pixels per image but a {}×{} crop has {}",
            cfg.pixels,
            augment.crop,
            augment.crop,
            augment.crop * augment.crop
        );
        Ok(Self { cfg, augment, norm })
    }

    /// The RGB crop of image `index` (CHW in [0, 1]).
    pub fn crop(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let h = &set.header;
        let s = self.augment.crop;
        let mut rgb = vec![0.0; h.c * s * s];
        let at = self.augment.sample(h.h, h.w, rng);
        crop_image(set, index, &self.augment, at, &mut rgb);
        rgb
    }

    /// Lab of pixel `p` of a CHW RGB crop.
    pub fn lab_at(rgb: &[f32], plane: usize, p: usize) -> [f64; 3] {
        let c = rgb.len() / plane;
        let px = |ch: usize| rgb[ch.min(c - 1) * plane + p] as f64;
        srgb_to_lab([px(0), px(1), px(2)])
    }
}

impl SampleMaker for Colorization {
    fn samples_per_image(&self) -> usize {
        1
    }
    fn input_shape(&self) -> [usize; 3] {
        [1, self.augment.crop, self.augment.crop]
    }
    fn targets_per_image(&self) -> usize {
        3 * self.cfg.pixels
    }
    fn aux_per_image(&self) -> usize {
        self.cfg.pixels
    }
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let s = self.augment.crop;
        let plane = s * s;
        let rgb = self.crop(set, index, rng);
        InputTransform::Lightness.apply(&rgb, set.header.c, out.inputs);
        self.norm.apply(out.inputs);
        let p = self.cfg.pixels;
        for k in 0..p {
            let at = rng.random_range(0..plane);
            let (a, b, w) = bins_of(Self::lab_at(&rgb, plane, at), &self.cfg);
            out.targets[k] = at as i64;
            out.targets[p + k] = a as i64;
            out.targets[2 * p + k] = b as i64;
            out.aux[k] = w;
        }
    }
}

impl PretextTask for Colorization {
    fn name(&self) -> &'static str {
        "colorization"
    }
    fn num_classes(&self) -> usize {
        2 * self.cfg.bins
    }
    /// Rows: the L* input, the true color, and the color its target bins can express.
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let s = self.augment.crop;
        let plane = s * s;
        let rows: Vec<Vec<Cell>> = preview_indices(set)
            .into_iter()
            .map(|index| {
                let rgb = self.crop(set, index, &mut rng);
                let mut l = vec![0.0; plane];
                InputTransform::Lightness.apply(&rgb, set.header.c, &mut l);
                let mut binned = vec![0.0; 3 * plane];
                for p in 0..plane {
                    let lab = Self::lab_at(&rgb, plane, p);
                    let (a, b, _) = bins_of(lab, &self.cfg);
                    let c = color_of(lab[0], a as f64, b as f64, &self.cfg);
                    for ch in 0..3 {
                        binned[ch * plane + p] = c[ch] as f32;
                    }
                }
                vec![
                    Cell::plain(l, 1, s),
                    Cell::plain(rgb, set.header.c, s),
                    Cell::plain(binned, 3, s),
                ]
            })
            .collect();
        preview::save(&preview::sheet(&rows, (96 / s).max(1)), path)
    }
}

/// After training: for a few images, the L* input, the network's colors and the truth.
/// Every pixel's hypercolumn is classified; hue is the probability-weighted circular mean
/// of the bin centers, chroma (or a*, b*) the expectation.
pub fn colorized_sheet(
    task: &Colorization,
    net: &ColorNet,
    set: &ImageSet,
    path: &Path,
    dev: &Device,
) -> anyhow::Result<()> {
    let s = task.augment.crop;
    let plane = s * s;
    let n = set.len().min(8);
    let h = &set.header;
    let k = task.cfg.bins;
    let mut rgbs = Vec::with_capacity(n);
    let mut x = vec![0f32; n * plane];
    for i in 0..n {
        let mut rgb = vec![0.0; h.c * plane];
        let at = task.augment.center(h.h, h.w);
        crop_image(set, i, &task.augment, at, &mut rgb);
        InputTransform::Lightness.apply(&rgb, h.c, &mut x[i * plane..(i + 1) * plane]);
        rgbs.push(rgb);
    }
    let lights = x.clone();
    task.norm.apply(&mut x);
    let positions: Vec<i64> = (0..n).flat_map(|_| 0..plane as i64).collect();
    let logits = net.forward(
        Tensor::<4>::from_data(TensorData::new(x, [n, 1, s, s]), dev),
        &positions,
    );
    let m = positions.len();
    let pa = softmax(logits.clone().slice([0..m, 0..k]), 1);
    let pb = softmax(logits.slice([0..m, k..2 * k]), 1);
    let pa = pa.into_data().try_into_vec::<f32>().unwrap_or_default();
    let pb = pb.into_data().try_into_vec::<f32>().unwrap_or_default();
    let rows: Vec<Vec<Cell>> = (0..n)
        .map(|i| {
            let mut pred = vec![0.0; 3 * plane];
            for p in 0..plane {
                let r = i * plane + p;
                let (qa, qb) = (&pa[r * k..(r + 1) * k], &pb[r * k..(r + 1) * k]);
                let expect = |q: &[f32]| {
                    q.iter()
                        .enumerate()
                        .map(|(j, &v)| j as f64 * v as f64)
                        .sum::<f64>()
                };
                let first = match task.cfg.target {
                    ColorTarget::HueChroma => {
                        let (mut sx, mut sy) = (0.0, 0.0);
                        for (j, &v) in qa.iter().enumerate() {
                            let ang = (j as f64 + 0.5) / k as f64 * 2.0 * PI;
                            sx += v as f64 * ang.cos();
                            sy += v as f64 * ang.sin();
                        }
                        sy.atan2(sx).rem_euclid(2.0 * PI) / (2.0 * PI) * k as f64 - 0.5
                    }
                    ColorTarget::Lab => expect(qa),
                };
                let l = lights[r] as f64 * 100.0;
                let c = color_of(l, first, expect(qb), &task.cfg);
                for ch in 0..3 {
                    pred[ch * plane + p] = c[ch] as f32;
                }
            }
            vec![
                Cell::plain(lights[i * plane..(i + 1) * plane].to_vec(), 1, s),
                Cell::plain(pred, 3, s),
                Cell::plain(std::mem::take(&mut rgbs[i]), h.c, s),
            ]
        })
        .collect();
    preview::save(&preview::sheet(&rows, (96 / s).max(1)), path)
}

/// Colorization in the task registry.
pub struct ColorizationTask;
pub static TASK: ColorizationTask = ColorizationTask;

impl Task for ColorizationTask {
    fn name(&self) -> &'static str {
        "colorization"
    }
    fn defaults(&self, _side: usize) -> TaskConfig {
        TaskConfig::of(self.name(), &ColorizationConfig::default())
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<ColorizationConfig>()
    }
    /// The backbone sees L* only; no padding (the black border would be a color target).
    fn training(&self) -> TrainingDefaults {
        TrainingDefaults {
            input: InputTransform::Lightness,
            pad: 0,
            ..TrainingDefaults::default()
        }
    }
    fn validate(&self, cfg: &TaskConfig, augment: &AugmentConfig) -> anyhow::Result<()> {
        let c: ColorizationConfig = cfg.typed()?;
        anyhow::ensure!(
            c.bins >= 2 && c.pixels >= 1 && c.pixels <= augment.crop * augment.crop,
            "colorization needs ≥ 2 bins and 1..={} sampled pixels per {}×{} crop (got {} bins, {} pixels)",
            augment.crop * augment.crop,
            augment.crop,
            augment.crop,
            c.bins,
            c.pixels
        );
        Ok(())
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        let c = job.cfg;
        let k: ColorizationConfig = c.task.typed()?;
        let model = ColorNet::new(&c.backbone, k.hidden, k.bins, k.pixels, job.train_device);
        let task = Colorization::new(k, c.augment.clone(), c.normalize.clone())?;
        let (task, model, outcome) = job.fit(task, model)?;
        if job.draws() {
            colorized_sheet(
                &task,
                &model.valid(),
                &job.sample(),
                &job.run.join("colorized.png"),
                job.device,
            )?;
        }
        Ok(outcome)
    }
}

/// Split an image-major target block `[P positions | P first bins | P second bins]` per
/// image into the three flat lists.
pub fn split_targets(targets: &[i64], pixels: usize) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let (mut pos, mut a, mut b) = (vec![], vec![], vec![]);
    for img in targets.chunks_exact(3 * pixels) {
        pos.extend_from_slice(&img[..pixels]);
        a.extend_from_slice(&img[pixels..2 * pixels]);
        b.extend_from_slice(&img[2 * pixels..]);
    }
    (pos, a, b)
}

impl Learner for ColorNet {
    fn train_step(self, step: Step<'_>) -> (Self, StepStats) {
        let (batch, dev, optim, lr) = step.parts();
        let (pos, a, b) = split_targets(&batch.targets, self.pixels);
        let m = pos.len();
        let x = Tensor::<4>::from_data(TensorData::new(batch.inputs, batch.shape), dev);
        let logits = self.forward(x, &pos);
        let k = self.bins;
        let la = logits.clone().slice([0..m, 0..k]);
        let lb = logits.slice([0..m, k..2 * k]);
        let ta = Tensor::<1, Int>::from_data(TensorData::new(a, [m]), dev);
        let tb = Tensor::<1, Int>::from_data(TensorData::new(b, [m]), dev);
        // aux: the first histogram's per-pixel loss weight (hue weighted by chroma).
        let wa = Tensor::<1>::from_data(TensorData::new(batch.aux, [m]), dev);
        let ce = |l: Tensor<2>, t: Tensor<1, Int>| {
            (log_softmax(l, 1) * t.one_hot::<2>(k).float())
                .sum_dim(1)
                .reshape([m])
                .neg()
        };
        let loss = (ce(la.clone(), ta.clone()) * wa + ce(lb.clone(), tb.clone())).mean();
        let hits = |l: Tensor<2>, t: Tensor<1, Int>| {
            l.detach()
                .argmax(1)
                .reshape([m])
                .equal(t)
                .int()
                .sum()
                .float()
        };
        let stats = StepStats {
            loss_sum: loss.clone().detach() * m as f32,
            score_sum: (hits(la, ta) + hits(lb, tb)) * 0.5,
            count: m as u64,
        };
        let grads = GradientsParams::from_grads(loss.backward(), &self);
        (optim.step(lr, self, grads), stats)
    }
    fn score_name(&self) -> &'static str {
        "bin accuracy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_of_reference_colors() {
        let cfg = ColorizationConfig::default();
        // Pure red: L 53.24, a 80.09, b 67.20 → hue atan2(67.20, 80.09) = 39.99° → bin
        // floor(39.99/360·32) = 3; chroma 104.55 → bin floor(104.55/134·32) = 24.
        let (h, c, w) = bins_of(srgb_to_lab([1.0, 0.0, 0.0]), &cfg);
        assert_eq!((h, c), (3, 24));
        assert!((w - 5.0 * 104.55 / 134.0).abs() < 0.01, "{w}");
        // Gray has no chroma: chroma bin 0 and no hue weight.
        let (_, c, w) = bins_of(srgb_to_lab([0.5, 0.5, 0.5]), &cfg);
        assert_eq!(c, 0);
        assert!(w.abs() < 1e-6);
        // Lab variant: a 80.09 → floor(190.09/220·32) = 27; b 67.20 → floor(177.2/220·32) = 25.
        let lab = ColorizationConfig {
            target: ColorTarget::Lab,
            ..ColorizationConfig::default()
        };
        assert_eq!(bins_of(srgb_to_lab([1.0, 0.0, 0.0]), &lab), (27, 25, 1.0));
    }

    #[test]
    fn bin_centers_round_trip_to_the_same_bins() {
        for target in [ColorTarget::HueChroma, ColorTarget::Lab] {
            let cfg = ColorizationConfig {
                target,
                ..ColorizationConfig::default()
            };
            for rgb in [[0.8, 0.3, 0.1], [0.1, 0.6, 0.9], [0.2, 0.7, 0.3]] {
                let lab = srgb_to_lab(rgb);
                let (a, b, _) = bins_of(lab, &cfg);
                let back = color_of(lab[0], a as f64, b as f64, &cfg);
                let (a2, b2, _) = bins_of(srgb_to_lab(back), &cfg);
                assert!(
                    a.abs_diff(a2) <= 1 && b.abs_diff(b2) <= 1,
                    "{target:?} {rgb:?}"
                );
            }
        }
    }
}
