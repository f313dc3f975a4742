//! Weighted k-nearest-neighbor classification on L2-normalized features (Wu et al. 2018):
//! cosine similarity, the k most similar training images vote with weight exp(sim / T).
//! Similarities come from blocked matrix products on the device.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::top_k_accuracy;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnSetting {
    pub k: usize,
    pub t: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnResult {
    pub k: usize,
    pub t: f32,
    pub top1: f64,
    pub top5: f64,
}

/// Class scores from one query's neighbors (`(similarity, label)`, most similar first).
pub fn vote(neighbors: &[(f32, u16)], k: usize, t: f32, classes: usize) -> Vec<f32> {
    let mut scores = vec![0f32; classes];
    for &(sim, label) in neighbors.iter().take(k) {
        scores[label as usize] += (sim / t).exp();
    }
    scores
}

/// Neighbors (similarity, training index) of every query, most similar first (ties: the
/// lower index first), `kmax` each. Both matrices must already be L2-normalized, row-major
/// with `d` columns; `train` is moved onto the device, not copied.
///
/// Similarities come in blocks of queries from one matrix product each; the `kmax` best of
/// a row are found by partial selection (linear in the training images) and only they are
/// sorted — a full sort of every 50,000-wide row took a fifth of an evaluation.
pub fn neighbors(
    train: Vec<f32>,
    test: &[f32],
    d: usize,
    kmax: usize,
    dev: &Device,
) -> Vec<Vec<(f32, usize)>> {
    let n_train = train.len() / d;
    let n_test = test.len() / d;
    let kmax = kmax.min(n_train);
    let train_t = Tensor::<2>::from_data(TensorData::new(train, [n_train, d]), dev).transpose();
    let block = 256;
    let mut out = Vec::with_capacity(n_test);
    for start in (0..n_test).step_by(block) {
        let end = (start + block).min(n_test);
        let q = Tensor::<2>::from_data(
            TensorData::new(test[start * d..end * d].to_vec(), [end - start, d]),
            dev,
        );
        let sims: Vec<f32> = q
            .matmul(train_t.clone())
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32");
        out.par_extend(sims.par_chunks(n_train).map(|row| top_k(row, kmax)));
    }
    out
}

/// The `k` largest entries of `row` as (value, index), largest first, ties by index.
pub fn top_k(row: &[f32], k: usize) -> Vec<(f32, usize)> {
    if k == 0 {
        return vec![];
    }
    let order = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..row.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx.into_iter().map(|i| (row[i], i)).collect()
}

/// kNN top-1/top-5 for each setting, from one neighbor search.
pub fn evaluate(
    (train, train_labels): (Vec<f32>, &[u16]),
    (test, test_labels): (&[f32], &[u16]),
    d: usize,
    classes: usize,
    settings: &[KnnSetting],
    dev: &Device,
) -> Vec<KnnResult> {
    let kmax = settings.iter().map(|s| s.k).max().unwrap_or(1);
    let nb = neighbors(train, test, d, kmax, dev);
    settings
        .iter()
        .map(|s| {
            let scores: Vec<f32> = nb
                .iter()
                .flat_map(|row| {
                    let labelled: Vec<(f32, u16)> =
                        row.iter().map(|&(sim, i)| (sim, train_labels[i])).collect();
                    vote(&labelled, s.k, s.t, classes)
                })
                .collect();
            KnnResult {
                k: s.k,
                t: s.t,
                top1: top_k_accuracy(&scores, classes, test_labels, 1),
                top5: top_k_accuracy(&scores, classes, test_labels, 5.min(classes)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_vote_by_hand() {
        // Neighbors: two of class 0 at similarity 0.5, one of class 1 at 0.9.
        let nb = [(0.9, 1u16), (0.5, 0), (0.5, 0)];
        // k = 1: only the class-1 neighbor votes.
        let s = vote(&nb, 1, 1.0, 2);
        assert_eq!(s[0], 0.0);
        assert!((s[1] - 0.9f32.exp()).abs() < 1e-6);
        // k = 3, T = 1: class 0 gets 2·e^0.5 = 3.297 > e^0.9 = 2.460.
        let s = vote(&nb, 3, 1.0, 2);
        assert!((s[0] - 2.0 * 0.5f32.exp()).abs() < 1e-5 && s[0] > s[1]);
        // k = 3, T = 0.1: class 1 gets e^9 = 8103 > 2·e^5 = 297: a low temperature trusts
        // the nearest neighbor.
        let s = vote(&nb, 3, 0.1, 2);
        assert!(s[1] > s[0]);
    }

    #[test]
    fn top_k_by_hand() {
        let row = [0.2, 0.9, -1.0, 0.9, 0.5];
        // Largest first; the tie at 0.9 goes to the lower index.
        assert_eq!(top_k(&row, 3), vec![(0.9, 1), (0.9, 3), (0.5, 4)]);
        assert_eq!(top_k(&row, 9).len(), 5);
        assert_eq!(top_k(&row, 5)[4], (-1.0, 2));
        assert!(top_k(&row, 0).is_empty());
    }

    #[test]
    fn search_finds_the_nearest_rows() {
        let dev = Device::flex();
        // Unit vectors in 2-D at angles 0°, 90°, 180°; queries near 0° and near 180°.
        let train = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let labels = [0u16, 1, 2];
        let (c, s) = (0.1f32.cos(), 0.1f32.sin());
        let test = [c, s, -c, s];
        let nb = neighbors(train.to_vec(), &test, 2, 2, &dev);
        assert_eq!(nb[0][0].1, 0);
        assert_eq!(nb[0][1].1, 1);
        assert_eq!(nb[1][0].1, 2);
        let r = evaluate(
            (train.to_vec(), &labels),
            (&test, &[0, 2]),
            2,
            3,
            &[KnnSetting { k: 1, t: 0.1 }],
            &dev,
        );
        assert_eq!(r[0].top1, 1.0);
    }
}
