//! The linear evaluation protocol: a frozen trunk, one linear classifier per tap on its
//! pooled features, all taps' classifiers trained together in one pass over the cached
//! features (one batch serves every tap). Features are standardized per dimension with
//! the training set's statistics (the role of the BN some recipes put before the probe).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::features::Features;
use super::metrics::top_k_accuracy;
use super::store::{blocks, rows_for};
use crate::train::trainer::cross_entropy;
use crate::train::{OptimConfig, OptimKind, Schedule};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    pub seed: u64,
    /// Choose the learning rate and weight decay per layer on a validation split instead
    /// of using `optim`'s (`None`: the fixed setting).
    #[serde(default)]
    pub sweep: Option<SweepConfig>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 256,
            optim: OptimConfig {
                kind: OptimKind::Sgd,
                lr: 0.01,
                weight_decay: 5e-4,
                momentum: 0.9,
                nesterov: true,
                betas: (0.9, 0.999),
            },
            schedule: Schedule::Cosine {
                min_factor: 0.0,
                warmup: 0.0,
            },
            seed: 0,
            sweep: None,
        }
    }
}

/// `--probe-sweep`: the grid of learning rates × weight decays tried for every layer, as
/// Goyal et al. (2019) and the VISSL benchmarks choose a probe's settings. Each setting is
/// trained on the labelled train images less a stratified, seeded validation split and
/// scored on that split; each layer takes its best (the earlier in grid order on a tie),
/// is trained again on all the train images, and is tested once. The test split plays no
/// part in the choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepConfig {
    pub lrs: Vec<f64>,
    pub weight_decays: Vec<f64>,
    /// Share of each class of the train images held out for validation.
    pub val_fraction: f64,
    pub seed: u64,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            // The fixed lr, a decade above it and two below (on a rotation NIN-96, 10k
            // images, every layer chose 0.001 from 0.1/0.01/0.001: the edge of that grid),
            // with the fixed weight decay and none.
            lrs: vec![0.1, 0.01, 0.001, 0.0001],
            weight_decays: vec![5e-4, 0.0],
            val_fraction: 0.1,
            seed: 0,
        }
    }
}

impl SweepConfig {
    /// Whether a chosen learning rate is the grid's smallest or largest (a wider grid
    /// might do better), when the grid has more than one.
    pub fn at_edge(&self, lr: f64) -> bool {
        let (lo, hi) = self
            .lrs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        self.lrs.len() > 1 && (lr == lo || lr == hi)
    }

    /// The grid in its order: learning rate first.
    fn grid(&self) -> Vec<(f64, f64)> {
        self.lrs
            .iter()
            .flat_map(|&lr| self.weight_decays.iter().map(move |&wd| (lr, wd)))
            .collect()
    }
}

#[derive(Module, Debug)]
pub struct Probes {
    pub heads: Vec<Linear>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub top1: f64,
    pub top5: f64,
    pub train_top1: f64,
    /// The setting `--probe-sweep` chose for this layer (`None`: the fixed one).
    #[serde(default)]
    pub chosen: Option<Chosen>,
}

/// A layer's probe setting as chosen on the validation split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub lr: f64,
    pub weight_decay: f64,
    /// Its top-1 on the validation split, and that split's size.
    pub val_top1: f64,
    pub val_images: usize,
}

/// The rows of a feature set a step works on: all of them, or some (by index).
#[derive(Clone, Copy)]
enum Rows<'a> {
    All(usize),
    Some(&'a [usize]),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::All(n) => *n,
            Rows::Some(r) => r.len(),
        }
    }
    /// Rows `i` of this selection, for `i` in `range`, read from tap `t` of `f` into `out`
    /// (contiguous rows in one read; chosen rows gathered).
    fn read(
        &self,
        f: &Features,
        t: usize,
        range: std::ops::Range<usize>,
        out: &mut Vec<f32>,
    ) -> anyhow::Result<()> {
        match self {
            Rows::All(_) => f.read(t, range, out),
            Rows::Some(r) => f.gather(t, &r[range], out, |_| {}),
        }
    }
    fn labels(&self, f: &Features) -> Vec<u16> {
        match self {
            Rows::All(_) => f.labels.clone(),
            Rows::Some(r) => r.iter().map(|&i| f.labels[i]).collect(),
        }
    }
}

