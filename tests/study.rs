//! `pretext study` end to end on a small slice of the real CIFAR-10: killed mid-way, run
//! again, it finishes and writes every file; run a third time, it trains nothing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn study(out: &Path, cache: &Path, budget: &str, fractions: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
    c.arg("study")
        .arg("--data")
        .arg(common::cifar_root())
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .args([
            "--tasks",
            "rotation,relative-position,colorization",
            "--budget",
            budget,
            "--width",
            "16",
            "--train-images",
            "512",
            "--batch-size",
            "64",
            "--eval-train-images",
            "500",
            "--eval-test-images",
            "500",
            "--probe-epochs",
            "3",
            "--fractions",
            fractions,
            "--seeds",
            "0",
            "--finetune-epochs",
            "1",
            "--quiet",
        ]);
    c
}

fn epoch_records(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_killed_study_resumes_writes_every_file_and_then_has_nothing_left_to_do() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let (out, cache) = (tmp.path().join("study"), tmp.path().join("cache"));

    // Kill it once relative position (the second method, ~20 short epochs) has a checkpoint.
    let mut child = study(&out, &cache, "6s", "0.01")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = out.join("relative-position/checkpoints/latest.json");
    let t0 = Instant::now();
    while !marker.exists() && t0.elapsed() < Duration::from_secs(600) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the study ended ({status}) before it could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let first = child.wait_with_output().unwrap();
    assert!(marker.exists(), "relative position never checkpointed");
    // The plan came first, with every fine-tuning counted (even under --quiet).
    let plan = String::from_utf8_lossy(&first.stderr);
    assert!(
        plan.contains("pretraining: 4 method(s) (rotation, relative-position, colorization, supervised), 0.1 min each"),
        "{plan}"
    );
    assert!(plan.contains("on 500 train / 500 test images"), "{plan}");
    assert!(
        plan.contains("3 fine-tunings of 1 epochs (rotation, relative-position, colorization × labels 1% × 1 seed(s) × protocol whole), each beside a random-init one (at most 2 more"),
        "{plan}"
    );
    // Each part's estimated time, and the whole's, from a timing of the networks.
    assert!(plan.contains("test images: ~"), "{plan}");
    assert!(
        plan.contains("more, shared between methods of one network): ~"),
        "{plan}"
    );
    assert!(plan.contains("estimated total: ~"), "{plan}");
    assert!(!out.join("study.md").exists());

    let done = study(&out, &cache, "6s", "0.01").output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    for f in [
        "study.toml",
        "study.json",
        "study.md",
        "report/report.md",
        "report/report.csv",
        "report/report.json",
        "report/report.html",
        "report/accuracy-by-layer.png",
        "report/accuracy-by-layer.svg",
        "rotation/eval-random-init/eval.json",
    ] {
        assert!(out.join(f).is_file(), "{f} is missing");
    }
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("study.json")).unwrap()).unwrap();
    let methods = log["methods"].as_array().unwrap();
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rotation",
            "relative-position",
            "colorization",
            "supervised"
        ]
    );
    for m in methods {
        let name = m["method"].as_str().unwrap();
        let run = out.join(name);
        let epochs = m["epochs"].as_u64().unwrap();
        assert!(epochs >= 1, "{name}");
        // Every epoch trained exactly once, across the kill and the resume.
        assert_eq!(
            epoch_records(&run),
            (1..=epochs).collect::<Vec<_>>(),
            "{name}"
        );
        // 512 images in batches of 64: 512 per epoch.
        assert_eq!(m["images_seen"].as_u64().unwrap(), 512 * epochs, "{name}");
        assert!(m["calibrated_images_per_second"].as_f64().unwrap() > 0.0);
        assert!(run.join("eval/eval.json").is_file(), "{name}");
        // A study evaluates each network once: it keeps no feature store.
        assert!(!run.join("features").exists(), "{name}");
        if name != "supervised" {
            assert!(run.join("finetune/finetune.json").is_file(), "{name}");
        }
    }
    // Relative position costs far less per image than rotation (two 8-px patches against
    // four 32-px images), so the same budget buys it more epochs.
    assert!(methods[1]["epochs"].as_u64() > methods[0]["epochs"].as_u64());
    // The random-init fine-tunings are shared by identical configurations: rotation and
    // relative position (RGB) use one, colorization (L*) another.
    let pool: Vec<_> = std::fs::read_dir(out.join("random-init-finetune"))
        .unwrap()
        .collect();
    assert_eq!(pool.len(), 2);

    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    for method in [
        "rotation",
        "relative-position",
        "colorization (L* input)",
        "supervised",
        "random-init",
        // Colorization's own baseline: the same network on L*, from random init.
        "random-init (L* input)",
    ] {
        assert!(md.contains(&format!("| {method} |")), "{method} row:\n{md}");
    }
    assert!(md.contains("k-means NMI") && md.contains("Few-label fine-tuning"));
    // Each run's budget, and the page as people read it: it parses with a strict parser
    // (no unclosed or mismatched element), holds the plot and the tables, and shows a
    // preview sheet per run from a file that is there.
    for name in &names {
        assert!(
            md.contains(&format!("| {name} | {}", out.join(name).display())),
            "{name}:\n{md}"
        );
    }
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("report.html does not parse: {e}"));
    let elements = |tag: &str| {
        doc.descendants()
            .filter(|n| n.tag_name().name() == tag)
            .collect::<Vec<_>>()
    };
    assert_eq!(elements("svg").len(), 1, "the plot");
    assert!(
        elements("table").len() >= 5,
        "layer tables, few-label table, runs"
    );
    let images: Vec<&str> = elements("img")
        .iter()
        .map(|n| n.attribute("src").unwrap())
        .collect();
    assert_eq!(images.len(), names.len(), "{images:?}");
    for src in &images {
        assert!(out.join("report").join(src).is_file(), "{src} is missing");
    }

    // Nothing left to do: no training, the same report.
    let logs: Vec<String> = names
        .iter()
        .map(|n| std::fs::read_to_string(out.join(n).join("metrics.jsonl")).unwrap())
        .collect();
    let again = study(&out, &cache, "6s", "0.01").output().unwrap();
    assert!(again.status.success());
    for (n, before) in names.iter().zip(&logs) {
        let after = std::fs::read_to_string(out.join(n).join("metrics.jsonl")).unwrap();
        assert_eq!(&after, before, "{n} trained again");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("report/report.md")).unwrap(),
        md
    );

    // Other settings in the same folder are refused, not mixed in.
    let other = study(&out, &cache, "7s", "0.01").output().unwrap();
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("other settings"));
}

