//! Jigsaw puzzles (Noroozi & Favaro, ECCV 2016). A square crop is cut into a 3×3 grid of
//! cells; one tile is taken at a random place inside each cell (so neighboring tiles are
//! separated by a random gap), each tile is normalized on its own, 30% of images are shown
//! in grayscale and each color channel of a tile is jittered by a pixel or two. The tiles
//! are shuffled by one permutation of a fixed set chosen for maximal Hamming distance, and
//! the network (one shared trunk per tile, features concatenated) names the permutation.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
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

/// How the greedy algorithm picks the next permutation from the candidates' mean Hamming
/// distance to the set chosen so far (the paper's ablation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The farthest candidate (the paper's choice: hardest, least ambiguous task).
    Max,
    /// A candidate near the median distance (the official code's "mean").
    Average,
    /// The nearest candidate (an easy, ambiguous task).
    Min,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JigsawConfig {
    /// Side of one grid cell; the puzzle crop is 3 × cell (paper: 85 → 255 of a 256 image;
    /// default: a third of the image side, 10 px on CIFAR).
    pub cell: usize,
    /// Side of the tile taken inside each cell (paper: 64 of 85, ≈ 3/4; default
    /// round(cell·64/85), 8 px on CIFAR).
    pub tile: usize,
    /// Size of the permutation set (paper: 1000; 100 by default at small scale).
    pub permutations: usize,
    pub selection: Selection,
    /// Seed of the permutation set (the set is saved in the run as `permutations.json`).
    pub permutation_seed: u64,
    /// Fraction of images shown in grayscale (paper: 0.3).
    #[serde(alias = "greyscale")]
    pub grayscale: f64,
    /// Per-channel jitter in pixels, each channel of a tile moved by up to ± this much
    /// (paper: 2 at 64 px tiles; default 1 below 32 px tiles so the countermeasure stays on).
    pub channel_jitter: usize,
    /// Width of the per-tile fully connected layer (paper's fc6: 1024; default 256).
    pub tile_features: usize,
    /// Width of the layer over the concatenated tiles (paper's fc7: 4096; default 512).
    pub hidden: usize,
}

impl JigsawConfig {
    /// The paper's settings scaled to images of `side` pixels.
    pub fn for_image(side: usize) -> Self {
        let cell = side / 3;
        let tile = ((cell as f64 * 64.0 / 85.0).round() as usize).clamp(1, cell);
        Self {
            cell,
            tile,
            permutations: 100,
            selection: Selection::Max,
            permutation_seed: 0,
            grayscale: 0.3,
            channel_jitter: if tile >= 32 {
                (tile * 2).div_ceil(64)
            } else {
                1
            },
            tile_features: 256,
            hidden: 512,
        }
    }

    /// Reject geometry that cannot work, before any training.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.cell >= 1 && self.tile >= 1,
            "jigsaw cell and tile must be ≥ 1 px"
        );
        anyhow::ensure!(
            self.tile <= self.cell,
            "jigsaw tile ({} px) is larger than its grid cell ({} px)",
            self.tile,
            self.cell
        );
        anyhow::ensure!(
            (2..=362_880).contains(&self.permutations),
            "jigsaw needs between 2 and 9! = 362880 permutations, got {}",
            self.permutations
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.grayscale),
            "jigsaw grayscale fraction must be in [0, 1], got {}",
            self.grayscale
        );
        Ok(())
    }
}

/// A permutation of the 9 cells: input slot `i` shows the tile of cell `p[i]`.
pub type Perm = [u8; 9];

/// Every entry a permutation of the tiles 0..=8, and no two the same (a duplicate makes
/// two classes indistinguishable; a tile index out of range would crash the loader).
pub fn check_perms(perms: &[Perm]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (i, p) in perms.iter().enumerate() {
        let mut sorted = *p;
        sorted.sort_unstable();
        anyhow::ensure!(
            sorted == [0, 1, 2, 3, 4, 5, 6, 7, 8],
            "entry {i} ({p:?}) is not a permutation of the tiles 0..=8"
        );
        anyhow::ensure!(
            seen.insert(*p),
            "entry {i} ({p:?}) repeats an earlier permutation"
        );
    }
    anyhow::ensure!(perms.len() >= 2, "a jigsaw needs at least 2 permutations");
    Ok(())
}

