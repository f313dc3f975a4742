//! Context encoders (Pathak et al., CVPR 2016): fill in a masked part of the image. The hole
//! is filled with the data set mean (0 after normalization); the network predicts the image
//! and is scored by L2 on the hole plus a band of visible context around it (weighted 10×,
//! so the fill continues the border), and by a discriminator on the filled-in image
//! (λ_rec 0.999, λ_adv 0.001). Random regions are the paper's choice for feature learning.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{PretextTask, Task, TaskConfig, TrainingDefaults};
use crate::data::ImageSet;
use crate::data::augment::{AugmentConfig, Normalize, crop_image};
use crate::data::loader::{SampleMaker, SampleOut, make_one, preview_indices};
use crate::draw::preview::{self, Cell};
use crate::models::context_encoder::ContextEncoder;
use crate::run::{Job, RunConfig};
use crate::train::trainer::{Learner, Step, StepStats};
use crate::train::{OptimConfig, OptimKind, Schedule, TrainOutcome};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Tensor, TensorData};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MaskKind {
    /// A centered square of half the image side (paper: 64 of 128).
    Central,
    /// Random squares until up to `max_area` of the image is covered.
    Blocks,
    /// Random blob-shaped regions of up to `max_area` (paper: shapes from segmentation
    /// masks; here thresholded smooth noise, since no segmentation is at hand).
    Region,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InpaintingConfig {
    pub mask: MaskKind,
    /// Largest fraction of the image a random mask covers (paper: ¼); each mask draws its
    /// area uniformly from [max_area/2, max_area].
    pub max_area: f64,
    /// Width of the visible band around the hole that the prediction must also match
    /// (paper: 4 px of 128; default round(4·side/128), at least 1).
    pub overlap: usize,
    /// L2 weight of the band relative to the hole (paper: 10).
    pub overlap_weight: f32,
    pub lambda_rec: f32,
    pub lambda_adv: f32,
    /// Channels of the discriminator's first layer (doubled twice after).
    pub disc_width: usize,
}

impl InpaintingConfig {
    pub fn for_image(side: usize) -> Self {
        Self {
            mask: MaskKind::Region,
            max_area: 0.25,
            overlap: ((4 * side) as f64 / 128.0).round().max(1.0) as usize,
            overlap_weight: 10.0,
            lambda_rec: 0.999,
            lambda_adv: 0.001,
            disc_width: 64,
        }
    }

    pub fn validate(&self, side: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_area > 0.0 && self.max_area < 1.0,
            "inpainting max_area must be in (0, 1), got {}",
            self.max_area
        );
        anyhow::ensure!(
            side / 2 > 2 * self.overlap,
            "inpainting overlap band ({} px) leaves no hole in a {side}px image's central square",
            self.overlap
        );
        Ok(())
    }
}

/// A mask over a `side × side` image: the hole (hidden, to be filled) and the L2 weights
/// (1 in the hole, `overlap_weight` on the band of visible context around it, else 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub side: usize,
    pub hole: Vec<bool>,
    pub weight: Vec<f32>,
}

impl Mask {
    fn from_hole(hole: Vec<bool>, side: usize, overlap: usize, band_weight: f32) -> Self {
        let mut weight = vec![0.0; side * side];
        let o = overlap as isize;
        for y in 0..side {
            for x in 0..side {
                let p = y * side + x;
                if hole[p] {
                    weight[p] = 1.0;
                    continue;
                }
                // On the band when a hole pixel lies within `overlap` (Chebyshev distance).
                let near = (-o..=o).any(|dy| {
                    (-o..=o).any(|dx| {
                        let (yy, xx) = (y as isize + dy, x as isize + dx);
                        yy >= 0
                            && xx >= 0
                            && (yy as usize) < side
                            && (xx as usize) < side
                            && hole[yy as usize * side + xx as usize]
                    })
                });
                if near {
                    weight[p] = band_weight;
                }
            }
        }
        Self { side, hole, weight }
    }

    pub fn area(&self) -> f64 {
        self.hole.iter().filter(|&&h| h).count() as f64 / self.hole.len() as f64
    }
}

