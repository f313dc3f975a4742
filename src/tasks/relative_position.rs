//! Relative patch position (Doersch, Gupta & Efros, ICCV 2015). Two patches of a 3×3 grid,
//! the center one and one of its 8 neighbors, go through one shared trunk; the head names
//! which neighbor it is. Patches are separated by a gap and jittered so they share no
//! border or continued line; color dropping, per-patch normalization and occasional
//! down-up-sampling take away the low-level shortcuts (chromatic aberration, texture).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::{PretextTask, tiles};
use super::{Task, TaskConfig};
use crate::data::ImageSet;
use crate::data::augment::AugmentConfig;
use crate::data::loader::{SampleMaker, SampleOut, make_one, preview_indices};
use crate::draw::preview::{self, Cell};
use crate::models::tiles::TileNet;
use crate::run::{Job, RunConfig};
use crate::train::TrainOutcome;

/// Grid offsets (row, column) of the 8 labels, reading order around the center:
/// 0 top-left, 1 top, 2 top-right, 3 left, 4 right, 5 bottom-left, 6 bottom, 7 bottom-right.
pub const OFFSETS: [(isize, isize); 8] = [
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, -1),
    (0, 1),
    (1, -1),
    (1, 0),
    (1, 1),
];

/// The color countermeasure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorShortcut {
    /// Keep one random channel, replace the others with Gaussian noise (std 1/100 of the
    /// kept channel's) — the paper's color dropping.
    Drop,
    /// Leave color alone.
    Keep,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelativePositionConfig {
    /// Patch side (paper: 96 on 150k–450k-pixel images; default: a quarter of the image
    /// side, 8 px on CIFAR).
    pub patch: usize,
    /// Gap between neighboring patches (paper: 48 = patch/2; shrunk until the grid fits,
    /// but kept above twice the jitter so jittered patches never touch).
    pub gap: usize,
    /// Random shift of each patch, up to ± this many pixels per axis (paper: 7 of 96).
    pub jitter: usize,
    /// (`colour` in runs made before the American spelling.)
    #[serde(alias = "colour")]
    pub color: ColorShortcut,
    /// Fraction of patches downsampled and upsampled again (paper: a third).
    pub down_up: f64,
    /// Side they are downsampled to (paper: ~10 of 96, i.e. ~100 pixels; default half the
    /// patch, since ~1 px would erase an 8 px patch).
    pub down_side: usize,
    /// Per-patch fully connected width (paper's fc6: 4096; default 256).
    pub patch_features: usize,
    /// Width over the concatenated pair (paper's fc7: 4096; default 512).
    pub hidden: usize,
}

impl RelativePositionConfig {
    /// The paper's settings scaled to images of `side` pixels.
    pub fn for_image(side: usize) -> Self {
        let mut patch = (side / 4).max(1);
        let jitter = ((patch as f64 * 7.0 / 96.0).round() as usize).max(1);
        let mut gap = (patch / 2).max(2 * jitter + 1);
        while patch > 1 && 3 * patch + 2 * gap + 2 * jitter > side {
            if gap > 2 * jitter + 1 {
                gap -= 1;
            } else {
                patch -= 1;
            }
        }
        Self {
            patch,
            gap,
            jitter,
            color: ColorShortcut::Drop,
            down_up: 1.0 / 3.0,
            down_side: (patch / 2).max(1),
            patch_features: 256,
            hidden: 512,
        }
    }

    /// Side of the square the grid (with jitter) occupies.
    pub fn span(&self) -> usize {
        3 * self.patch + 2 * self.gap + 2 * self.jitter
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.patch >= 1, "relative-position patch must be ≥ 1 px");
        anyhow::ensure!(
            self.gap > 2 * self.jitter,
            "relative-position gap ({} px) must exceed twice the jitter ({} px), or jittered \
             patches could touch and share a border",
            self.gap,
            self.jitter
        );
        anyhow::ensure!(
            self.down_side <= self.patch,
            "relative-position down_side ({}) is larger than the patch ({})",
            self.down_side,
            self.patch
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.down_up),
            "relative-position down_up fraction must be in [0, 1], got {}",
            self.down_up
        );
        Ok(())
    }
}

pub struct RelativePosition {
    pub cfg: RelativePositionConfig,
    pub channels: usize,
}

impl RelativePosition {
    pub fn new(cfg: RelativePositionConfig, channels: usize) -> anyhow::Result<Self> {
        cfg.validate()?;
        Ok(Self { cfg, channels })
    }

    /// Top-left corners (y, x) of the center patch and of neighbor `label`, without jitter,
    /// for a grid whose jitter margin starts at (`oy`, `ox`).
    pub fn corners(&self, label: usize, oy: usize, ox: usize) -> ((usize, usize), (usize, usize)) {
        let step = (self.cfg.patch + self.cfg.gap) as isize;
        let c = (
            (oy + self.cfg.jitter) as isize + step,
            (ox + self.cfg.jitter) as isize + step,
        );
        let (dy, dx) = OFFSETS[label];
        let n = (c.0 + dy * step, c.1 + dx * step);
        ((c.0 as usize, c.1 as usize), (n.0 as usize, n.1 as usize))
    }