fn hamming(a: &Perm, b: &Perm) -> u32 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u32
}

/// All 9! permutations in lexicographic order.
fn all_perms() -> Vec<Perm> {
    let mut out = Vec::with_capacity(362_880);
    let mut p: Perm = [0, 1, 2, 3, 4, 5, 6, 7, 8];
    loop {
        out.push(p);
        // Next lexicographic permutation.
        let Some(i) = (0..8).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..9).rev().find(|&j| p[j] > p[i]).expect("exists");
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}

/// The paper's greedy algorithm (Algorithm 1): start from a random permutation; at each
/// step add the candidate chosen by `selection` from its mean Hamming distance to the
/// permutations already chosen. Deterministic for a seed.
pub fn permutation_set(n: usize, selection: Selection, seed: u64) -> Vec<Perm> {
    let cands = all_perms();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut used = vec![false; cands.len()];
    // Sum of distances to the chosen set (the mean up to a common factor).
    let mut dist = vec![0u32; cands.len()];
    let mut chosen = Vec::with_capacity(n);
    let mut j = rng.random_range(0..cands.len());
    for _ in 0..n.min(cands.len()) {
        used[j] = true;
        let p = cands[j];
        chosen.push(p);
        for (k, c) in cands.iter().enumerate() {
            dist[k] += hamming(&p, c);
        }
        let free = || (0..cands.len()).filter(|&k| !used[k]);
        j = match selection {
            // First of the ties, so the set does not depend on iteration details.
            Selection::Max => free()
                .max_by_key(|&k| (dist[k], std::cmp::Reverse(k)))
                .unwrap_or(0),
            Selection::Min => free().min_by_key(|&k| (dist[k], k)).unwrap_or(0),
            Selection::Average => {
                let mut order: Vec<usize> = free().collect();
                if order.is_empty() {
                    break;
                }
                order.sort_by_key(|&k| (dist[k], k));
                let m = order.len() / 2;
                let lo = m.saturating_sub(10);
                let hi = (m + 10).min(order.len());
                order[rng.random_range(lo..hi)]
            }
        };
    }
    chosen
}

/// Mean, minimum and maximum pairwise Hamming distance of a set.
pub fn hamming_stats(set: &[Perm]) -> (f64, u32, u32) {
    let (mut sum, mut min, mut max, mut pairs) = (0u64, u32::MAX, 0u32, 0u64);
    for i in 0..set.len() {
        for j in i + 1..set.len() {
            let d = hamming(&set[i], &set[j]);
            sum += d as u64;
            min = min.min(d);
            max = max.max(d);
            pairs += 1;
        }
    }
    if pairs == 0 {
        return (0.0, 0, 0);
    }
    (sum as f64 / pairs as f64, min, max)
}

pub struct Jigsaw {
    pub cfg: JigsawConfig,
    pub perms: Vec<Perm>,
    pub channels: usize,
}