/// Draw a mask of `kind` for a `side × side` image.
pub fn draw_mask(cfg: &InpaintingConfig, side: usize, rng: &mut impl Rng) -> Mask {
    let mut hole = vec![false; side * side];
    match cfg.mask {
        MaskKind::Central => {
            // The predicted square is half the side; the hidden hole is that square less
            // the band, as in the paper (64-px square, 56-px hole, 4-px band).
            let sq = side / 2;
            let start = (side - sq) / 2 + cfg.overlap;
            let end = (side - sq) / 2 + sq - cfg.overlap;
            for y in start..end {
                for x in start..end {
                    hole[y * side + x] = true;
                }
            }
        }
        MaskKind::Blocks => {
            let target = rng.random_range(cfg.max_area / 2.0..=cfg.max_area);
            let want = (target * (side * side) as f64).round() as usize;
            let (lo, hi) = ((side / 8).max(1), (side / 4).max(2));
            let mut covered = 0;
            for _ in 0..1000 {
                if covered >= want {
                    break;
                }
                let b = rng.random_range(lo..=hi);
                let (y0, x0) = (
                    rng.random_range(0..=side - b),
                    rng.random_range(0..=side - b),
                );
                for y in y0..y0 + b {
                    for x in x0..x0 + b {
                        let p = y * side + x;
                        if !hole[p] && covered < want {
                            hole[p] = true;
                            covered += 1;
                        }
                    }
                }
            }
        }
        MaskKind::Region => {
            // Smooth noise: a 4×4 grid of uniform values, bilinearly upsampled; the highest
            // `area` of the pixels form the hole (one or a few blobs).
            let g = 4;
            let grid: Vec<f64> = (0..g * g).map(|_| rng.random::<f64>()).collect();
            let mut field: Vec<(f64, usize)> = (0..side * side)
                .map(|p| {
                    let (y, x) = (p / side, p % side);
                    let fy = (y as f64 + 0.5) / side as f64 * (g - 1) as f64;
                    let fx = (x as f64 + 0.5) / side as f64 * (g - 1) as f64;
                    let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
                    let (y1, x1) = ((y0 + 1).min(g - 1), (x0 + 1).min(g - 1));
                    let (wy, wx) = (fy - y0 as f64, fx - x0 as f64);
                    let v = grid[y0 * g + x0] * (1.0 - wy) * (1.0 - wx)
                        + grid[y0 * g + x1] * (1.0 - wy) * wx
                        + grid[y1 * g + x0] * wy * (1.0 - wx)
                        + grid[y1 * g + x1] * wy * wx;
                    (v, p)
                })
                .collect();
            let area = rng.random_range(cfg.max_area / 2.0..=cfg.max_area);
            let k = (area * (side * side) as f64).round() as usize;
            field.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, p) in field.iter().take(k) {
                hole[p] = true;
            }
        }
    }
    Mask::from_hole(hole, side, cfg.overlap, cfg.overlap_weight)
}

/// A network's prediction for `n` masked inputs (normalized, NCHW, flattened).
pub type Predict<'a> = dyn Fn(&[f32], usize) -> Vec<f32> + 'a;

pub struct Inpainting {
    pub cfg: InpaintingConfig,
    pub augment: AugmentConfig,
    pub norm: Normalize,
    pub channels: usize,
}

impl Inpainting {
    pub fn new(
        cfg: InpaintingConfig,
        augment: AugmentConfig,
        norm: Normalize,
        channels: usize,
    ) -> anyhow::Result<Self> {
        cfg.validate(augment.crop)?;
        Ok(Self {
            cfg,
            augment,
            norm,
            channels,
        })
    }
}

