//! Accuracy from class scores.

/// Rank of class `target` in `scores` (0 = best). Ties go to the lower class index, so a
/// tie never counts in the target's favor by accident of ordering.
pub fn rank_of(scores: &[f32], target: usize) -> usize {
    let t = scores[target];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &s)| s > t || (s == t && j < target))
        .count()
}

/// Fraction of rows (each `classes` scores long) whose target ranks within the top `k`.
pub fn top_k_accuracy(scores: &[f32], classes: usize, targets: &[u16], k: usize) -> f64 {
    if targets.is_empty() {
        return 0.0;
    }
    let hits = scores
        .chunks_exact(classes)
        .zip(targets)
        .filter(|(row, t)| rank_of(row, **t as usize) < k)
        .count();
    hits as f64 / targets.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_by_hand() {
        // Three samples, four classes.
        let scores = [
            0.1, 0.7, 0.1, 0.1, // target 1: rank 0
            0.4, 0.3, 0.2, 0.1, // target 2: rank 2
            0.0, 0.0, 0.0, 0.9, // target 0: rank 1 (0.9 above; ties with 1,2 go to index 0)
        ];
        let targets = [1, 2, 0];
        assert_eq!(rank_of(&scores[8..], 0), 1);
        assert_eq!(rank_of(&scores[8..], 2), 3);
        assert!((top_k_accuracy(&scores, 4, &targets, 1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((top_k_accuracy(&scores, 4, &targets, 2) - 2.0 / 3.0).abs() < 1e-12);
        assert!((top_k_accuracy(&scores, 4, &targets, 3) - 1.0).abs() < 1e-12);
    }
}