impl Jigsaw {
    pub fn new(cfg: JigsawConfig, channels: usize, perms: Vec<Perm>) -> anyhow::Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            perms,
            channels,
        })
    }

    /// The set saved in the run, checked (count, each a permutation, no duplicates);
    /// `None` when the run has none yet.
    pub fn saved_perms(cfg: &JigsawConfig, run: &Path) -> anyhow::Result<Option<Vec<Perm>>> {
        let path = run.join("permutations.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let perms: Vec<Perm> = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a permutation list: {e}", path.display()))?;
        anyhow::ensure!(
            perms.len() == cfg.permutations,
            "{} holds {} permutations but the run's config asks for {}",
            path.display(),
            perms.len(),
            cfg.permutations
        );
        check_perms(&perms).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Some(perms))
    }

    /// Load the run's saved set ([`Jigsaw::saved_perms`]), or generate it and save it on
    /// first use.
    pub fn perms_for_run(cfg: &JigsawConfig, run: &Path) -> anyhow::Result<Vec<Perm>> {
        if let Some(perms) = Self::saved_perms(cfg, run)? {
            return Ok(perms);
        }
        let perms = permutation_set(cfg.permutations, cfg.selection, cfg.permutation_seed);
        crate::util::fsutil::write_bytes(
            &run.join("permutations.json"),
            serde_json::to_string(&perms)?.as_bytes(),
        )?;
        Ok(perms)
    }

    /// The 9 tiles of image `index` in cell order (before shuffling), each CHW.
    fn tiles(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        let h = &set.header;
        let (cell, tile, c) = (self.cfg.cell, self.cfg.tile, self.channels);
        let span = 3 * cell;
        let oy = rng.random_range(0..=h.h - span);
        let ox = rng.random_range(0..=h.w - span);
        let gray = rng.random_bool(self.cfg.grayscale);
        let j = self.cfg.channel_jitter as i64;
        (0..9)
            .map(|k| {
                let (cy, cx) = (k / 3, k % 3);
                let y = oy + cy * cell + rng.random_range(0..=cell - tile);
                let x = ox + cx * cell + rng.random_range(0..=cell - tile);
                let shift: Vec<(isize, isize)> = (0..c)
                    .map(|_| {
                        (
                            rng.random_range(-j..=j) as isize,
                            rng.random_range(-j..=j) as isize,
                        )
                    })
                    .collect();
                let mut t = vec![0.0; c * tile * tile];
                tiles::cut(
                    set.image(index),
                    (h.h, h.w, h.c),
                    y,
                    x,
                    tile,
                    &shift,
                    &mut t,
                );
                if gray {
                    tiles::grayscale(&mut t, c);
                }
                tiles::normalize_each_channel(&mut t, c);
                t
            })
            .collect()
    }
}

impl SampleMaker for Jigsaw {
    fn samples_per_image(&self) -> usize {
        9
    }
    fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.cfg.tile, self.cfg.tile]
    }
    fn targets_per_image(&self) -> usize {
        1
    }
    fn make(&self, set: &ImageSet, index: usize, rng: &mut ChaCha8Rng, out: SampleOut<'_>) {
        let tiles = self.tiles(set, index, rng);
        let label = rng.random_range(0..self.perms.len());
        shuffle_into(&tiles, &self.perms[label], out.inputs);
        out.targets[0] = label as i64;
    }
}

/// Write `tiles` (cell order) into `out` so that slot `i` holds the tile of cell `perm[i]`.
pub fn shuffle_into(tiles: &[Vec<f32>], perm: &Perm, out: &mut [f32]) {
    let per = tiles[0].len();
    for (slot, &cell) in perm.iter().enumerate() {
        out[slot * per..(slot + 1) * per].copy_from_slice(&tiles[cell as usize]);
    }
}

/// Put shuffled slots back in cell order (the inverse permutation).
pub fn unshuffle(slots: &[f32], perm: &Perm) -> Vec<Vec<f32>> {
    let per = slots.len() / 9;
    let mut cells = vec![Vec::new(); 9];
    for (slot, &cell) in perm.iter().enumerate() {
        cells[cell as usize] = slots[slot * per..(slot + 1) * per].to_vec();
    }
    cells
}

impl PretextTask for Jigsaw {
    fn name(&self) -> &'static str {
        "jigsaw"
    }
    fn num_classes(&self) -> usize {
        self.perms.len()
    }
    fn preview(&self, set: &ImageSet, path: &Path, seed: u64) -> anyhow::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (t, c) = (self.cfg.tile, self.channels);
        let per = c * t * t;
        let rows: Vec<Vec<Cell>> = preview_indices(set)
            .into_iter()
            .map(|index| {
                let (inputs, targets, _) = make_one(self, set, index, &mut rng);
                let perm = self.perms[targets[0] as usize];
                // Each input slot, captioned with the cell its tile came from; the last
                // cell of the row names the permutation's index.
                let mut row: Vec<Cell> = (0..9)
                    .map(|s| Cell {
                        chw: tiles::for_display(&inputs[s * per..(s + 1) * per]),
                        c,
                        h: t,
                        w: t,
                        caption: format!("{}", perm[s]),
                    })
                    .collect();
                row.push(Cell {
                    chw: vec![0.0; t * t],
                    c: 1,
                    h: t,
                    w: t,
                    caption: format!("{}", targets[0]),
                });
                row
            })
            .collect();
        preview::save(&preview::sheet(&rows, (64 / t).max(1)), path)
    }
}