impl SampleMaker for Inpainting {
    fn samples_per_image(&self) -> usize {
        1
    }
    fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.augment.crop, self.augment.crop]
    }
    fn targets_per_image(&self) -> usize {
        0
    }
    fn aux_per_image(&self) -> usize {
        aux_len(self.channels, self.augment.crop)
    }
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let h = &set.header;
        let s = self.augment.crop;
        let plane = s * s;
        let img = self.channels * plane;
        let at = self.augment.sample(h.h, h.w, rng);
        let (target, rest) = out.aux.split_at_mut(img);
        crop_image(set, index, &self.augment, at, target);
        self.norm.apply(target);
        let mask = draw_mask(&self.cfg, s, rng);
        out.inputs.copy_from_slice(target);
        for ch in 0..self.channels {
            for (p, &hidden) in mask.hole.iter().enumerate() {
                if hidden {
                    // The data set mean is 0 after normalization.
                    out.inputs[ch * plane + p] = 0.0;
                }
            }
        }
        rest[..plane].copy_from_slice(&mask.weight);
        for (d, &hidden) in rest[plane..].iter_mut().zip(&mask.hole) {
            *d = if hidden { 1.0 } else { 0.0 };
        }
    }
}

impl PretextTask for Inpainting {
    fn name(&self) -> &'static str {
        "inpainting"
    }
    fn num_classes(&self) -> usize {
        0
    }
    /// Rows: the masked input, the L2 weight map (hole gray, band white), the original.
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()> {
        let rows = self.sample_rows(set, seed, None)?;
        preview::save(
            &preview::sheet(&rows, (96 / self.augment.crop).max(1)),
            path,
        )
    }
}

impl Inpainting {
    /// Preview rows; with `predict`, a column of predictions (in normalized units) is added
    /// after the masked input.
    pub fn sample_rows(
        &self,
        set: &ImageSet,
        seed: u64,
        predict: Option<&Predict<'_>>,
    ) -> anyhow::Result<Vec<Vec<Cell>>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let s = self.augment.crop;
        let (c, plane) = (self.channels, s * s);
        let img = c * plane;
        let picks = preview_indices(set);
        let n = picks.len();
        let mut inputs = Vec::with_capacity(n * img);
        let mut aux = Vec::with_capacity(n * self.aux_per_image());
        for index in picks {
            let (x, _, a) = make_one(self, set, index, &mut rng);
            inputs.extend(x);
            aux.extend(a);
        }
        let preds = predict.map(|f| f(&inputs, n));
        let show = |mut v: Vec<f32>| {
            self.norm.undo(&mut v);
            v
        };
        Ok((0..n)
            .map(|i| {
                let a = &aux[i * self.aux_per_image()..(i + 1) * self.aux_per_image()];
                let cell = |chw: Vec<f32>, c: usize| Cell::plain(chw, c, s);
                let mut row = vec![cell(show(inputs[i * img..(i + 1) * img].to_vec()), c)];
                if let Some(p) = &preds {
                    // Prediction pasted into the hole, context kept.
                    let mut fill = a[..img].to_vec();
                    for ch in 0..c {
                        for q in 0..plane {
                            if a[img + plane + q] > 0.5 {
                                fill[ch * plane + q] = p[i * img + ch * plane + q];
                            }
                        }
                    }
                    row.push(cell(show(fill), c));
                }
                let wmap: Vec<f32> = a[img..img + plane]
                    .iter()
                    .map(|&w| if w > 1.0 { 1.0 } else { w * 0.5 })
                    .collect();
                row.push(cell(wmap, 1));
                row.push(cell(show(a[..img].to_vec()), c));
                row
            })
            .collect())
    }
}

/// Context-encoder inpainting in the task registry.
pub struct InpaintingTask;
pub static TASK: InpaintingTask = InpaintingTask;

impl InpaintingTask {
    /// Pathak et al.'s network: the backbone as encoder, a channel-wise fully connected
    /// layer, up-convolutions back to the image, and the adversarial discriminator.
    fn network(rc: &RunConfig, dev: &Device) -> anyhow::Result<ContextEncoder> {
        let i: InpaintingConfig = rc.task.typed()?;
        ContextEncoder::new(
            &rc.backbone,
            rc.augment.crop,
            i.disc_width,
            i.lambda_rec,
            i.lambda_adv,
            dev,
        )
    }
}

