//! `pretext report`: the evaluations of several runs gathered into the comparison the field
//! reads — methods × layers (linear top-1/top-5, kNN, clustering), the accuracy-by-layer
//! plot, and the few-label table — as Markdown, CSV, JSON and one self-contained HTML page.
//! Runs measured under different protocols are refused rather than put side by side.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::lab::InputTransform;
use crate::draw::plot::{Dash, Figure, Panel, Series};
use crate::eval::EvalReport;
use crate::eval::finetune::{FinetuneReport, Labels, Protocol, SummaryRow};
use crate::models::Arch;
use crate::models::probe::ProbeKind;
use crate::util::fsutil;
use crate::util::table::md_row;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub evals: Vec<EvalReport>,
    pub finetunes: Vec<FinetuneReport>,
    /// The runs compared: their budgets and preview sheets (none in older reports).
    #[serde(default)]
    pub runs: Vec<RunSummary>,
}

/// What a run spent and what its task's samples look like, for the report's "Runs"
/// section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run: String,
    /// The task it was trained with (`rotation`, `supervised`, …).
    pub method: String,
    /// Epochs trained, of the epochs asked for.
    pub epochs: usize,
    pub epochs_planned: usize,
    /// Source images seen over all epochs, and the wall-clock seconds of training.
    pub images_seen: u64,
    pub train_seconds: f64,
    /// The run's preview sheet, as the report folder holds it (`previews/…png`).
    pub preview: Option<String>,
    /// The file an imported network came from (`pretext import`): trained elsewhere.
    #[serde(default)]
    pub imported_from: Option<String>,
}

/// The budget and preview of the run in `dir` (`None` for a folder that is not a run:
/// a report may be gathered from evaluation folders alone).
fn run_summary(dir: &Path, index: usize) -> Result<Option<RunSummary>> {
    if !crate::run::RunConfig::path(dir).exists() {
        return Ok(None);
    }
    let rc = crate::run::RunConfig::load(dir)?;
    let state = crate::train::checkpoint::latest(dir)?
        .map(|(_, s)| s)
        .unwrap_or_default();
    let method = rc.method();
    Ok(Some(RunSummary {
        run: dir.display().to_string(),
        preview: dir
            .join("preview.png")
            .is_file()
            .then(|| format!("previews/{}-{method}.png", index + 1)),
        method,
        epochs: state.epoch,
        epochs_planned: rc.train.epochs,
        images_seen: state.images_seen,
        train_seconds: state.train_seconds,
        imported_from: rc.imported().map(|c| c.source.display().to_string()),
    }))
}

/// What must match for two evaluations to share a table.
fn protocol_of(r: &EvalReport) -> String {
    format!(
        "data {}{}, {} train / {} test images, {} classes, probe {:?}, kNN {:?}, pooled to ~{} dims, k-means {:?}",
        r.data,
        r.test_split
            .as_ref()
            .map_or(String::new(), |t| format!(" ({t})")),
        r.train_images,
        r.test_images,
        r.classes,
        r.protocol.probe,
        r.protocol.knn,
        r.protocol.probe_dim,
        r.protocol.kmeans
    )
}

/// The network a row was measured on. Rows of different networks share the tables, but
/// each random-init row is the baseline of its own network only, and every row whose
/// network is not the first one's says how it differs.
fn same_network(a: &EvalReport, b: &EvalReport) -> bool {
    a.backbone == b.backbone && a.input.is_none_or(|i| b.input.is_none_or(|j| i == j))
}

fn input_name(r: &EvalReport) -> String {
    match r.input {
        Some(InputTransform::Rgb) => "RGB".into(),
        Some(InputTransform::Lightness) => "L*".into(),
        None => format!("{}-channel", r.backbone.in_channels),
    }
}

/// The network of `r` in full, for the report's header.
fn network_name(r: &EvalReport) -> String {
    let b = &r.backbone;
    format!(
        "{:?} width {}{}, {} {}×{} input",
        b.arch,
        b.width,
        if b.arch == Arch::Nin {
            format!(" ({} blocks)", b.blocks)
        } else {
            String::new()
        },
        input_name(r),
        b.input_size,
        b.input_size
    )
}

/// How the network of `r` differs from `main`'s ("" when it does not).
fn network_difference(r: &EvalReport, main: &EvalReport) -> String {
    let (b, m) = (&r.backbone, &main.backbone);
    let mut parts = vec![];
    if b.arch != m.arch {
        parts.push(format!("{:?}", b.arch));
    }
    if b.width != m.width {
        parts.push(format!("width {}", b.width));
    }
    if b.arch == Arch::Nin && b.blocks != m.blocks {
        parts.push(format!("{} blocks", b.blocks));
    }
    if b.in_channels != m.in_channels || input_name(r) != input_name(main) {
        parts.push(format!("{} input", input_name(r)));
    }
    if b.input_size != m.input_size {
        parts.push(format!("{0}×{0} px", b.input_size));
    }
    parts.join(", ")
}

