//! Weighted k-nearest-neighbor classification on L2-normalized features (Wu et al. 2018):
//! cosine similarity, the k most similar training images vote with weight exp(sim / T).
//! Similarities come from blocked matrix products on the device.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::features::Features;
use super::metrics::top_k_accuracy;
use super::store::{TapRows, blocks, rows_for};

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

/// Neighbors (similarity, training index) of every query row, most similar first (ties:
/// the lower index first), `kmax` each.
///
/// Blocks of queries meet blocks of training rows (each about `BLOCK_BYTES`, read from
/// memory or the feature store), one matrix product per pair; a row keeps its `kmax` best
/// of each block by partial selection (linear in the block: a full sort of every
/// 50,000-wide row once took a fifth of an evaluation) and merges them into the best so
/// far. Memory holds two blocks and their similarities (each about `BLOCK_BYTES`),
/// whatever the number of images.
pub fn neighbors(
    train: TapRows,
    test: TapRows,
    kmax: usize,
    dev: &Device,
) -> anyhow::Result<Vec<Vec<(f32, usize)>>> {
    let d = train.d();
    anyhow::ensure!(test.d() == d, "queries of {} values, rows of {d}", test.d());
    // Queries and training rows of about BLOCK_BYTES each, and their similarities too:
    // narrow rows make long blocks, whose product would otherwise grow as 1/d².
    let queries = rows_for(BLOCK_BYTES, d).min(4096);
    let rows = rows_for(BLOCK_BYTES, d).min((BLOCK_BYTES / 4 / queries).max(1));
    neighbors_in_blocks(train, test, kmax, (queries, rows), dev)
}

/// [`neighbors`] with blocks of `queries` query rows and `rows` training rows.
fn neighbors_in_blocks(
    train: TapRows,
    test: TapRows,
    kmax: usize,
    (queries, rows): (usize, usize),
    dev: &Device,
) -> anyhow::Result<Vec<Vec<(f32, usize)>>> {
    let d = train.d();
    let kmax = kmax.min(train.n());
    let mut out = Vec::with_capacity(test.n());
    for q in blocks(test.n(), queries) {
        let qx = Tensor::<2>::from_data(TensorData::new(test.read(q.clone())?, [q.len(), d]), dev);
        let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::new(); q.len()];
        for b in blocks(train.n(), rows) {
            let bx =
                Tensor::<2>::from_data(TensorData::new(train.read(b.clone())?, [b.len(), d]), dev);
            let sims: Vec<f32> = qx
                .clone()
                .matmul(bx.transpose())
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32");
            best.par_iter_mut()
                .zip(sims.par_chunks(b.len()))
                .for_each(|(acc, row)| {
                    let top: Vec<(f32, usize)> = top_k(row, kmax)
                        .into_iter()
                        .map(|(v, i)| (v, i + b.start))
                        .collect();
                    *acc = merge(acc, &top, kmax);
                });
        }
        out.extend(best);
    }
    Ok(out)
}

/// Rows of a block of queries or training rows (128 MiB of f32 each).
const BLOCK_BYTES: usize = 128 << 20;

