//! The per-layer evaluation table, written as Markdown, CSV and JSON. Every number carries
//! the protocol that made it (layer, pooling, k/T, probe epochs, data sizes).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::EvalConfig;
use super::cluster::ClusterScores;
use super::heads::HeadResult;
use super::knn::KnnResult;
use super::linear::ProbeResult;
use crate::data::lab::InputTransform;
use crate::models::BackboneConfig;
use crate::models::probe::ProbeKind;
use crate::util::fsutil;
use crate::util::table::{csv_row, md_row};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRow {
    pub layer: String,
    /// Feature dimensions after pooling.
    pub dim: usize,
    /// The tap was average-pooled to `pool_grid × pool_grid`.
    pub pool_grid: usize,
    pub linear: ProbeResult,
    pub knn: Vec<KnnResult>,
    /// k-means (k = classes) on the test split's L2-normalized features.
    #[serde(default)]
    pub cluster: Option<ClusterScores>,
    /// Non-linear probes on this layer (`--probe mlp,conv`).
    #[serde(default)]
    pub heads: Vec<HeadResult>,
}

impl LayerRow {
    /// The probe of `kind` on this layer, if one was trained.
    pub fn head(&self, kind: ProbeKind) -> Option<&HeadResult> {
        self.heads.iter().find(|h| h.kind == kind)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// `rotation`, `random-init`, …
    pub method: String,
    pub run: String,
    pub backbone: BackboneConfig,
    /// What the backbone sees (RGB, or L* for colorization); `None` in older reports.
    #[serde(default)]
    pub input: Option<InputTransform>,
    pub checkpoint_epoch: usize,
    pub data: String,
    /// The data the network was pretrained on, when pretext knows it (`None` at random
    /// init, for an imported network, and in older reports).
    #[serde(default)]
    pub pretrained_on: Option<String>,
    /// How the test split was made when the data has no split of its own (see
    /// [`crate::data::Holdout`]); `None`: the data's own test split.
    #[serde(default)]
    pub test_split: Option<String>,
    pub train_images: usize,
    pub test_images: usize,
    pub classes: usize,
    pub protocol: EvalConfig,
    pub seconds: f64,
    pub rows: Vec<LayerRow>,
}

/// The name of the data a network was `pretrained_on` when that is not `data`, the data it
/// is measured on (a transfer).
pub fn transfer_from(pretrained_on: Option<&str>, data: &str) -> Option<String> {
    let same = |p: &str| {
        let p = std::path::Path::new(p);
        std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
    };
    let from = pretrained_on?;
    (same(from) != same(data)).then(|| crate::data::fetch::title_of(std::path::Path::new(from)))
}

impl EvalReport {
    /// How the probes' learning rate and weight decay were set, in words.
    pub fn probe_setting(&self) -> String {
        let p = &self.protocol.probe;
        match &p.sweep {
            None => format!("lr {} wd {}", p.optim.lr, p.optim.weight_decay),
            Some(sw) => format!(
                "lr × wd chosen per layer from {:?} × {:?} on a stratified {}% validation split of the train images (seed {}), then trained on all of them",
                sw.lrs,
                sw.weight_decays,
                100.0 * sw.val_fraction,
                sw.seed
            ),
        }
    }

    /// The non-linear probe kinds any layer has, in a fixed order.
    pub fn head_kinds(&self) -> Vec<ProbeKind> {
        [ProbeKind::Mlp, ProbeKind::Conv]
            .into_iter()
            .filter(|&k| self.rows.iter().any(|r| r.head(k).is_some()))
            .collect()
    }

    /// The tap with the best linear-probe top-1.
    pub fn best_layer(&self) -> Option<&LayerRow> {
        self.rows
            .iter()
            .max_by(|a, b| a.linear.top1.total_cmp(&b.linear.top1))
    }