impl Task for InpaintingTask {
    fn name(&self) -> &'static str {
        "inpainting"
    }
    fn defaults(&self, side: usize) -> TaskConfig {
        TaskConfig::of(self.name(), &InpaintingConfig::for_image(side))
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<InpaintingConfig>()
    }
    /// Pathak et al.: Adam, lr 2e-4, β1 0.5, no weight decay, a constant rate; no padding
    /// (the reconstruction target would include the black border).
    fn training(&self) -> TrainingDefaults {
        let mut optim = OptimConfig::rotnet();
        optim.kind = OptimKind::Adam;
        optim.lr = 2e-4;
        optim.betas = (0.5, 0.999);
        optim.weight_decay = 0.0;
        TrainingDefaults {
            pad: 0,
            optim,
            schedule: Schedule::Constant,
            ..TrainingDefaults::default()
        }
    }
    fn validate(&self, cfg: &TaskConfig, augment: &AugmentConfig) -> anyhow::Result<()> {
        cfg.typed::<InpaintingConfig>()?.validate(augment.crop)
    }
    fn backbone_path(&self) -> &'static str {
        "generator.backbone"
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        let c = job.cfg;
        let task = Inpainting::new(
            c.task.typed()?,
            c.augment.clone(),
            c.normalize.clone(),
            job.channels(),
        )?;
        let (task, model, outcome) = job.fit(task, Self::network(c, job.train_device)?)?;
        if job.draws() {
            // After training: masked input, the prediction pasted in, the mask, the original.
            let generator = model.generator.valid();
            let [cc, h, w] = task.input_shape();
            let predict = |x: &[f32], n: usize| -> Vec<f32> {
                let t =
                    Tensor::<4>::from_data(TensorData::new(x.to_vec(), [n, cc, h, w]), job.device);
                generator
                    .forward(t)
                    .into_data()
                    .try_into_vec::<f32>()
                    .unwrap_or_default()
            };
            let rows = task.sample_rows(&job.sample(), c.train.seed + 1, Some(&predict))?;
            preview::save(
                &preview::sheet(&rows, (96 / c.augment.crop).max(1)),
                &job.run.join("inpainting.png"),
            )?;
        }
        Ok(outcome)
    }
    fn random_backbone(
        &self,
        rc: &RunConfig,
        dev: &Device,
    ) -> anyhow::Result<crate::models::Backbone> {
        Ok(Self::network(rc, dev)?.generator.backbone)
    }
}

/// Layout of a context-encoder sample's float targets: the clean image, the L2 weight map
/// (1 in the hole, the overlap weight on the band, 0 elsewhere) and the hole mask.
pub fn aux_len(c: usize, side: usize) -> usize {
    c * side * side + 2 * side * side
}