#[test]
fn a_fraction_that_leaves_a_class_empty_is_refused_before_any_training() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("study");
    let r = study(&out, &tmp.path().join("cache"), "6s", "0.00001")
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("leaves class 0"), "{err}");
    assert!(!out.exists(), "nothing is created for a refused study");
}

/// A transfer study's pretraining data must fit the network the evaluation data needs,
/// and a count per class no class can give is refused: both before anything is created.
#[test]
fn a_transfer_or_per_class_study_that_cannot_run_is_refused_before_any_training() {
    let tmp = tempfile::tempdir().unwrap();
    // Unlabelled 16×16 images: the CIFAR network takes 32×32.
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    for i in 0..8 {
        image::RgbImage::from_pixel(16, 16, image::Rgb([i * 30, 50, 90]))
            .save(small.join(format!("{i}.png")))
            .unwrap();
    }
    let out = tmp.path().join("study");
    let r = study(&out, &tmp.path().join("cache"), "6s", "0.1")
        .arg("--pretrain-data")
        .arg(&small)
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("16") && err.contains("32"), "{err}");
    assert!(!out.exists(), "nothing is created for a refused study");

    let r = study(&out, &tmp.path().join("cache"), "6s", "0.1")
        .args(["--per-class", "6000", "--protocol", "whole,frozen"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("6000 labels per class"), "{err}");
    assert!(!out.exists(), "nothing is created for a refused study");
}

/// Every shipped paper recipe, scaled down, passes the study's checks and trains a few
/// steps of each of its methods on the real CIFAR-10 slice (`--dry-run`), writing nothing.
#[test]
fn every_recipe_runs_a_scaled_down_step() {
    let _serial = common::serial();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("study");
    let recipes = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut n = 0;
    for f in std::fs::read_dir(&recipes).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        n += 1;
        let r = Command::new(env!("CARGO_BIN_EXE_pretext"))
            .arg("study")
            .arg("--recipe")
            .arg(&f)
            .arg("--data")
            .arg(common::cifar_root())
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .args([
                "--scale",
                "0.01",
                "--train-images",
                "64",
                "--eval-train-images",
                "200",
                "--eval-test-images",
                "100",
                "--dry-run",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{}: {err}", f.display());
        assert!(
            err.contains("(recipe ") && err.contains("scaled ×0.01"),
            "{err}"
        );
        assert!(err.contains("[dry run] supervised: trains"), "{err}");
        assert!(!out.exists(), "a dry run writes nothing");
    }
    assert!(n >= 6, "{n} recipes");
}

/// A flag the recipe would replace is refused, never dropped in silence (a user who adds
/// `--tasks jigsaw` must not get rotation's table under that name), and nothing is created;
/// `--per-class` narrows the recipe's counts and the plan says so.
#[test]
fn a_recipe_refuses_the_flags_it_would_override() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("study");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/rotnet-cifar10-nin4.toml");
    let base = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
        c.arg("study")
            .arg("--recipe")
            .arg(&recipe)
            .arg("--data")
            .arg(common::cifar_root())
            .arg("--out")
            .arg(&out)
            // Should a flag slip through, a dry run ends the test in seconds.
            .args(["--scale", "0.01", "--train-images", "64", "--dry-run"]);
        c
    };
    for flag in [
        &["--tasks", "jigsaw"][..],
        &["--width", "32"],
        &["--probe", "linear"],
        &["--epoch-size", "100"],
        &["--seeds", "1"],
    ] {
        let r = base().args(flag).output().unwrap();
        assert!(!r.status.success(), "{flag:?} was accepted");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains("cannot be used with") && err.contains(flag[0]),
            "{flag:?}: {err}"
        );
        assert!(!out.exists(), "nothing is created for a refused study");
    }
    let r = base().args(["--per-class", "20,50"]).output().unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--per-class 50"), "{err}");
    assert!(!out.exists(), "nothing is created for a refused study");
}