    fn patch(
        &self,
        set: &ImageSet,
        index: usize,
        y: usize,
        x: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<f32> {
        let h = &set.header;
        let (p, c, j) = (self.cfg.patch, self.channels, self.cfg.jitter as i64);
        let y = (y as i64 + rng.random_range(-j..=j)) as usize;
        let x = (x as i64 + rng.random_range(-j..=j)) as usize;
        let mut t = vec![0.0; c * p * p];
        tiles::cut(set.image(index), (h.h, h.w, h.c), y, x, p, &[], &mut t);
        if rng.random_bool(self.cfg.down_up) {
            tiles::down_up(&mut t, p, self.cfg.down_side);
        }
        let plane = p * p;
        if self.cfg.color == ColorShortcut::Drop && c > 1 {
            let keep = rng.random_range(0..c);
            let kept = &t[keep * plane..(keep + 1) * plane];
            let mean = kept.iter().sum::<f32>() / plane as f32;
            let std =
                (kept.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / plane as f32).sqrt();
            let noise = Normal::new(0.0f32, (std / 100.0).max(1e-6)).expect("finite std");
            for ch in (0..c).filter(|&ch| ch != keep) {
                for v in &mut t[ch * plane..(ch + 1) * plane] {
                    *v = noise.sample(rng);
                }
            }
        }
        // Per-patch mean removal per channel (the paper's per-patch normalization).
        for pl in t.chunks_exact_mut(plane) {
            let mean = pl.iter().sum::<f32>() / plane as f32;
            pl.iter_mut().for_each(|v| *v = (*v - mean) * 4.0);
        }
        t
    }
}

impl SampleMaker for RelativePosition {
    fn samples_per_image(&self) -> usize {
        2
    }
    fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.cfg.patch, self.cfg.patch]
    }
    fn targets_per_image(&self) -> usize {
        1
    }
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let h = &set.header;
        let span = self.cfg.span();
        let oy = rng.random_range(0..=h.h - span);
        let ox = rng.random_range(0..=h.w - span);
        let label = rng.random_range(0..8);
        let (c, n) = self.corners(label, oy, ox);
        let per = out.inputs.len() / 2;
        let a = self.patch(set, index, c.0, c.1, rng);
        let b = self.patch(set, index, n.0, n.1, rng);
        out.inputs[..per].copy_from_slice(&a);
        out.inputs[per..].copy_from_slice(&b);
        out.targets[0] = label as i64;
    }
}

impl PretextTask for RelativePosition {
    fn name(&self) -> &'static str {
        "relative-position"
    }
    fn num_classes(&self) -> usize {
        8
    }
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()> {
        // Each row: the image with the pair's cells marked, then the two patches as the
        // network sees them, captioned with the label.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (p, c) = (self.cfg.patch, self.channels);
        let per = c * p * p;
        let h = &set.header;
        let rows: Vec<Vec<Cell>> = preview_indices(set)
            .into_iter()
            .map(|index| {
                let (inputs, targets, _) = make_one(self, set, index, &mut rng);
                let label = targets[0] as usize;
                let mut img = vec![0.0; h.c * h.h * h.w];
                tiles::cut(
                    set.image(index),
                    (h.h, h.w, h.c),
                    0,
                    0,
                    h.h.min(h.w),
                    &[],
                    &mut img,
                );
                // Mark the cells of the pair at their unjittered places in a centered grid.
                let (oy, ox) = ((h.h - self.cfg.span()) / 2, (h.w - self.cfg.span()) / 2);
                let (ca, nb) = self.corners(label, oy, ox);
                let side = h.h.min(h.w);
                for (k, (y, x)) in [ca, nb].into_iter().enumerate() {
                    for d in 0..p {
                        for (yy, xx) in [
                            (y, x + d),
                            (y + p - 1, x + d),
                            (y + d, x),
                            (y + d, x + p - 1),
                        ] {
                            for ch in 0..h.c {
                                let v = if (ch == 0) == (k == 0) { 1.0 } else { 0.0 };
                                img[ch * side * side + yy * side + xx] = v;
                            }
                        }
                    }
                }
                vec![
                    Cell {
                        chw: img,
                        c: h.c,
                        h: side,
                        w: side,
                        caption: String::new(),
                    },
                    Cell {
                        chw: tiles::for_display(&inputs[..per]),
                        c,
                        h: p,
                        w: p,
                        caption: String::new(),
                    },
                    Cell {
                        chw: tiles::for_display(&inputs[per..]),
                        c,
                        h: p,
                        w: p,
                        caption: format!("{label}"),
                    },
                ]
            })
            .collect();
        preview::save(&preview::sheet(&rows, (96 / h.h.min(h.w)).max(2)), path)
    }
}