/// Read `RUN/eval`, `RUN/eval-random-init` (one random-init row per network) and
/// `RUN/finetune` of every run.
pub fn gather(runs: &[PathBuf]) -> Result<Comparison> {
    let mut evals: Vec<EvalReport> = vec![];
    let mut finetunes = vec![];
    let mut summaries = vec![];
    for run in runs {
        if let Some(r) = run_summary(run, summaries.len())? {
            summaries.push(r);
        }
        let mut found = false;
        for sub in ["eval", "eval-random-init"] {
            let dir = run.join(sub);
            if dir.join("eval.json").exists() {
                let r = EvalReport::read(&dir)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("eval.json").display()))?;
                found = true;
                if !evals.iter().any(|e| {
                    e.method == r.method && r.method == "random-init" && same_network(e, &r)
                }) {
                    evals.push(r);
                }
            }
        }
        let ft = run.join("finetune");
        if ft.join("finetune.json").exists() {
            finetunes.push(FinetuneReport::read(&ft)?);
            found = true;
        }
        if !found {
            bail!(
                "{}: no evaluation found (run `pretext eval --run {0}` or `pretext finetune --run {0}` first)",
                run.display()
            );
        }
    }
    // The baseline row last, below the methods it is read against (a stable sort).
    evals.sort_by_key(|e| e.method == "random-init");
    if let Some(first) = evals.first() {
        let want = protocol_of(first);
        for r in &evals[1..] {
            let got = protocol_of(r);
            if got != want {
                bail!(
                    "{} ({}) was evaluated under another protocol than {} ({}):\n  {got}\nvs\n  {want}\nre-run `pretext eval` with the same settings",
                    r.run,
                    r.method,
                    first.run,
                    first.method
                );
            }
        }
    }
    Ok(Comparison {
        evals,
        finetunes,
        runs: summaries,
    })
}

impl Comparison {
    /// The name each row goes by: its method, and how its network differs from the first
    /// row's when it does ("colorization (L* input)", "random-init (L* input)").
    pub fn row_names(&self) -> Vec<String> {
        let Some(main) = self.evals.first() else {
            return vec![];
        };
        self.evals
            .iter()
            .map(|r| {
                let mut parts = vec![network_difference(r, main)];
                // A transfer row says where the network learnt, beside the same method
                // pretrained on the evaluation's own data.
                parts.extend(
                    r.transfer_from()
                        .map(|from| format!("pretrained on {from}")),
                );
                parts.retain(|p| !p.is_empty());
                match parts.join(", ") {
                    d if d.is_empty() => r.method.clone(),
                    d => format!("{} ({d})", r.method),
                }
            })
            .collect()
    }

    /// Layer names in order of first appearance.
    pub fn layers(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for r in &self.evals {
            for row in &r.rows {
                if !out.contains(&row.layer) {
                    out.push(row.layer.clone());
                }
            }
        }
        out
    }

    /// Test top-1 by layer, one line per method: a panel for the linear probe, and one
    /// for kNN (its first setting) when every evaluation has it. `None` without rows.
    pub fn chart(&self) -> Option<Figure> {
        let first = self.evals.first()?;
        let layers = self.layers();
        let names = self.row_names();
        let panel =
            |title: String, value: &dyn Fn(&crate::eval::table::LayerRow) -> Option<f64>| Panel {
                title,
                series: self
                    .evals
                    .iter()
                    .zip(&names)
                    .map(|(r, name)| Series {
                        name: name.clone(),
                        values: layers
                            .iter()
                            .map(|l| r.rows.iter().find(|x| &x.layer == l).and_then(value))
                            .collect(),
                        dash: Dash::for_method(&r.method),
                    })
                    .collect(),
            };
        let mut panels = vec![panel("Linear probe".into(), &|x| Some(x.linear.top1))];
        let knn = first.rows.first().and_then(|r| r.knn.first());
        if let Some(k) = knn.filter(|_| {
            self.evals
                .iter()
                .all(|r| r.rows.iter().all(|x| !x.knn.is_empty()))
        }) {
            panels.push(panel(format!("kNN (k = {}, T = {})", k.k, k.t), &|x| {
                x.knn.first().map(|k| k.top1)
            }));
        }
        let data = crate::data::fetch::title_of(Path::new(&first.data));
        let b = &first.backbone;
        let backbone = match b.arch {
            Arch::Nin => format!("NIN ({} blocks, width {})", b.blocks, b.width),
            other => format!(
                "{} (width {})",
                crate::models::torch::arch_name(other),
                b.width
            ),
        };
        Some(Figure {
            title: format!("{data}: {backbone}, frozen features by layer"),
            subtitle: format!(
                "test top-1 on {} test images; probes and neighbours from {} labelled train images ({} classes)",
                first.test_images, first.train_images, first.classes
            ),
            x_title: "layer".into(),
            y_title: "test top-1 accuracy (%)".into(),
            x_labels: layers,
            panels,
        })
    }