impl Learner for ContextEncoder {
    fn train_step(self, step: Step<'_>) -> (Self, StepStats) {
        let (batch, dev, optim, lr) = step.parts();
        let [_, c, s, _] = batch.shape;
        let n = batch.images;
        let plane = s * s;
        let img = c * plane;
        // Normalizers from the host copy: no device read-back needed.
        let (mut wsum, mut holes) = (0f64, 0f64);
        for a in batch.aux.chunks_exact(img + 2 * plane) {
            wsum += a[img..img + plane].iter().map(|&v| v as f64).sum::<f64>();
            holes += a[img + plane..].iter().map(|&v| v as f64).sum::<f64>();
        }
        let x = Tensor::<4>::from_data(TensorData::new(batch.inputs, batch.shape), dev);
        let aux = Tensor::<2>::from_data(TensorData::new(batch.aux, [n, img + 2 * plane]), dev);
        let target = aux.clone().slice([0..n, 0..img]).reshape([n, c, s, s]);
        let weight = aux
            .clone()
            .slice([0..n, img..img + plane])
            .reshape([n, 1, s, s]);
        let hole = aux
            .slice([0..n, img + plane..img + 2 * plane])
            .reshape([n, 1, s, s]);

        let pred = self.generator.forward(x);
        let sq = (pred.clone() - target.clone()).powi_scalar(2);
        let rec = (sq.clone() * weight).sum() / (c as f64 * wsum.max(1.0)) as f32;
        let hole_mse = (sq.detach() * hole.clone()).sum() / (c as f64 * holes.max(1.0)) as f32;
        let composite = pred * hole.clone() + target.clone() * (hole.neg() + 1.0);
        let adv = softplus(self.disc.forward(composite.clone()).neg(), 1.0).mean();
        let loss_g = rec * self.lambda_rec + adv * self.lambda_adv;
        let d_real = softplus(self.disc.forward(target).neg(), 1.0).mean();
        let d_fake = softplus(self.disc.forward(composite.detach()), 1.0).mean();
        let loss_d = (d_real + d_fake) * 0.5;

        let stats = StepStats {
            loss_sum: loss_g.clone().detach() * n as f32,
            score_sum: hole_mse * n as f32,
            count: n as u64,
        };
        // Each player moves only its own parameters on its own loss.
        let mut g = loss_g.backward();
        let grads_g = GradientsParams::from_module(&mut g, &self.generator);
        let mut d = loss_d.backward();
        let grads_d = GradientsParams::from_module(&mut d, &self.disc);
        let model = optim.step(lr, self, grads_g);
        (optim.step(lr, model, grads_d), stats)
    }
    fn score_name(&self) -> &'static str {
        "hole MSE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mask: MaskKind) -> InpaintingConfig {
        InpaintingConfig {
            mask,
            ..InpaintingConfig::for_image(32)
        }
    }

    #[test]
    fn central_mask_by_hand() {
        // 32 px: a 16-px square at 8..24, the hole is 9..23 (overlap 1), the band the ring.
        let m = draw_mask(
            &cfg(MaskKind::Central),
            32,
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        assert_eq!(m.hole.iter().filter(|&&h| h).count(), 14 * 14);
        for y in 0..32 {
            for x in 0..32 {
                let p = y * 32 + x;
                let in_hole = (9..23).contains(&y) && (9..23).contains(&x);
                let in_square = (8..24).contains(&y) && (8..24).contains(&x);
                assert_eq!(m.hole[p], in_hole);
                let w = if in_hole {
                    1.0
                } else if in_square {
                    10.0
                } else {
                    0.0
                };
                assert_eq!(m.weight[p], w, "({y}, {x})");
            }
        }
    }

    #[test]
    fn random_masks_cover_the_stated_area_with_the_band_around_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for kind in [MaskKind::Region, MaskKind::Blocks] {
            for _ in 0..50 {
                let m = draw_mask(&cfg(kind), 32, &mut rng);
                let a = m.area();
                assert!(
                    (0.125 - 1e-3..=0.25 + 1e-3).contains(&a),
                    "{kind:?} area {a}"
                );
                for p in 0..32 * 32 {
                    let (y, x): (usize, usize) = (p / 32, p % 32);
                    let touches = (y.saturating_sub(1)..=(y + 1).min(31)).any(|yy| {
                        (x.saturating_sub(1)..=(x + 1).min(31)).any(|xx| m.hole[yy * 32 + xx])
                    });
                    let want = if m.hole[p] {
                        1.0
                    } else if touches {
                        10.0
                    } else {
                        0.0
                    };
                    assert_eq!(m.weight[p], want);
                }
            }
        }
    }

    #[test]
    fn the_hole_is_filled_with_the_mean() {
        let px: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 13 % 256) as u8).collect();
        let set = ImageSet::unlabelled(32, 32, 3, px);
        let task = Inpainting::new(
            cfg(MaskKind::Central),
            AugmentConfig {
                crop: 32,
                pad: 0,
                flip: false,
            },
            Normalize {
                mean: vec![0.5; 3],
                std: vec![0.25; 3],
            },
            3,
        )
        .unwrap();
        let mut inputs = vec![0.0; 3 * 1024];
        let mut aux = vec![0.0; task.aux_per_image()];
        task.make(
            &set,
            0,
            &mut ChaCha8Rng::seed_from_u64(0),
            SampleOut {
                inputs: &mut inputs,
                targets: &mut [],
                aux: &mut aux,
            },
        );
        let hole = &aux[3 * 1024 + 1024..];
        for ch in 0..3 {
            for p in 0..1024 {
                let (x, t) = (inputs[ch * 1024 + p], aux[ch * 1024 + p]);
                if hole[p] > 0.5 {
                    assert_eq!(x, 0.0);
                } else {
                    assert_eq!(x, t);
                }
            }
        }
    }
}