/// Relative patch position in the task registry.
pub struct RelativePositionTask;
pub static TASK: RelativePositionTask = RelativePositionTask;

impl RelativePositionTask {
    /// Doersch et al.'s pair network: the shared trunk over both patches, fc6 per patch,
    /// fc7 over the pair, eight classes.
    fn network(rc: &RunConfig, dev: &burn::tensor::Device) -> anyhow::Result<TileNet> {
        let r: RelativePositionConfig = rc.task.typed()?;
        Ok(TileNet::new(
            &rc.backbone,
            r.patch,
            2,
            r.patch_features,
            r.hidden,
            8,
            dev,
        ))
    }
}

impl Task for RelativePositionTask {
    fn name(&self) -> &'static str {
        "relative-position"
    }
    fn defaults(&self, side: usize) -> TaskConfig {
        TaskConfig::of(self.name(), &RelativePositionConfig::for_image(side))
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<RelativePositionConfig>()
    }
    fn validate(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<()> {
        cfg.typed::<RelativePositionConfig>()?.validate()
    }
    fn min_image_size(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<usize> {
        Ok(cfg.typed::<RelativePositionConfig>()?.span())
    }
    fn inputs_per_image(&self, _cfg: &TaskConfig) -> anyhow::Result<usize> {
        Ok(2)
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        let task = RelativePosition::new(job.cfg.task.typed()?, job.channels())?;
        let model = Self::network(job.cfg, job.train_device)?;
        Ok(job.fit(task, model)?.2)
    }
    fn random_backbone(
        &self,
        rc: &RunConfig,
        dev: &burn::tensor::Device,
    ) -> anyhow::Result<crate::models::Backbone> {
        Ok(Self::network(rc, dev)?.backbone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar_geometry_fits_32_pixels() {
        let cfg = RelativePositionConfig::for_image(32);
        assert_eq!((cfg.patch, cfg.gap, cfg.jitter), (8, 3, 1));
        assert_eq!(cfg.span(), 32);
        // At any size the jittered grid fits, with a gap and some jitter.
        for side in [24, 48, 64, 96, 224, 384] {
            let c = RelativePositionConfig::for_image(side);
            assert!(
                c.span() <= side && c.gap > 0 && c.jitter >= 1,
                "{side}: {c:?}"
            );
        }
        // At ImageNet-like size the jitter is the paper's 7/96 of the patch.
        assert_eq!(RelativePositionConfig::for_image(384).jitter, 7);
    }

    #[test]
    fn the_eight_labels_map_to_the_right_offsets() {
        let task = RelativePosition::new(RelativePositionConfig::for_image(32), 3).unwrap();
        // Grid origin (0, 0): jitter 1, so the center patch starts at 1 + 8 + 3 = 12.
        let step = 11;
        for (label, &(dy, dx)) in OFFSETS.iter().enumerate() {
            let (c, n) = task.corners(label, 0, 0);
            assert_eq!(c, (12, 12));
            assert_eq!(
                (n.0 as isize - 12, n.1 as isize - 12),
                (dy * step, dx * step),
                "label {label}"
            );
        }
        // Reading order: label 1 is straight above, 4 right, 6 below.
        assert_eq!(task.corners(1, 0, 0).1, (1, 12));
        assert_eq!(task.corners(4, 0, 0).1, (12, 23));
        assert_eq!(task.corners(6, 0, 0).1, (23, 12));
        // Every neighbor lies inside the 32 px image even with the maximal jitter.
        for label in 0..8 {
            let (_, n) = task.corners(label, 0, 0);
            assert!(n.0 >= 1 && n.0 + 8 < 32 && n.1 >= 1 && n.1 + 8 < 32);
        }
    }

    #[test]
    fn color_dropping_keeps_one_channel() {
        let mut cfg = RelativePositionConfig::for_image(32);
        cfg.down_up = 0.0;
        let task = RelativePosition::new(cfg, 3).unwrap();
        let px: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 13 % 256) as u8).collect();
        let set = ImageSet::unlabelled(32, 32, 3, px);
        let p = task.patch(&set, 0, 10, 10, &mut ChaCha8Rng::seed_from_u64(0));
        let spread = |pl: &[f32]| {
            let m = pl.iter().sum::<f32>() / pl.len() as f32;
            (pl.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / pl.len() as f32).sqrt()
        };
        let s: Vec<f32> = p.chunks_exact(64).map(spread).collect();
        let big = s.iter().filter(|&&v| v > 0.1).count();
        assert_eq!(
            big, 1,
            "one channel keeps its content, two are faint noise: {s:?}"
        );
    }
}