    fn table(&self, title: &str, cell: impl Fn(&EvalReport, &str) -> Option<String>) -> String {
        let layers = self.layers();
        let head = std::iter::once("method").chain(layers.iter().map(String::as_str));
        let mut s = format!(
            "### {title}\n\n{}\n{}\n",
            md_row(head),
            md_row(vec!["---"; layers.len() + 1]).replace(' ', "")
        );
        for (r, name) in self.evals.iter().zip(self.row_names()) {
            let cells = layers
                .iter()
                .map(|l| cell(r, l).unwrap_or_else(|| "–".into()));
            let _ = writeln!(s, "{}", md_row(std::iter::once(name).chain(cells)));
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from("# Comparison\n\n");
        if let Some(first) = self.evals.first() {
            let p = &first.protocol;
            let _ = writeln!(
                s,
                "Frozen features of each method's backbone ({}{}), {} labelled train / {} test images of {}{} ({} classes). Linear: one probe per layer on features average-pooled to ~{} dims and standardized, {} epochs {:?} {}. kNN: cosine similarity, weighted vote exp(sim/T).{} Accuracies in %; **bold**: the method's best layer.\n",
                network_name(first),
                if self
                    .row_names()
                    .iter()
                    .zip(&self.evals)
                    .any(|(n, r)| *n != r.method)
                {
                    "; a row naming another network was measured on that one, and a random-init row is the baseline of its own network only"
                } else {
                    ""
                },
                first.train_images,
                first.test_images,
                first.data,
                first
                    .test_split
                    .as_ref()
                    .map_or(String::new(), |t| format!(" ({t})")),
                first.classes,
                p.probe_dim,
                p.probe.epochs,
                p.probe.optim.kind,
                first.probe_setting(),
                if self
                    .evals
                    .iter()
                    .any(|r| r.rows.iter().any(|x| x.cluster.is_some()))
                {
                    format!(
                        " k-means: k = {} on the test features, best of {} k-means++ starts.",
                        first.classes, p.kmeans.restarts
                    )
                } else {
                    String::new()
                }
            );
            s += &self.table("Linear probe top-1 (top-5)", |r, l| {
                let best = r.best_layer().map(|b| b.layer.as_str());
                r.rows.iter().find(|x| x.layer == l).map(|x| {
                    let mut v = format!(
                        "{:.2} ({:.2})",
                        100.0 * x.linear.top1,
                        100.0 * x.linear.top5
                    );
                    // A swept probe's setting, beside the number it gave.
                    if let Some(c) = &x.linear.chosen {
                        v += &format!(" lr {} wd {}", c.lr, c.weight_decay);
                    }
                    if best == Some(l) {
                        format!("**{v}**")
                    } else {
                        v
                    }
                })
            });
            for kind in [ProbeKind::Mlp, ProbeKind::Conv] {
                if !self.evals.iter().any(|r| r.head_kinds().contains(&kind)) {
                    continue;
                }
                s.push('\n');
                s += &self.table(
                    &format!(
                        "{} probe top-1 (top-5): RotNet's non-linear classifier on the frozen layer",
                        kind.name()
                    ),
                    |r, l| {
                        r.rows
                            .iter()
                            .find(|x| x.layer == l)
                            .and_then(|x| x.head(kind))
                            .map(|h| {
                                format!(
                                    "{:.2} ({:.2}), {} ep",
                                    100.0 * h.top1,
                                    100.0 * h.top5,
                                    h.epochs
                                )
                            })
                    },
                );
            }
            for (k, setting) in first.rows[0].knn.iter().enumerate() {
                s.push('\n');
                s += &self.table(
                    &format!("kNN top-1, k = {}, T = {}", setting.k, setting.t),
                    |r, l| {
                        r.rows
                            .iter()
                            .find(|x| x.layer == l)
                            .and_then(|x| x.knn.get(k))
                            .map(|x| format!("{:.2}", 100.0 * x.top1))
                    },
                );
            }
            if self
                .evals
                .iter()
                .any(|r| r.rows.iter().any(|x| x.cluster.is_some()))
            {
                s.push('\n');
                s += &self.table("k-means NMI / ARI / purity (%)", |r, l| {
                    r.rows
                        .iter()
                        .find(|x| x.layer == l)
                        .and_then(|x| x.cluster.as_ref())
                        .map(|c| format!("{:.3} / {:.3} / {:.1}", c.nmi, c.ari, 100.0 * c.purity))
                });
            }
        }
        if !self.finetunes.is_empty() {
            let _ = writeln!(
                s,
                "\n### Few-label fine-tuning (test top-1 %, mean ± std over seeds)\n\n| method | labels | protocol | seeds | from the method | same network from random init |\n|---|---|---|---|---|---|"
            );
            for f in &self.finetunes {
                let rows = f.summary();
                let get = |labels: Labels, protocol: Protocol, init: &str| -> Option<&SummaryRow> {
                    rows.iter()
                        .find(|r| r.labels == labels && r.protocol == protocol && r.init == init)
                };
                for labels in f.protocol.labels() {
                    for &protocol in &f.protocol.protocols {
                        let fmt = |r: Option<&SummaryRow>| {
                            r.map_or("–".into(), |r| {
                                format!("{:.2} ± {:.2}", 100.0 * r.top1.0, 100.0 * r.top1.1)
                            })
                        };
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {} | {} | {} |",
                            f.name(),
                            labels.name(),
                            f.protocol_name(protocol),
                            f.protocol.seeds.len(),
                            fmt(get(labels, protocol, "pretrained")),
                            fmt(get(labels, protocol, "random-init"))
                        );
                    }
                }
            }
        }
        if !self.runs.is_empty() {
            let _ = writeln!(
                s,
                "\n### Runs\n\n| method | run | epochs | images seen | training time |\n|---|---|---|---|---|"
            );
            for r in &self.runs {
                if let Some(from) = &r.imported_from {
                    let _ = writeln!(
                        s,
                        "| {} | {} | imported from {from} | – | – |",
                        r.method, r.run
                    );
                    continue;
                }
                let _ = writeln!(
                    s,
                    "| {} | {} | {} of {} | {} | {:.1} min |",
                    r.method,
                    r.run,
                    r.epochs,
                    r.epochs_planned,
                    r.images_seen,
                    r.train_seconds / 60.0
                );
            }
            s.push('\n');
            for r in &self.runs {
                if let Some(p) = &r.preview {
                    let _ = writeln!(s, "![{}: the task's samples]({p})", r.method);
                }
            }
        }
        s
    }

