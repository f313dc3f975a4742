//! Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018). Each image is shown in all
//! of its rotations within the same batch (128 images → 512 inputs) and the head predicts
//! which rotation it sees. Multiples of 90° are exact (transpose / flip, no interpolation);
//! the 8-angle ablation adds the 45° multiples by bilinear resampling.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::PretextTask;
use super::{Task, TaskConfig};
use crate::data::ImageSet;
use crate::data::augment::{AugmentConfig, Normalize, crop_image};
use crate::data::loader::{SampleMaker, SampleOut, make_one, preview_indices};
use crate::draw::preview::{self, Cell};
use crate::models::head::ClassifierNet;
use crate::run::Job;
use crate::train::TrainOutcome;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RotationConfig {
    /// 4 (0/90/180/270°, the paper's choice) or 8 (multiples of 45°, its ablation).
    pub angles: usize,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self { angles: 4 }
    }
}

pub struct Rotation {
    pub cfg: RotationConfig,
    pub augment: AugmentConfig,
    pub norm: Normalize,
    pub channels: usize,
}

/// Rotate a CHW image of `h × w` counter-clockwise by `k` quarter turns (as `numpy.rot90`).
/// Returns the rotated image and its `(h, w)`.
pub fn rot90(src: &[f32], c: usize, h: usize, w: usize, k: usize) -> (Vec<f32>, usize, usize) {
    let k = k % 4;
    let (oh, ow) = if k % 2 == 1 { (w, h) } else { (h, w) };
    let mut out = vec![0.0; src.len()];
    for ch in 0..c {
        let s = &src[ch * h * w..(ch + 1) * h * w];
        let o = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        for y in 0..oh {
            for x in 0..ow {
                let (sy, sx) = match k {
                    0 => (y, x),
                    1 => (x, w - 1 - y),
                    2 => (h - 1 - y, w - 1 - x),
                    _ => (h - 1 - x, y),
                };
                o[y * ow + x] = s[sy * w + sx];
            }
        }
    }
    (out, oh, ow)
}

/// Rotate a square CHW image counter-clockwise by `degrees` about its center, bilinear,
/// zero outside the source. Agrees with [`rot90`] at multiples of 90°.
pub fn rotate_bilinear(src: &[f32], c: usize, s: usize, degrees: f32) -> Vec<f32> {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let center = (s as f32 - 1.0) / 2.0;
    let mut out = vec![0.0; src.len()];
    for y in 0..s {
        for x in 0..s {
            let (u, v) = (x as f32 - center, y as f32 - center);
            let su = u * cos - v * sin + center;
            let sv = u * sin + v * cos + center;
            let (x0, y0) = (su.floor(), sv.floor());
            let (fx, fy) = (su - x0, sv - y0);
            for ch in 0..c {
                let plane = &src[ch * s * s..(ch + 1) * s * s];
                let at = |yy: f32, xx: f32| -> f32 {
                    if yy < 0.0 || xx < 0.0 || yy >= s as f32 || xx >= s as f32 {
                        0.0
                    } else {
                        plane[yy as usize * s + xx as usize]
                    }
                };
                let v = at(y0, x0) * (1.0 - fx) * (1.0 - fy)
                    + at(y0, x0 + 1.0) * fx * (1.0 - fy)
                    + at(y0 + 1.0, x0) * (1.0 - fx) * fy
                    + at(y0 + 1.0, x0 + 1.0) * fx * fy;
                out[ch * s * s + y * s + x] = v;
            }
        }
    }
    out
}