/// Per-dimension mean and inverse std of tap `t` of `f`, in one pass over blocks of its
/// rows (sums in f64, row by row).
pub fn standardizer(f: &Features, t: usize) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    standardizer_of(f, t, Rows::All(f.n))
}

fn standardizer_of(f: &Features, t: usize, rows: Rows) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let d = f.dims[t];
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    let mut block = Vec::new();
    for range in blocks(rows.len(), rows_for(BLOCK_BYTES, d)) {
        block.clear();
        rows.read(f, t, range, &mut block)?;
        for row in block.chunks_exact(d) {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
    }
    let m: Vec<f32> = mean.iter().map(|s| (s / n) as f32).collect();
    let inv: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(q, s)| {
            let var = (q / n - (s / n).powi(2)).max(0.0);
            (1.0 / (var + 1e-5).sqrt()) as f32
        })
        .collect();
    Ok((m, inv))
}

/// Rows of a store read at once (a block of 64 MiB).
const BLOCK_BYTES: usize = 64 << 20;

/// `row` standardised with `(mean, inv)` in place.
fn standardize(row: &mut [f32], (mean, inv): &(Vec<f32>, Vec<f32>)) {
    for ((v, m), s) in row.iter_mut().zip(mean).zip(inv) {
        *v = (*v - m) * s;
    }
}

/// Scores `[rows × classes]` of each `(tap, head)` on `rows` of `feats`, standardised on
/// the way.
fn scores(
    heads: &[(usize, &Linear)],
    feats: &Features,
    rows: Rows,
    stats: &[(Vec<f32>, Vec<f32>)],
    dev: &Device,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); heads.len()];
    for range in blocks(rows.len(), 1024) {
        for (k, &(t, head)) in heads.iter().enumerate() {
            let d = feats.dims[t];
            let mut x = Vec::with_capacity(range.len() * d);
            rows.read(feats, t, range.clone(), &mut x)?;
            x.chunks_exact_mut(d)
                .for_each(|r| standardize(r, &stats[t]));
            let x = Tensor::<2>::from_data(TensorData::new(x, [range.len(), d]), dev);
            out[k].extend(
                head.forward(x)
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("f32"),
            );
        }
    }
    Ok(out)
}

/// Probes trained with one setting: a learning rate, a weight decay, the taps they read.
struct Group {
    lr: f64,
    weight_decay: f64,
    taps: Vec<usize>,
}