/// Jigsaw puzzles in the task registry.
pub struct JigsawTask;
pub static TASK: JigsawTask = JigsawTask;

impl JigsawTask {
    /// Noroozi & Favaro's context-free network: the shared trunk over the nine tiles,
    /// fc6 per tile, fc7 over the concatenation, one class per permutation.
    fn network(rc: &RunConfig, dev: &burn::tensor::Device) -> anyhow::Result<TileNet> {
        let j: JigsawConfig = rc.task.typed()?;
        Ok(TileNet::new(
            &rc.backbone,
            j.tile,
            9,
            j.tile_features,
            j.hidden,
            j.permutations,
            dev,
        ))
    }
}

impl Task for JigsawTask {
    fn name(&self) -> &'static str {
        "jigsaw"
    }
    fn defaults(&self, side: usize) -> TaskConfig {
        TaskConfig::of(self.name(), &JigsawConfig::for_image(side))
    }
    fn normalize(&self, cfg: &TaskConfig) -> anyhow::Result<TaskConfig> {
        cfg.normalized::<JigsawConfig>()
    }
    fn validate(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<()> {
        cfg.typed::<JigsawConfig>()?.validate()
    }
    fn min_image_size(&self, cfg: &TaskConfig, _augment: &AugmentConfig) -> anyhow::Result<usize> {
        Ok(3 * cfg.typed::<JigsawConfig>()?.cell)
    }
    fn inputs_per_image(&self, _cfg: &TaskConfig) -> anyhow::Result<usize> {
        Ok(9)
    }
    fn check_run(&self, rc: &RunConfig, run: &Path) -> anyhow::Result<()> {
        Jigsaw::saved_perms(&rc.task.typed()?, run).map(|_| ())
    }
    fn pretrain(&self, job: &Job) -> anyhow::Result<TrainOutcome> {
        let j: JigsawConfig = job.cfg.task.typed()?;
        let perms = Jigsaw::perms_for_run(&j, job.run)?;
        let task = Jigsaw::new(j, job.channels(), perms)?;
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
    fn all_perms_are_the_9_factorial_distinct_ones() {
        let all = all_perms();
        assert_eq!(all.len(), 362_880);
        let set: std::collections::HashSet<Perm> = all.iter().copied().collect();
        assert_eq!(set.len(), 362_880);
        assert_eq!(all[0], [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(all[1], [0, 1, 2, 3, 4, 5, 6, 8, 7]);
    }

    #[test]
    fn hamming_statistics_by_hand() {
        let id: Perm = [0, 1, 2, 3, 4, 5, 6, 7, 8];
        let swap: Perm = [1, 0, 2, 3, 4, 5, 6, 7, 8];
        let rev: Perm = [8, 7, 6, 5, 3, 4, 2, 1, 0];
        assert_eq!(hamming(&id, &swap), 2);
        assert_eq!(hamming(&id, &rev), 9);
        assert_eq!(hamming(&swap, &rev), 9);
        let (mean, min, max) = hamming_stats(&[id, swap, rev]);
        assert!((mean - 20.0 / 3.0).abs() < 1e-12);
        assert_eq!((min, max), (2, 9));
    }

    #[test]
    fn greedy_sets_have_no_duplicates_and_order_by_selection() {
        let max = permutation_set(30, Selection::Max, 7);
        let avg = permutation_set(30, Selection::Average, 7);
        let min = permutation_set(30, Selection::Min, 7);
        for set in [&max, &avg, &min] {
            assert_eq!(set.len(), 30);
            let uniq: std::collections::HashSet<Perm> = set.iter().copied().collect();
            assert_eq!(uniq.len(), 30, "duplicates in a set");
        }
        let (m_max, _, _) = hamming_stats(&max);
        let (m_avg, _, _) = hamming_stats(&avg);
        let (m_min, _, _) = hamming_stats(&min);
        // The greedy rule ranks by mean distance, so the sets order by mean distance (it does
        // not bound the minimum: a far-on-average candidate may sit close to one member).
        assert!(m_max > m_avg && m_avg > m_min, "{m_max} {m_avg} {m_min}");
        // Two random permutations differ in 8 of 9 places on average; max beats that.
        assert!(m_max > 8.0, "{m_max}");
        // Seeded: the same set again.
        assert_eq!(permutation_set(30, Selection::Max, 7), max);
    }

    fn ramp_set(side: usize, c: usize) -> ImageSet {
        let px: Vec<u8> = (0..side * side * c).map(|i| (i * 7 % 251) as u8).collect();
        ImageSet::unlabelled(side, side, c, px)
    }

    #[test]
    fn unshuffled_tiles_rebuild_the_crop_exactly() {
        // Tiles as large as their cells, no jitter, no grayscale: the 9 tiles in cell order
        // are the crop itself (up to each tile's own normalization, checked separately).
        let mut cfg = JigsawConfig::for_image(12);
        cfg.tile = cfg.cell;
        cfg.channel_jitter = 0;
        cfg.grayscale = 0.0;
        let perms = permutation_set(10, Selection::Max, 0);
        let task = Jigsaw::new(cfg, 3, perms.clone()).unwrap();
        let set = ramp_set(12, 3);
        let tiles = task.tiles(&set, 0, &mut ChaCha8Rng::seed_from_u64(3));
        let mut slots = vec![0.0; 9 * tiles[0].len()];
        let perm = perms[4];
        shuffle_into(&tiles, &perm, &mut slots);
        assert_eq!(unshuffle(&slots, &perm), tiles);
        // Raw tiles of the cells (before normalization) rebuild the 12×12 image, and each
        // normalized tile is the normalized raw tile of its cell.
        let h = &set.header;
        let mut rebuilt = vec![0u8; 12 * 12 * 3];
        for (k, tile) in tiles.iter().enumerate() {
            let (cy, cx) = (k / 3, k % 3);
            let mut t = vec![0.0; 3 * 16];
            tiles::cut(
                set.image(0),
                (h.h, h.w, h.c),
                cy * 4,
                cx * 4,
                4,
                &[],
                &mut t,
            );
            for ch in 0..3 {
                for y in 0..4 {
                    for x in 0..4 {
                        rebuilt[((cy * 4 + y) * 12 + cx * 4 + x) * 3 + ch] =
                            (t[ch * 16 + y * 4 + x] * 255.0).round() as u8;
                    }
                }
            }
            tiles::normalize_each_channel(&mut t, 3);
            assert_eq!(&t, tile, "cell {k}");
        }
        assert_eq!(rebuilt, set.image(0));
    }

    #[test]
    fn a_sample_is_nine_normalized_tiles_and_a_label() {
        let cfg = JigsawConfig::for_image(32);
        assert_eq!((cfg.cell, cfg.tile, cfg.channel_jitter), (10, 8, 1));
        let task = Jigsaw::new(cfg, 3, permutation_set(20, Selection::Max, 0)).unwrap();
        let set = ramp_set(32, 3);
        let mut inputs = vec![0.0; 9 * 3 * 64];
        let mut targets = [0i64];
        task.make(
            &set,
            0,
            &mut ChaCha8Rng::seed_from_u64(1),
            SampleOut {
                inputs: &mut inputs,
                targets: &mut targets,
                aux: &mut [],
            },
        );
        assert!((0..20).contains(&targets[0]));
        for ch in inputs.chunks_exact(64) {
            let mean = ch.iter().sum::<f32>() / 64.0;
            assert!(mean.abs() < 1e-4, "tile channel mean {mean}");
        }
    }

    #[test]
    fn bad_geometry_is_rejected() {
        let mut cfg = JigsawConfig::for_image(32);
        cfg.tile = 11;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("larger than its grid cell"), "{e}");
    }
}