impl Rotation {
    pub fn new(
        cfg: RotationConfig,
        augment: AugmentConfig,
        norm: Normalize,
        channels: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.angles == 4 || cfg.angles == 8,
            "rotation angles must be 4 (multiples of 90°) or 8 (multiples of 45°), got {}",
            cfg.angles
        );
        Ok(Self {
            cfg,
            augment,
            norm,
            channels,
        })
    }

    /// The rotation of label `k`, applied to a square CHW crop.
    pub fn rotate(&self, crop: &[f32], k: usize) -> Vec<f32> {
        let s = self.augment.crop;
        let step = 360 / self.cfg.angles;
        let deg = k * step;
        if deg.is_multiple_of(90) {
            rot90(crop, self.channels, s, s, deg / 90).0
        } else {
            rotate_bilinear(crop, self.channels, s, deg as f32)
        }
    }

    fn degrees(&self, k: usize) -> usize {
        k * 360 / self.cfg.angles
    }
}

impl SampleMaker for Rotation {
    fn samples_per_image(&self) -> usize {
        self.cfg.angles
    }
    fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.augment.crop, self.augment.crop]
    }
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let (inputs, targets) = (out.inputs, out.targets);
        let h = &set.header;
        let s = self.augment.crop;
        let per = self.channels * s * s;
        let mut crop = vec![0.0; per];
        let at = self.augment.sample(h.h, h.w, rng);
        crop_image(set, index, &self.augment, at, &mut crop);
        for k in 0..self.cfg.angles {
            let mut r = self.rotate(&crop, k);
            self.norm.apply(&mut r);
            inputs[k * per..(k + 1) * per].copy_from_slice(&r);
            targets[k] = k as i64;
        }
    }
}

impl PretextTask for Rotation {
    fn name(&self) -> &'static str {
        "rotation"
    }
    fn num_classes(&self) -> usize {
        self.cfg.angles
    }
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()> {
        let s = self.augment.crop;
        let per = self.channels * s * s;
        let k = self.cfg.angles;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows: Vec<Vec<Cell>> = preview_indices(set)
            .into_iter()
            .map(|index| {
                let (inputs, targets, _) = make_one(self, set, index, &mut rng);
                (0..k)
                    .map(|j| {
                        let mut chw = inputs[j * per..(j + 1) * per].to_vec();
                        self.norm.undo(&mut chw);
                        Cell {
                            chw,
                            c: self.channels,
                            h: s,
                            w: s,
                            caption: format!("{}°", self.degrees(targets[j] as usize)),
                        }
                    })
                    .collect()
            })
            .collect();
        let scale = (96 / s).max(1);
        preview::save(&preview::sheet(&rows, scale), path)
    }
}

/// Rotation prediction in the task registry.
pub struct RotationTask;
pub static TASK: RotationTask = RotationTask;