/// Train a probe per (group, tap) on `rows` of `train`, standardised with `stats`, all in
/// one pass: each mini-batch's rows are read once per tap and serve every group. Each
/// group has its optimizer; within a group the taps' losses are summed (each head's
/// gradient is its own). Returns each group's heads, in the order of its taps.
#[allow(clippy::too_many_arguments)]
fn fit(
    train: &Features,
    rows: Rows,
    stats: &[(Vec<f32>, Vec<f32>)],
    classes: usize,
    cfg: &ProbeConfig,
    groups: &[Group],
    dev: &Device,
    (what, progress): (&str, bool),
) -> anyhow::Result<Vec<Vec<Linear>>> {
    let train_dev = dev.clone().autodiff();
    train_dev.seed(cfg.seed);
    let mut models: Vec<Probes> = groups
        .iter()
        .map(|g| Probes {
            heads: g
                .taps
                .iter()
                .map(|&t| LinearConfig::new(train.dims[t], classes).init(&train_dev))
                .collect(),
        })
        .collect();
    let mut optims: Vec<_> = groups
        .iter()
        .map(|g| {
            OptimConfig {
                lr: g.lr,
                weight_decay: g.weight_decay,
                ..cfg.optim.clone()
            }
            .init()
        })
        .collect();
    let mut order: Vec<usize> = match rows {
        Rows::All(n) => (0..n).collect(),
        Rows::Some(r) => r.to_vec(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let nb = order.len().div_ceil(cfg.batch_size);
    let bar = crate::util::progress::bar((cfg.epochs * nb) as u64, what, progress);
    let taps = train.dims.len();
    let mut needed: Vec<usize> = groups.iter().flat_map(|g| g.taps.iter().copied()).collect();
    needed.sort_unstable();
    needed.dedup();
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for (b, batch) in order.chunks(cfg.batch_size).enumerate() {
            let at = epoch as f64 + b as f64 / nb as f64;
            let y: Vec<i64> = batch.iter().map(|&r| train.labels[r] as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(y, [batch.len()]), &train_dev);
            // The rows are read (from memory or the store) and standardised as they are
            // gathered: a tap is never copied whole, and is read once for all groups. The
            // taps are gathered in parallel: on the calling thread alone, these reads were a
            // fifth of an evaluation's time while the other core waited.
            let read: Vec<(usize, Vec<f32>)> = needed
                .par_iter()
                .map(|&t| {
                    let mut x = Vec::new();
                    train.gather(t, batch, &mut x, |r| standardize(r, &stats[t]))?;
                    Ok((t, x))
                })
                .collect::<anyhow::Result<_>>()?;
            let mut xs: Vec<Option<Tensor<2>>> = vec![None; taps];
            for (t, x) in read {
                xs[t] = Some(Tensor::<2>::from_data(
                    TensorData::new(x, [batch.len(), train.dims[t]]),
                    &train_dev,
                ));
            }
            let mut next = Vec::with_capacity(models.len());
            for ((model, optim), g) in models.into_iter().zip(optims.iter_mut()).zip(groups) {
                let mut loss: Option<Tensor<1>> = None;
                for (head, &t) in model.heads.iter().zip(&g.taps) {
                    let x = xs[t].clone().expect("read above");
                    let l = cross_entropy(head.forward(x), y.clone());
                    loss = Some(match loss {
                        Some(acc) => acc + l,
                        None => l,
                    });
                }
                let loss = loss.expect("a group has at least one tap");
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let lr = cfg.schedule.lr(g.lr, at, cfg.epochs as f64);
                next.push(optim.step(lr, model, grads));
            }
            models = next;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(models.into_iter().map(|m| m.valid().heads).collect())
}

/// A stratified, seeded split of `labels`' indices into (fit, validation): `fraction` of
/// each class of two or more images (at least one, never all) goes to validation.
pub fn validation_split(labels: &[u16], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let classes = labels.iter().map(|&y| y as usize + 1).max().unwrap_or(0);
    let mut by_class = vec![Vec::new(); classes];
    for (i, &y) in labels.iter().enumerate() {
        by_class[y as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut val = Vec::new();
    for members in &mut by_class {
        members.shuffle(&mut rng);
        if members.len() >= 2 {
            let k =
                ((members.len() as f64 * fraction).round() as usize).clamp(1, members.len() - 1);
            val.extend_from_slice(&members[..k]);
        }
    }
    val.sort_unstable();
    let mut is_val = vec![false; labels.len()];
    for &i in &val {
        is_val[i] = true;
    }
    let fit = (0..labels.len()).filter(|&i| !is_val[i]).collect();
    (fit, val)
}

/// Train one linear probe per tap of `train` and test them on `test`: with the fixed
/// setting, or (with `cfg.sweep`) with each layer's setting chosen on a validation split
/// of `train` (see [`SweepConfig`]).
pub fn evaluate(
    train: &Features,
    test: &Features,
    classes: usize,
    cfg: &ProbeConfig,
    dev: &Device,
    progress: bool,
) -> anyhow::Result<Vec<ProbeResult>> {
    let taps = train.taps.len();
    let chosen = match &cfg.sweep {
        None => vec![None; taps],
        Some(sweep) => choose(train, classes, cfg, sweep, dev, progress)?
            .into_iter()
            .map(Some)
            .collect(),
    };
    // The final probes: one group per setting in use (the fixed one, or each chosen one),
    // in grid order.
    let mut groups: Vec<Group> = vec![];
    for (t, chosen) in chosen.iter().enumerate() {
        let (lr, wd) = chosen
            .as_ref()
            .map_or((cfg.optim.lr, cfg.optim.weight_decay), |c| {
                (c.lr, c.weight_decay)
            });
        match groups
            .iter_mut()
            .find(|g| g.lr == lr && g.weight_decay == wd)
        {
            Some(g) => g.taps.push(t),
            None => groups.push(Group {
                lr,
                weight_decay: wd,
                taps: vec![t],
            }),
        }
    }
    // The training set's statistics, for both sets.
    let stats = (0..taps)
        .map(|t| standardizer(train, t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let heads = fit(
        train,
        Rows::All(train.n),
        &stats,
        classes,
        cfg,
        &groups,
        dev,
        ("linear probes", progress),
    )?;
    let mut by_tap: Vec<(usize, &Linear)> = groups
        .iter()
        .zip(&heads)
        .flat_map(|(g, h)| g.taps.iter().copied().zip(h.iter()))
        .collect();
    by_tap.sort_by_key(|(t, _)| *t);
    let s_test = scores(&by_tap, test, Rows::All(test.n), &stats, dev)?;
    let s_train = scores(&by_tap, train, Rows::All(train.n), &stats, dev)?;
    Ok((0..taps)
        .map(|t| ProbeResult {
            top1: top_k_accuracy(&s_test[t], classes, &test.labels, 1),
            top5: top_k_accuracy(&s_test[t], classes, &test.labels, 5.min(classes)),
            train_top1: top_k_accuracy(&s_train[t], classes, &train.labels, 1),
            chosen: chosen[t].clone(),
        })
        .collect())
}

/// Each tap's best setting of the sweep's grid, by top-1 on a validation split of `train`
/// (it sees only `train`: nothing of the test split can change the choice).
fn choose(
    train: &Features,
    classes: usize,
    cfg: &ProbeConfig,
    sweep: &SweepConfig,
    dev: &Device,
    progress: bool,
) -> anyhow::Result<Vec<Chosen>> {
    let taps = train.taps.len();
    let (fit_rows, val_rows) = validation_split(&train.labels, sweep.val_fraction, sweep.seed);
    anyhow::ensure!(
        !val_rows.is_empty() && !fit_rows.is_empty(),
        "--probe-sweep needs a validation split: no class has two or more of the {} labelled train images",
        train.n
    );
    let grid = sweep.grid();
    let groups: Vec<Group> = grid
        .iter()
        .map(|&(lr, weight_decay)| Group {
            lr,
            weight_decay,
            taps: (0..taps).collect(),
        })
        .collect();
    // Statistics of the images the sweep's probes train on.
    let stats = (0..taps)
        .map(|t| standardizer_of(train, t, Rows::Some(&fit_rows)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let what = format!("probe sweep ({} settings)", grid.len());
    let heads = fit(
        train,
        Rows::Some(&fit_rows),
        &stats,
        classes,
        cfg,
        &groups,
        dev,
        (&what, progress),
    )?;
    let val = Rows::Some(&val_rows);
    let val_labels = val.labels(train);
    let mut best: Vec<Option<Chosen>> = vec![None; taps];
    for ((lr, wd), heads) in grid.iter().zip(&heads) {
        let pairs: Vec<(usize, &Linear)> = (0..taps).zip(heads.iter()).collect();
        let s = scores(&pairs, train, val, &stats, dev)?;
        for t in 0..taps {
            let top1 = top_k_accuracy(&s[t], classes, &val_labels, 1);
            if best[t].as_ref().is_none_or(|b| top1 > b.val_top1) {
                best[t] = Some(Chosen {
                    lr: *lr,
                    weight_decay: *wd,
                    val_top1: top1,
                    val_images: val_rows.len(),
                });
            }
        }
    }
    Ok(best.into_iter().map(|b| b.expect("a grid point")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardizer_by_hand() {
        // Rows (1, 2) and (3, 6): mean (2, 4), biased variance (1, 4).
        let f = features(vec![[1.0, 2.0], [3.0, 6.0]], vec![0, 1]);
        let (m, inv) = standardizer(&f, 0).unwrap();
        assert_eq!(m, vec![2.0, 4.0]);
        assert!((inv[0] - 1.0 / (1.0f32 + 1e-5).sqrt()).abs() < 1e-6);
        assert!((inv[1] - 1.0 / (4.0f32 + 1e-5).sqrt()).abs() < 1e-6);
    }

    fn features(rows: Vec<[f32; 2]>, labels: Vec<u16>) -> Features {
        Features::in_memory(
            vec!["t".into()],
            vec![2],
            vec![1],
            vec![rows.into_iter().flatten().collect()],
            labels,
        )
    }

    #[test]
    fn the_validation_split_by_hand() {
        // Ten images of class 0, five of class 1, one of class 2; 20% held out: two of
        // class 0, one of class 1 (0.2 × 5 = 1), none of a class of one.
        let labels: Vec<u16> = [vec![0; 10], vec![1; 5], vec![2]].concat();
        let (fit, val) = validation_split(&labels, 0.2, 3);
        let count = |rows: &[usize], c: u16| rows.iter().filter(|&&i| labels[i] == c).count();
        assert_eq!((count(&val, 0), count(&val, 1), count(&val, 2)), (2, 1, 0));
        assert_eq!(fit.len() + val.len(), labels.len());
        assert!(fit.iter().all(|i| !val.contains(i)));
        assert_eq!(
            validation_split(&labels, 0.2, 3),
            (fit.clone(), val.clone())
        );
        assert_ne!(
            validation_split(&labels, 0.2, 4).1,
            val,
            "another seed, other images"
        );
    }

    /// Two classes along the first axis (the second is noise), `n` rows; `flip` swaps the
    /// labels (a test split that disagrees with everything the probe learnt).
    fn blobs(n: usize, shift: f32, flip: bool) -> Features {
        let mut rows = vec![];
        let mut labels = vec![];
        for i in 0..n {
            let class = i % 2;
            let jitter = (i as f32 * 0.37 + shift).sin();
            rows.push([if class == 0 { -0.6 } else { 0.6 } + 0.5 * jitter, jitter]);
            labels.push((class as u16) ^ flip as u16);
        }
        features(rows, labels)
    }

    #[test]
    fn the_sweep_chooses_on_validation_images_and_never_looks_at_the_test_split() {
        let train = blobs(200, 0.0, false);
        let cfg = ProbeConfig {
            epochs: 2,
            batch_size: 16,
            sweep: Some(SweepConfig {
                lrs: vec![0.00001, 0.1],
                weight_decays: vec![0.0],
                val_fraction: 0.2,
                seed: 0,
            }),
            ..ProbeConfig::default()
        };
        let dev = Device::flex();
        let a = evaluate(&train, &blobs(60, 5.0, false), 2, &cfg, &dev, false).unwrap();
        let b = evaluate(&train, &blobs(60, 5.0, true), 2, &cfg, &dev, false).unwrap();
        let chosen = a[0]
            .chosen
            .clone()
            .expect("a swept probe says what it chose");
        // Two epochs at lr 1e-5 barely move the probe; lr 0.1 separates the classes.
        assert_eq!((chosen.lr, chosen.weight_decay), (0.1, 0.0));
        assert_eq!(chosen.val_images, 40);
        assert!(chosen.val_top1 > 0.8, "{chosen:?}");
        // Another test split (every label flipped) changes the test score, not the choice.
        assert!(a[0].top1 > 0.8 && b[0].top1 < 0.2, "{a:?} {b:?}");
        assert_eq!(b[0].chosen, a[0].chosen);
        // Without the sweep nothing is chosen, and the fixed setting is used.
        let fixed = ProbeConfig { sweep: None, ..cfg };
        let r = evaluate(&train, &blobs(60, 5.0, false), 2, &fixed, &dev, false).unwrap();
        assert_eq!(r[0].chosen, None);
    }

    /// The test features are standardized with the training set's statistics, never their
    /// own: a test set shifted by +10 along the separating axis falls entirely on one side
    /// (50% on two balanced classes), where its own statistics would re-center it (100%).
    #[test]
    fn test_features_use_the_training_statistics() {
        let mut rows = vec![];
        let mut labels = vec![];
        for i in 0..40 {
            let class = i % 2;
            let jitter = (i as f32 * 0.37).sin() * 0.1;
            rows.push([if class == 0 { -1.0 } else { 1.0 } + jitter, jitter * 3.0]);
            labels.push(class as u16);
        }
        let train = features(rows.clone(), labels.clone());
        let shifted: Vec<[f32; 2]> = rows.iter().map(|r| [r[0] + 10.0, r[1]]).collect();
        let test = features(shifted, labels);
        let cfg = ProbeConfig {
            epochs: 20,
            batch_size: 8,
            ..ProbeConfig::default()
        };
        let r = evaluate(&train, &test, 2, &cfg, &Device::flex(), false).unwrap();
        assert_eq!(r[0].train_top1, 1.0, "separable training set");
        assert_eq!(r[0].top1, 0.5, "every shifted test row lands in one class");
    }
}
