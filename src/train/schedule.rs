//! Learning-rate schedules, evaluated at a fractional epoch so a schedule is the same
//! whatever the batch count.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` at each milestone, given as fractions of the run (RotNet:
    /// ×0.2 at epochs 60/120/160 of 200 = 0.3/0.6/0.8).
    Step {
        milestones: Vec<f64>,
        gamma: f64,
    },
    /// Cosine decay from the base rate to `min_factor ×` base over the run, after a linear
    /// warm-up of `warmup` epochs.
    Cosine {
        min_factor: f64,
        warmup: f64,
    },
}

impl Schedule {
    /// RotNet's CIFAR schedule, scaled to any number of epochs.
    pub fn rotnet() -> Self {
        Schedule::Step {
            milestones: vec![0.3, 0.6, 0.8],
            gamma: 0.2,
        }
    }

    /// Learning rate at fractional epoch `t` of a run of `total` epochs.
    pub fn lr(&self, base: f64, t: f64, total: f64) -> f64 {
        let frac = if total > 0.0 { t / total } else { 0.0 };
        match self {
            Schedule::Constant => base,
            Schedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| frac >= m).count();
                base * gamma.powi(passed as i32)
            }
            Schedule::Cosine { min_factor, warmup } => {
                if t < *warmup {
                    return base * (t + 1e-9) / warmup;
                }
                let p = ((t - warmup) / (total - warmup).max(1e-9)).clamp(0.0, 1.0);
                let min = base * min_factor;
                min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_schedule_matches_rotnet() {
        let s = Schedule::rotnet();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.lr(0.1, 0.0, 200.0), 0.1));
        assert!(close(s.lr(0.1, 59.9, 200.0), 0.1));
        assert!(close(s.lr(0.1, 60.0, 200.0), 0.02));
        assert!(close(s.lr(0.1, 120.0, 200.0), 0.004));
        assert!(close(s.lr(0.1, 199.0, 200.0), 0.0008));
    }

    #[test]
    fn cosine_endpoints_and_midpoint() {
        let s = Schedule::Cosine {
            min_factor: 0.0,
            warmup: 0.0,
        };
        assert!((s.lr(1.0, 0.0, 10.0) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 5.0, 10.0) - 0.5).abs() < 1e-12);
        assert!(s.lr(1.0, 10.0, 10.0).abs() < 1e-12);
        let w = Schedule::Cosine {
            min_factor: 0.0,
            warmup: 2.0,
        };
        assert!((w.lr(1.0, 1.0, 10.0) - 0.5).abs() < 1e-6);
    }
}