impl Task for RotationTask {
    fn name(&self) -> &'static str {
        "rotation"
    }
    fn defaults(&self, _side: usize) -> TaskConfig {
        TaskConfig::of(self.name(), &RotationConfig::default())
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<RotationConfig>()
    }
    fn validate(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<()> {
        let r: RotationConfig = cfg.typed()?;
        anyhow::ensure!(
            r.angles == 4 || r.angles == 8,
            "rotation angles must be 4 (multiples of 90°) or 8 (multiples of 45°), got {}",
            r.angles
        );
        Ok(())
    }
    fn inputs_per_image(&self, cfg: &TaskConfig) -> anyhow::Result<usize> {
        Ok(cfg.typed::<RotationConfig>()?.angles)
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        let c = job.cfg;
        let task = Rotation::new(
            c.task.typed()?,
            c.augment.clone(),
            c.normalize.clone(),
            job.channels(),
        )?;
        let model = ClassifierNet::new(&c.backbone, task.num_classes(), job.train_device);
        Ok(job.fit(task, model)?.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The 3×2 image (3 rows, 2 columns), one channel:
    //   1 2
    //   3 4
    //   5 6
    const IMG: [f32; 6] = [1., 2., 3., 4., 5., 6.];

    #[test]
    fn quarter_turns_of_a_3x2_image_by_hand() {
        assert_eq!(rot90(&IMG, 1, 3, 2, 0), (IMG.to_vec(), 3, 2));
        // 90° counter-clockwise: the right column becomes the top row.
        assert_eq!(
            rot90(&IMG, 1, 3, 2, 1),
            (vec![2., 4., 6., 1., 3., 5.], 2, 3)
        );
        assert_eq!(
            rot90(&IMG, 1, 3, 2, 2),
            (vec![6., 5., 4., 3., 2., 1.], 3, 2)
        );
        // 270° counter-clockwise (= 90° clockwise): the left column becomes the top row, reversed.
        assert_eq!(
            rot90(&IMG, 1, 3, 2, 3),
            (vec![5., 3., 1., 6., 4., 2.], 2, 3)
        );
        // Four quarter turns are the identity.
        let (mut x, mut h, mut w) = (IMG.to_vec(), 3, 2);
        for _ in 0..4 {
            (x, h, w) = rot90(&x, 1, h, w, 1);
        }
        assert_eq!((x, h, w), (IMG.to_vec(), 3, 2));
    }

    #[test]
    fn channels_rotate_independently() {
        let two: Vec<f32> = IMG
            .iter()
            .chain(IMG.iter().map(|v| v * 10.0).collect::<Vec<_>>().iter())
            .copied()
            .collect();
        let (r, _, _) = rot90(&two, 2, 3, 2, 1);
        assert_eq!(&r[..6], &[2., 4., 6., 1., 3., 5.]);
        assert_eq!(&r[6..], &[20., 40., 60., 10., 30., 50.]);
    }

    #[test]
    fn bilinear_agrees_with_exact_quarter_turns() {
        let s = 5;
        let img: Vec<f32> = (0..2 * s * s).map(|i| (i * 7 % 13) as f32).collect();
        for k in 0..4 {
            let exact = rot90(&img, 2, s, s, k).0;
            let interp = rotate_bilinear(&img, 2, s, 90.0 * k as f32);
            for (a, b) in exact.iter().zip(&interp) {
                assert!((a - b).abs() < 1e-3, "k={k}: {a} vs {b}");
            }
        }
        // 45°: the center pixel stays put. The top-left corner (u, v) = (-2, -2) samples the
        // source at x = 2, y = 2 - 2√2 ≈ -0.83: a blend of the zero border (weight 2√2 - 2)
        // and source pixel (0, 2) (weight 3 - 2√2).
        let r = rotate_bilinear(&img, 1, s, 45.0);
        assert!((r[2 * s + 2] - img[2 * s + 2]).abs() < 1e-4);
        let w = 3.0 - 2.0 * 2f32.sqrt();
        assert!(
            (r[0] - w * img[2]).abs() < 1e-4,
            "{} vs {}",
            r[0],
            w * img[2]
        );
    }

    #[test]
    fn a_sample_holds_every_rotation_of_one_crop() {
        let set = ImageSet::unlabelled(2, 2, 1, vec![0, 255, 51, 102]);
        let task = Rotation::new(
            RotationConfig::default(),
            AugmentConfig {
                crop: 2,
                pad: 0,
                flip: false,
            },
            Normalize {
                mean: vec![0.0],
                std: vec![1.0],
            },
            1,
        )
        .unwrap();
        let mut inputs = vec![0.0; 16];
        let mut targets = vec![0; 4];
        task.make(
            &set,
            0,
            &mut ChaCha8Rng::seed_from_u64(0),
            SampleOut {
                inputs: &mut inputs,
                targets: &mut targets,
                aux: &mut [],
            },
        );
        assert_eq!(targets, vec![0, 1, 2, 3]);
        let q = |v: &[f32]| {
            v.iter()
                .map(|x| (x * 255.0).round() as u8)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(&inputs[0..4]), vec![0, 255, 51, 102]);
        assert_eq!(q(&inputs[4..8]), vec![255, 102, 0, 51]);
        assert_eq!(q(&inputs[8..12]), vec![102, 51, 255, 0]);
        assert_eq!(q(&inputs[12..16]), vec![51, 0, 102, 255]);
    }
}
