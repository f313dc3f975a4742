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
        }
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
}

/// Per-dimension mean and inverse std of tap `t` of `f`, in one pass over blocks of its
/// rows (sums in f64, row by row).
pub fn standardizer(f: &Features, t: usize) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let d = f.dims[t];
    let n = f.n.max(1) as f64;
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    let mut block = Vec::new();
    for rows in blocks(f.n, rows_for(BLOCK_BYTES, d)) {
        block.clear();
        f.read(t, rows, &mut block)?;
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

/// Scores `[n × classes]` of every tap's probe on `feats`, standardised on the way.
fn scores(
    probes: &Probes,
    feats: &Features,
    stats: &[(Vec<f32>, Vec<f32>)],
    dev: &Device,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); feats.dims.len()];
    for rows in blocks(feats.n, 1024) {
        for (t, head) in probes.heads.iter().enumerate() {
            let d = feats.dims[t];
            let mut x = Vec::with_capacity(rows.len() * d);
            feats.read(t, rows.clone(), &mut x)?;
            x.chunks_exact_mut(d)
                .for_each(|r| standardize(r, &stats[t]));
            let x = Tensor::<2>::from_data(TensorData::new(x, [rows.len(), d]), dev);
            out[t].extend(
                head.forward(x)
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("f32"),
            );
        }
    }
    Ok(out)
}

/// Train one linear probe per tap of `train` and test them on `test`.
pub fn evaluate(
    train: &Features,
    test: &Features,
    classes: usize,
    cfg: &ProbeConfig,
    dev: &Device,
    progress: bool,
) -> anyhow::Result<Vec<ProbeResult>> {
    let taps = train.taps.len();
    // The training set's statistics, for both sets.
    let stats = (0..taps)
        .map(|t| standardizer(train, t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let train_dev = dev.clone().autodiff();
    train_dev.seed(cfg.seed);
    let mut probes = Probes {
        heads: train
            .dims
            .iter()
            .map(|&d| LinearConfig::new(d, classes).init(&train_dev))
            .collect(),
    };
    let mut optim = cfg.optim.init();
    let mut order: Vec<usize> = (0..train.n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let nb = train.n.div_ceil(cfg.batch_size);
    let bar = crate::util::progress::bar((cfg.epochs * nb) as u64, "linear probes", progress);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for (b, rows) in order.chunks(cfg.batch_size).enumerate() {
            let lr = cfg.schedule.lr(
                cfg.optim.lr,
                epoch as f64 + b as f64 / nb as f64,
                cfg.epochs as f64,
            );
            let y: Vec<i64> = rows.iter().map(|&r| train.labels[r] as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(y, [rows.len()]), &train_dev);
            let mut loss: Option<Tensor<1>> = None;
            for (t, head) in probes.heads.iter().enumerate() {
                // The rows are read (from memory or the store) and standardised as they
                // are gathered: a tap is never copied whole.
                let d = train.dims[t];
                let mut x = Vec::new();
                train.gather(t, rows, &mut x, |r| standardize(r, &stats[t]))?;
                let x = Tensor::<2>::from_data(TensorData::new(x, [rows.len(), d]), &train_dev);
                let l = cross_entropy(head.forward(x), y.clone());
                loss = Some(match loss {
                    Some(acc) => acc + l,
                    None => l,
                });
            }
            let loss = loss.expect("at least one tap");
            let grads = GradientsParams::from_grads(loss.backward(), &probes);
            probes = optim.step(lr, probes, grads);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let probes = probes.valid();
    let s_test = scores(&probes, test, &stats, dev)?;
    let s_train = scores(&probes, train, &stats, dev)?;
    Ok((0..taps)
        .map(|t| ProbeResult {
            top1: top_k_accuracy(&s_test[t], classes, &test.labels, 1),
            top5: top_k_accuracy(&s_test[t], classes, &test.labels, 5.min(classes)),
            train_top1: top_k_accuracy(&s_train[t], classes, &train.labels, 1),
        })
        .collect())
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
