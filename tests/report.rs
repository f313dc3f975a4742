//! `pretext report` over hand-made evaluations: every file is written, the JSON reads back
//! equal, the plot has one line per method, and mismatched protocols are refused.

use std::path::Path;

use pretext::eval::cluster::ClusterScores;
use pretext::eval::knn::KnnResult;
use pretext::eval::linear::ProbeResult;
use pretext::eval::{EvalConfig, EvalReport, LayerRow};
use pretext::models::{Arch, BackboneConfig};
use pretext::report::{Comparison, gather};

fn eval(method: &str, tops: &[f64]) -> EvalReport {
    EvalReport {
        method: method.into(),
        run: format!("runs/{method}"),
        backbone: BackboneConfig::new(Arch::Nin, 32),
        input: None,
        checkpoint_epoch: 3,
        data: "cifar10".into(),
        pretrained_on: None,
        test_split: None,
        train_images: 1000,
        test_images: 500,
        classes: 10,
        protocol: EvalConfig::default(),
        seconds: 1.0,
        rows: tops
            .iter()
            .enumerate()
            .map(|(i, &t)| LayerRow {
                layer: format!("block{}", i + 1),
                dim: 2048,
                pool_grid: 8,
                linear: ProbeResult {
                    top1: t,
                    top5: t + 0.3,
                    train_top1: t + 0.1,
                    chosen: None,
                },
                knn: vec![KnnResult {
                    k: 20,
                    t: 0.07,
                    top1: t - 0.05,
                    top5: t + 0.2,
                }],
                cluster: Some(ClusterScores {
                    k: 10,
                    nmi: t / 4.0,
                    ari: t / 8.0,
                    purity: t / 2.0,
                    inertia: 1.0,
                }),
                heads: vec![],
            })
            .collect(),
    }
}

fn put(run: &Path, sub: &str, r: &EvalReport) {
    r.write(&run.join(sub)).unwrap();
}

#[test]
fn a_report_writes_every_file_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("rot"), tmp.path().join("jig"));
    put(&a, "eval", &eval("rotation", &[0.48, 0.49, 0.42, 0.37]));
    put(
        &a,
        "eval-random-init",
        &eval("random-init", &[0.45, 0.44, 0.40, 0.38]),
    );
    put(&b, "eval", &eval("jigsaw", &[0.46, 0.47, 0.41, 0.35]));
    // The random-init row of a second run is not repeated.
    put(
        &b,
        "eval-random-init",
        &eval("random-init", &[0.45, 0.44, 0.40, 0.38]),
    );
    let c = gather(&[a.clone(), b.clone()]).unwrap();
    let methods: Vec<&str> = c.evals.iter().map(|e| e.method.as_str()).collect();
    // Methods in the order given, the baseline last.
    assert_eq!(methods, ["rotation", "jigsaw", "random-init"]);
    let out = tmp.path().join("report");
    c.write(&out).unwrap();
    for f in [
        "report.md",
        "report.csv",
        "report.json",
        "report.html",
        "accuracy-by-layer.svg",
        "accuracy-by-layer.png",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert_eq!(Comparison::read(&out).unwrap(), c);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    // Rotation's best layer is block2, in bold, with its top-5.
    assert!(md.contains("**49.00 (79.00)**"), "{md}");
    assert!(md.contains("kNN top-1, k = 20, T = 0.07"));
    assert!(md.contains("0.120 / 0.060 / 24.0"), "{md}");
    let svg = std::fs::read_to_string(out.join("accuracy-by-layer.svg")).unwrap();
    // Two panels (linear probe, kNN), three methods each; random init dashed.
    assert_eq!(svg.matches("<polyline class=\"series\"").count(), 6);
    assert!(svg.contains(">kNN (k = 20, T = 0.07)</text>"), "{svg}");
    assert_eq!(
        svg.matches("data-name=\"random-init\" fill=\"none\" stroke=\"rgb(44,160,44)\" stroke-width=\"2\" stroke-dasharray=\"8 5\"").count(),
        2,
        "{svg}"
    );
    // The PNG is the SVG at twice its density.
    let png = image::open(out.join("accuracy-by-layer.png")).unwrap();
    let size = |attr: &str| -> u32 {
        let at = svg.find(&format!("{attr}=\"")).unwrap() + attr.len() + 2;
        svg[at..].split('"').next().unwrap().parse::<f64>().unwrap() as u32
    };
    assert_eq!(
        (png.width(), png.height()),
        (2 * size("width"), 2 * size("height"))
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("<table>") && html.contains("<b>49.00 (79.00)</b>")
    );
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    assert!(
        csv.contains("rotation,block2,linear,probe 30 epochs,top1,0.4900,1000,500"),
        "{csv}"
    );
    assert!(
        csv.contains("jigsaw,block1,kmeans,k=10,nmi,0.1150,,500"),
        "{csv}"
    );
}