/// The `k` best of two lists each ordered best first (larger value, then lower index):
/// the same order [`top_k`] gives, so a row's best over blocks are its best over all.
pub fn merge(a: &[(f32, usize)], b: &[(f32, usize)], k: usize) -> Vec<(f32, usize)> {
    let before = |x: &(f32, usize), y: &(f32, usize)| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1));
    let mut out = Vec::with_capacity(k.min(a.len() + b.len()));
    let (mut i, mut j) = (0, 0);
    while out.len() < k && (i < a.len() || j < b.len()) {
        let take_a = j == b.len() || (i < a.len() && before(&a[i], &b[j]).is_le());
        if take_a {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
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

/// kNN top-1/top-5 for each setting, from one neighbor search of the L2-normalised rows
/// of tap `t` of `test` among those of `train`.
pub fn evaluate(
    train: &Features,
    test: &Features,
    t: usize,
    classes: usize,
    settings: &[KnnSetting],
    dev: &Device,
) -> anyhow::Result<Vec<KnnResult>> {
    let kmax = settings.iter().map(|s| s.k).max().unwrap_or(1);
    let rows = |f| TapRows {
        features: f,
        tap: t,
        normalize: true,
    };
    let nb = neighbors(rows(train), rows(test), kmax, dev)?;
    Ok(settings
        .iter()
        .map(|s| {
            let scores: Vec<f32> = nb
                .iter()
                .flat_map(|row| {
                    let labelled: Vec<(f32, u16)> =
                        row.iter().map(|&(sim, i)| (sim, train.labels[i])).collect();
                    vote(&labelled, s.k, s.t, classes)
                })
                .collect();
            KnnResult {
                k: s.k,
                t: s.t,
                top1: top_k_accuracy(&scores, classes, &test.labels, 1),
                top5: top_k_accuracy(&scores, classes, &test.labels, 5.min(classes)),
            }
        })
        .collect())
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
    fn merging_the_best_of_blocks_gives_the_best_of_the_whole_row() {
        // By hand: two blocks' best, ties across blocks to the lower index.
        let a = [(0.9, 1), (0.5, 4)];
        let b = [(0.9, 0), (0.7, 6), (0.1, 7)];
        assert_eq!(merge(&a, &b, 3), vec![(0.9, 0), (0.9, 1), (0.7, 6)]);
        assert_eq!(merge(&a, &[], 5), a.to_vec());
        // Against the whole row, over every way of cutting it in two.
        let row: Vec<f32> = (0..40).map(|i| ((i * 17 % 11) as f32).sin()).collect();
        for cut in 0..=row.len() {
            let shift =
                |v: Vec<(f32, usize)>| v.into_iter().map(|(x, i)| (x, i + cut)).collect::<Vec<_>>();
            let parts = merge(&top_k(&row[..cut], 7), &shift(top_k(&row[cut..], 7)), 7);
            assert_eq!(parts, top_k(&row, 7), "cut at {cut}");
        }
    }

    /// Blocks of 7 rows (queries and training rows cut unevenly) find the neighbours one
    /// block of everything finds.
    #[test]
    fn blocked_search_equals_the_search_in_one_block() {
        let dev = Device::flex();
        let d = 8;
        let data = |n: usize, s: usize| -> Vec<f32> {
            (0..n * d)
                .map(|i| (((i * 31 + s) % 97) as f32 - 48.0) / 7.0)
                .collect()
        };
        let f = |n, s| {
            Features::in_memory(
                vec!["t".into()],
                vec![d],
                vec![1],
                vec![data(n, s)],
                vec![0; n],
            )
        };
        let (train, test) = (f(50, 1), f(23, 5));
        let rows = |f| TapRows {
            features: f,
            tap: 0,
            normalize: true,
        };
        // The blocked search reads its rows from store files, as `eval` does.
        let dir = tempfile::tempdir().unwrap();
        let on_disk = |f: &Features, name: &str| {
            let to = dir.path().join(name);
            std::fs::create_dir_all(&to).unwrap();
            let mut rows = vec![];
            f.read(0, 0..f.n, &mut rows).unwrap();
            let mut sink = crate::eval::store::Sink::new(
                1,
                Some((&to, crate::eval::store::FeatureDtype::F32)),
            );
            sink.push(0, "t", &rows).unwrap();
            sink.finish(vec!["t".into()], vec![d], vec![1], f.labels.clone())
                .unwrap()
        };
        let (train_file, test_file) = (on_disk(&train, "a"), on_disk(&test, "b"));
        let whole = neighbors_in_blocks(rows(&train), rows(&test), 10, (1000, 1000), &dev).unwrap();
        let cut =
            neighbors_in_blocks(rows(&train_file), rows(&test_file), 10, (7, 5), &dev).unwrap();
        assert_eq!(whole.len(), 23);
        for (a, b) in whole.iter().zip(&cut) {
            let ids = |v: &[(f32, usize)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
            assert_eq!(ids(a), ids(b));
            for (x, y) in a.iter().zip(b) {
                assert!((x.0 - y.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn search_finds_the_nearest_rows() {
        let dev = Device::flex();
        // Unit vectors in 2-D at angles 0°, 90°, 180°; queries near 0° and near 180°.
        let train = [1.0, 0.0, 0.0, 1.0, -1.0, 0.0];
        let labels = [0u16, 1, 2];
        let (c, s) = (0.1f32.cos(), 0.1f32.sin());
        let test = [c, s, -c, s];
        let f = |data: &[f32], labels: Vec<u16>| {
            Features::in_memory(
                vec!["t".into()],
                vec![2],
                vec![1],
                vec![data.to_vec()],
                labels,
            )
        };
        let (train, test) = (f(&train, labels.to_vec()), f(&test, vec![0, 2]));
        let rows = |f| TapRows {
            features: f,
            tap: 0,
            normalize: true,
        };
        let nb = neighbors(rows(&train), rows(&test), 2, &dev).unwrap();
        assert_eq!(nb[0][0].1, 0);
        assert_eq!(nb[0][1].1, 1);
        assert_eq!(nb[1][0].1, 2);
        let r = evaluate(&train, &test, 0, 3, &[KnnSetting { k: 1, t: 0.1 }], &dev).unwrap();
        assert_eq!(r[0].top1, 1.0);
    }
}