    /// The data the network was pretrained on, when it is not the data evaluated on (a
    /// transfer): by name, for tables.
    pub fn transfer_from(&self) -> Option<String> {
        transfer_from(self.pretrained_on.as_deref(), &self.data)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## {} — {:?} width {} (checkpoint epoch{})\n",
            self.method,
            self.backbone.arch,
            self.backbone.width,
            match self.transfer_from() {
                Some(from) => format!(" {}, pretrained on {from}", self.checkpoint_epoch),
                None => format!(" {}", self.checkpoint_epoch),
            }
        );
        let _ = writeln!(
            s,
            "Frozen features, {} labelled train / {} test images of {}{} ({} classes). Linear: one probe per layer on average-pooled, standardized features, {} epochs, {:?} {}. kNN: cosine, weighted vote exp(sim/T). Accuracies in %.\n",
            self.train_images,
            self.test_images,
            self.data,
            self.test_split
                .as_ref()
                .map_or(String::new(), |t| format!(" ({t})")),
            self.classes,
            self.protocol.probe.epochs,
            self.protocol.probe.optim.kind,
            self.probe_setting(),
        );
        let mut head = "| layer | dim (pool) | linear top-1 | linear top-5 |".to_string();
        let mut rule = "|---|---|---|---|".to_string();
        for k in self.rows.first().map(|r| r.knn.as_slice()).unwrap_or(&[]) {
            let _ = write!(head, " kNN k={} T={} top-1 |", k.k, k.t);
            rule.push_str("---|");
        }
        let clustered = self.rows.iter().any(|r| r.cluster.is_some());
        if clustered {
            head.push_str(" k-means NMI | ARI | purity |");
            rule.push_str("---|---|---|");
        }
        let swept = self.rows.iter().any(|r| r.linear.chosen.is_some());
        if swept {
            head.push_str(" probe lr / wd (val top-1) |");
            rule.push_str("---|");
        }
        let kinds = self.head_kinds();
        for k in &kinds {
            let _ = write!(head, " {} top-1 (top-5) |", k.name());
            rule.push_str("---|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for r in &self.rows {
            let mut cells = vec![
                r.layer.clone(),
                format!("{} ({}×{})", r.dim, r.pool_grid, r.pool_grid),
                format!("{:.2}", 100.0 * r.linear.top1),
                format!("{:.2}", 100.0 * r.linear.top5),
            ];
            cells.extend(r.knn.iter().map(|k| format!("{:.2}", 100.0 * k.top1)));
            if clustered {
                match &r.cluster {
                    Some(c) => cells.extend([
                        format!("{:.4}", c.nmi),
                        format!("{:.4}", c.ari),
                        format!("{:.2}", 100.0 * c.purity),
                    ]),
                    None => cells.extend(["–".to_string(), "–".into(), "–".into()]),
                }
            }
            if swept {
                let edge = |lr| {
                    self.protocol
                        .probe
                        .sweep
                        .as_ref()
                        .is_some_and(|sw| sw.at_edge(lr))
                };
                cells.push(r.linear.chosen.as_ref().map_or("–".into(), |c| {
                    format!(
                        "{}{} / {} ({:.2})",
                        c.lr,
                        if edge(c.lr) { "*" } else { "" },
                        c.weight_decay,
                        100.0 * c.val_top1
                    )
                }));
            }
            for &k in &kinds {
                cells.push(r.head(k).map_or("–".into(), |h| {
                    format!("{:.2} ({:.2})", 100.0 * h.top1, 100.0 * h.top5)
                }));
            }
            let _ = writeln!(s, "{}", md_row(cells));
        }
        if !kinds.is_empty() {
            let _ = writeln!(
                s,
                "\n{}: RotNet's non-linear classifiers on the frozen layer's map (the MLP: 2 hidden layers of min(20 × classes, 2048) with BN, on the map average-pooled to fit 16384 values when larger; conv: the next NIN block's shape + global pooling + linear), random crop (the run's padding, or 4) and flip, SGD Nesterov lr 0.1 wd 5e-4 batch {}, ×0.2 steps (conv at 35/70/85%, mlp at 20/40/45% of the run); {}. At random init each head freezes a fresh draw of the same architecture.",
                kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.protocol.heads.batch_size,
                kinds
                    .iter()
                    .map(|&k| format!(
                        "{} {} epochs (RotNet: {})",
                        k.name(),
                        self.protocol.heads.epochs_of(k),
                        k.paper_epochs()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let at_edge = self.rows.iter().any(|r| {
            r.linear.chosen.as_ref().is_some_and(|c| {
                self.protocol
                    .probe
                    .sweep
                    .as_ref()
                    .is_some_and(|sw| sw.at_edge(c.lr))
            })
        });
        if at_edge {
            s.push_str(
                "\n\\* the smallest or largest learning rate of the grid: a wider grid might do better.\n",
            );
        }
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from(
            "method,layer,dim,pool_grid,protocol,k,T,top1,top5,train_images,test_images,probe_epochs,nmi,ari,purity,lr,weight_decay,val_top1,pretrained_on\n",
        );
        let from = self.transfer_from().unwrap_or_default();
        let (tr, te) = (self.train_images.to_string(), self.test_images.to_string());
        let f4 = |v: f64| format!("{v:.4}");
        for r in &self.rows {
            // The probe's learning rate, weight decay and (when swept) validation top-1.
            let mut set = [String::new(), String::new(), String::new()];
            let rotnet = crate::train::OptimConfig::rotnet();
            let mut line = |cells: [String; 11], setting: &mut [String; 3]| {
                let head = [
                    self.method.clone(),
                    r.layer.clone(),
                    r.dim.to_string(),
                    r.pool_grid.to_string(),
                ];
                let row = head
                    .into_iter()
                    .chain(cells)
                    .chain(std::mem::take(setting))
                    .chain([from.clone()]);
                let _ = writeln!(s, "{}", csv_row(row));
            };
            let none = String::new;
            let p = &self.protocol.probe;
            let mut linear_setting = match &r.linear.chosen {
                Some(c) => [c.lr.to_string(), c.weight_decay.to_string(), f4(c.val_top1)],
                None => [
                    p.optim.lr.to_string(),
                    p.optim.weight_decay.to_string(),
                    none(),
                ],
            };
            line(
                [
                    "linear".into(),
                    none(),
                    none(),
                    f4(r.linear.top1),
                    f4(r.linear.top5),
                    tr.clone(),
                    te.clone(),
                    self.protocol.probe.epochs.to_string(),
                    none(),
                    none(),
                    none(),
                ],
                &mut linear_setting,
            );
            for k in &r.knn {
                line(
                    [
                        "knn".into(),
                        k.k.to_string(),
                        k.t.to_string(),
                        f4(k.top1),
                        f4(k.top5),
                        tr.clone(),
                        te.clone(),
                        none(),
                        none(),
                        none(),
                        none(),
                    ],
                    &mut set,
                );
            }
            for h in &r.heads {
                line(
                    [
                        h.kind.name().into(),
                        none(),
                        none(),
                        f4(h.top1),
                        f4(h.top5),
                        tr.clone(),
                        te.clone(),
                        h.epochs.to_string(),
                        none(),
                        none(),
                        none(),
                    ],
                    // RotNet's classifier recipe (see `heads`).
                    &mut [
                        rotnet.lr.to_string(),
                        rotnet.weight_decay.to_string(),
                        none(),
                    ],
                );
            }
            if let Some(c) = &r.cluster {
                line(
                    [
                        "kmeans".into(),
                        c.k.to_string(),
                        none(),
                        none(),
                        none(),
                        none(),
                        te.clone(),
                        none(),
                        f4(c.nmi),
                        f4(c.ari),
                        f4(c.purity),
                    ],
                    &mut set,
                );
            }
        }
        s
    }

    /// Write `eval.md`, `eval.csv` and `eval.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fsutil::write_bytes(&dir.join("eval.md"), self.markdown().as_bytes())?;
        fsutil::write_bytes(&dir.join("eval.csv"), self.csv().as_bytes())?;
        fsutil::write_bytes(&dir.join("eval.json"), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("eval.json"),
        )?)?)
    }
}