/// With `--probe-sweep`, the setting each layer's probe was chosen with stands beside its
/// number, in the evaluation's table and in the comparison.
#[test]
fn a_swept_probe_shows_its_chosen_setting_beside_each_number() {
    let mut r = eval("rotation", &[0.48, 0.49]);
    r.protocol.probe.sweep = Some(pretext::eval::linear::SweepConfig::default());
    for (row, lr) in r.rows.iter_mut().zip([0.1, 0.001]) {
        row.linear.chosen = Some(pretext::eval::linear::Chosen {
            lr,
            weight_decay: 0.0,
            val_top1: 0.5,
            val_images: 100,
        });
    }
    let md = r.markdown();
    assert!(md.contains("chosen per layer from [0.1, 0.01, 0.001, 0.0001] × [0.0005, 0.0] on a stratified 10% validation split"), "{md}");
    assert!(md.contains("| probe lr / wd (val top-1) |"), "{md}");
    assert!(md.contains("| 0.001 / 0 (50.00) |"), "{md}");
    // 0.1 is the grid's largest: said, since a wider grid might do better.
    assert!(md.contains("| 0.1* / 0 (50.00) |"), "{md}");
    assert!(
        md.contains("smallest or largest learning rate of the grid"),
        "{md}"
    );
    // And in the CSV: lr, weight decay and validation top-1 at the end of each probe line.
    let csv = r.csv();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",lr,weight_decay,val_top1,pretrained_on")
    );
    assert!(
        csv.contains("rotation,block2,2048,8,linear,,,0.4900,0.7900,1000,500,30,,,,0.001,0,0.5000"),
        "{csv}"
    );
    let tmp = tempfile::tempdir().unwrap();
    put(&tmp.path().join("rot"), "eval", &r);
    let c = gather(&[tmp.path().join("rot")]).unwrap().markdown();
    assert!(c.contains("**49.00 (79.00) lr 0.001 wd 0**"), "{c}");
    assert!(c.contains("48.00 (78.00) lr 0.1 wd 0"), "{c}");
}

#[test]
fn runs_under_different_protocols_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    put(&a, "eval", &eval("rotation", &[0.5]));
    let mut other = eval("jigsaw", &[0.5]);
    other.protocol.probe.epochs = 5;
    put(&b, "eval", &other);
    let e = gather(&[a, b]).unwrap_err().to_string();
    assert!(
        e.contains("another protocol") && e.contains("epochs: 5"),
        "{e}"
    );
    // A run without any evaluation is named.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = gather(&[empty]).unwrap_err().to_string();
    assert!(e.contains("no evaluation found"), "{e}");
}

/// Issue 16, item 6: runs of different networks were put under one random-init row (the
/// first one found) and one header naming the first network.
#[test]
fn each_network_gets_its_own_random_init_row_and_rows_name_their_network() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("narrow"), tmp.path().join("wide"));
    put(&a, "eval", &eval("rotation", &[0.48, 0.49]));
    put(&a, "eval-random-init", &eval("random-init", &[0.30, 0.31]));
    let wide = |method: &str, tops: &[f64]| {
        let mut r = eval(method, tops);
        r.backbone.width = 96;
        r
    };
    put(&b, "eval", &wide("jigsaw", &[0.52, 0.53]));
    put(&b, "eval-random-init", &wide("random-init", &[0.40, 0.41]));
    let c = gather(&[a, b]).unwrap();
    assert_eq!(
        c.row_names(),
        [
            "rotation",
            "jigsaw (width 96)",
            "random-init",
            "random-init (width 96)"
        ]
    );
    let md = c.markdown();
    assert!(md.contains("| random-init (width 96) | 40.00"), "{md}");
    assert!(md.contains("| random-init | 30.00"), "{md}");
    assert!(md.contains("Nin width 192 (4 blocks)"), "{md}");
    assert!(md.contains("a random-init row is the baseline of its own network only"));
    // The same random-init network twice is still one row.
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    put(&x, "eval-random-init", &eval("random-init", &[0.3]));
    put(&y, "eval-random-init", &eval("random-init", &[0.3]));
    assert_eq!(gather(&[x, y]).unwrap().evals.len(), 1);
}

/// A recipe's page sets each published number beside the measured one: the linear probe's
/// and an mlp head's at their layer, `–` where the study measured nothing.
#[test]
fn a_recipe_sets_published_numbers_beside_measured_ones() {
    use pretext::commands::recipe::{Applied, Published};
    let mut r = eval("rotation", &[0.48, 0.49]);
    r.rows[1].heads.push(pretext::eval::heads::HeadResult {
        kind: pretext::models::probe::ProbeKind::Mlp,
        top1: 0.5123,
        top5: 0.9,
        epochs: 3,
        run: "x".into(),
    });
    let c = Comparison {
        evals: vec![r],
        finetunes: vec![],
        runs: vec![],
    };
    let p = |protocol: &str, at: &str, top1: f64| Published {
        method: "rotation".into(),
        protocol: protocol.into(),
        at: at.into(),
        top1,
    };
    let applied = Applied {
        name: "rotnet".into(),
        file: "recipes/rotnet.toml".into(),
        paper: "Gidaris et al.".into(),
        scale: 0.1,
        scaled: vec!["pretraining epochs 200 → 20".into()],
        published: vec![
            p("mlp", "block2", 89.06),
            p("linear", "block1", 70.0),
            p("conv", "block2", 91.16),
            p("frozen", "20/class", 64.63),
        ],
    };
    let md = applied.markdown(&c);
    assert!(
        md.contains("Scaled down ×0.1 for this machine: pretraining epochs 200 → 20"),
        "{md}"
    );
    assert!(
        md.contains("| rotation | mlp | block2 | 89.06 | 51.23 |"),
        "{md}"
    );
    assert!(
        md.contains("| rotation | linear | block1 | 70.00 | 48.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| rotation | conv | block2 | 91.16 | – |"),
        "{md}"
    );
    assert!(
        md.contains("| rotation | frozen | 20/class | 64.63 | – |"),
        "{md}"
    );
}