    /// Long format: one line per (method, layer, protocol, metric). `pretrained_on` names
    /// the data a transfer's network learnt on (empty when it is the evaluation's own), so
    /// a transfer line never passes for the method pretrained in-domain.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "method,layer,protocol,setting,metric,value,train_images,test_images,network,pretrained_on\n",
        );
        for r in &self.evals {
            let (tr, te) = (r.train_images, r.test_images);
            // `{net}` stands last but one on every line: the data it learnt on follows it.
            let net = format!(
                "{},{}",
                network_name(r).replace(',', ";"),
                r.transfer_from().unwrap_or_default().replace(',', ";")
            );
            for x in &r.rows {
                let setting = format!("probe {} epochs", r.protocol.probe.epochs);
                for (m, v) in [("top1", x.linear.top1), ("top5", x.linear.top5)] {
                    let _ = writeln!(
                        s,
                        "{},{},linear,{setting},{m},{v:.4},{tr},{te},{net}",
                        r.method, x.layer
                    );
                }
                for h in &x.heads {
                    for (m, v) in [("top1", h.top1), ("top5", h.top5)] {
                        let _ = writeln!(
                            s,
                            "{},{},{},{} epochs,{m},{v:.4},{tr},{te},{net}",
                            r.method,
                            x.layer,
                            h.kind.name(),
                            h.epochs
                        );
                    }
                }
                for k in &x.knn {
                    for (m, v) in [("top1", k.top1), ("top5", k.top5)] {
                        let _ = writeln!(
                            s,
                            "{},{},knn,k={} T={},{m},{v:.4},{tr},{te},{net}",
                            r.method, x.layer, k.k, k.t
                        );
                    }
                }
                if let Some(c) = &x.cluster {
                    for (m, v) in [("nmi", c.nmi), ("ari", c.ari), ("purity", c.purity)] {
                        let _ = writeln!(
                            s,
                            "{},{},kmeans,k={},{m},{v:.4},,{te},{net}",
                            r.method, x.layer, c.k
                        );
                    }
                }
            }
        }
        for f in &self.finetunes {
            for r in &f.rows {
                let _ = writeln!(
                    s,
                    "{},{},finetune,{} {} seed {} {} {} epochs,top1,{:.4},{},{},,{}",
                    f.method,
                    r.layer.as_deref().unwrap_or("all"),
                    r.labels().name(),
                    f.protocol_name(r.protocol),
                    r.seed,
                    r.init,
                    f.protocol.epochs,
                    r.top1,
                    r.train_images,
                    f.test_images,
                    // A random-init twin learnt nothing before: no data to name.
                    if r.init == "pretrained" {
                        f.transfer_from().unwrap_or_default().replace(',', ";")
                    } else {
                        String::new()
                    }
                );
            }
        }
        s
    }

    /// One page: the Markdown tables as HTML, the plot inline, each run's budget and
    /// preview sheet. Void elements are closed (`<img …/>`), so the page is well-formed
    /// XML as well as HTML.
    pub fn html(&self) -> String {
        let mut body = String::new();
        let mut in_table = false;
        for line in self.markdown().lines() {
            if let Some(cells) = line.strip_prefix('|') {
                if line.starts_with("|---") {
                    continue;
                }
                let tag = if in_table { "td" } else { "th" };
                if !in_table {
                    body.push_str("<table>\n");
                    in_table = true;
                }
                body.push_str("<tr>");
                for c in cells.trim_end_matches('|').split('|') {
                    let c = html_escape(c.trim());
                    let c = match c.strip_prefix("**").and_then(|c| c.strip_suffix("**")) {
                        Some(b) => format!("<b>{b}</b>"),
                        None => c,
                    };
                    let _ = write!(body, "<{tag}>{c}</{tag}>");
                }
                body.push_str("</tr>\n");
                continue;
            }
            if in_table {
                body.push_str("</table>\n");
                in_table = false;
            }
            if let Some((alt, src)) = line
                .strip_prefix("![")
                .and_then(|l| l.strip_suffix(')'))
                .and_then(|l| l.split_once("]("))
            {
                let _ = writeln!(
                    body,
                    "<figure><img src=\"{}\" alt=\"{}\"/><figcaption>{}</figcaption></figure>",
                    html_escape(src),
                    html_escape(alt),
                    html_escape(alt)
                );
            } else if let Some(h) = line.strip_prefix("### ") {
                let _ = writeln!(body, "<h3>{}</h3>", html_escape(h));
            } else if let Some(h) = line.strip_prefix("# ") {
                let _ = writeln!(body, "<h1>{}</h1>", html_escape(h));
                if let Some(chart) = self.chart() {
                    body.push_str(&chart.svg());
                }
            } else if !line.is_empty() {
                let _ = writeln!(
                    body,
                    "<p>{}</p>",
                    html_escape(line).replace("**bold**", "<b>bold</b>")
                );
            }
        }
        if in_table {
            body.push_str("</table>\n");
        }
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"/><title>pretext comparison</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style></head><body>\n{body}</body></html>\n"
        )
    }

    /// Write report.{md,csv,json,html} and accuracy-by-layer.{png,svg} into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        fsutil::write_bytes(&dir.join("report.md"), self.markdown().as_bytes())?;
        fsutil::write_bytes(&dir.join("report.csv"), self.csv().as_bytes())?;
        fsutil::write_bytes(&dir.join("report.json"), &serde_json::to_vec_pretty(self)?)?;
        fsutil::write_bytes(&dir.join("report.html"), self.html().as_bytes())?;
        if let Some(chart) = self.chart() {
            fsutil::write_bytes(&dir.join("accuracy-by-layer.svg"), chart.svg().as_bytes())?;
            crate::draw::preview::save(&chart.png()?, &dir.join("accuracy-by-layer.png"))?;
        }
        // The page names its pictures relative to itself, so the folder can be moved or
        // sent as a whole.
        for r in &self.runs {
            if let Some(p) = &r.preview {
                let from = Path::new(&r.run).join("preview.png");
                let bytes =
                    std::fs::read(&from).map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
                std::fs::create_dir_all(dir.join("previews"))?;
                fsutil::write_bytes(&dir.join(p), &bytes)?;
            }
        }
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Self> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("report.json"),
        )?)?)
    }
}

/// Text and attribute values made safe for the page (which is also well-formed XML, so a
/// strict parser checks it in the tests).
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
