//! The command line on the real CIFAR-10 tree.

mod common;

use std::process::Command;

fn pretext() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
}

/// Run the command, require success (showing its stderr otherwise), return its stdout.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn data_inspect_reports_splits_counts_and_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let text = stdout_of(
        pretext()
            .arg("data")
            .arg("inspect")
            .arg(common::cifar_root())
            .arg("--cache-dir")
            .arg(tmp.path())
            .arg("--quiet"),
    );
    assert!(
        text.contains("train: 50000 images, 32×32×3, 10 classes"),
        "{text}"
    );
    assert!(
        text.contains("test: 10000 images, 32×32×3, 10 classes"),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("airplane"))
            .count(),
        2,
        "{text}"
    );
    assert!(text.contains("5000") && text.contains("1000"));
    // The decoded cache was written and is reused on the next call.
    let caches = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(caches, 2, "one cache file per split");
}

#[test]
fn jigsaw_perms_prints_the_statistics_of_the_set_it_lists() {
    let text = stdout_of(pretext().args(["jigsaw-perms", "--size", "12", "--seed", "3", "--list"]));
    let mut lines = text.lines();
    let head = lines.next().unwrap();
    let perms: Vec<Vec<u8>> = lines
        .map(|l| serde_json::from_str(l).expect("a permutation per line"))
        .collect();
    assert_eq!(perms.len(), 12);
    // Recompute the statistics from the listed set by hand.
    let (mut sum, mut min, mut max, mut pairs) = (0usize, 9usize, 0usize, 0usize);
    for i in 0..perms.len() {
        assert_eq!(
            {
                let mut p = perms[i].clone();
                p.sort();
                p
            },
            (0..9).collect::<Vec<u8>>(),
            "each line is a permutation of 0..9"
        );
        for j in i + 1..perms.len() {
            let d = perms[i]
                .iter()
                .zip(&perms[j])
                .filter(|(a, b)| a != b)
                .count();
            assert!(d > 0, "duplicate permutations");
            sum += d;
            min = min.min(d);
            max = max.max(d);
            pairs += 1;
        }
    }
    let mean = sum as f64 / pairs as f64;
    let want = format!("mean {mean:.3}, min {min}, max {max}");
    assert!(head.contains(&want), "{head} vs {want}");
}

#[test]
fn bench_times_a_task_and_its_pipeline_on_real_data() {
    let tmp = tempfile::tempdir().unwrap();
    let text = stdout_of(
        pretext()
            .args(["bench", "--tasks-only", "--tasks", "relative-position"])
            .args(["--steps", "1", "--batch", "16", "--quiet", "--data"])
            .arg(common::cifar_root())
            .arg("--cache-dir")
            .arg(tmp.path()),
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("| relative-position |"))
        .unwrap_or_else(|| panic!("no row:\n{text}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | task | backbone | width | batch | inputs/image | train | pipeline | ratio | peak |
    assert_eq!(cells[5], "2", "two patches per image: {row}");
    let train: f64 = cells[6].parse().unwrap();
    let pipeline: f64 = cells[7].parse().unwrap();
    assert!(train > 0.0 && pipeline > 0.0, "{row}");
}

/// An interrupted command says how to continue and exits 143 (SIGTERM) or 130 (SIGINT),
/// never with a status that could pass for success; the run it stopped resumes.
#[test]
fn an_interrupted_run_says_how_to_continue_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let out = tmp.path().join(format!("run-{signal}"));
        let child = pretext()
            .args(["pretrain", "--data"])
            .arg(common::cifar_root())
            .arg("--out")
            .arg(&out)
            .args([
                "--width",
                "8",
                "--epochs",
                "500",
                "--train-images",
                "64",
                "--batch-size",
                "16",
                "--quiet",
                "--no-cache",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Once the first checkpoint is there, the run is well under way.
        let t0 = std::time::Instant::now();
        while !out.join("checkpoints").join("latest.json").exists() {
            assert!(
                t0.elapsed().as_secs() < 120,
                "no checkpoint after 2 minutes"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
        let done = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(code), "SIG{signal}: {err}");
        assert!(err.contains(&format!("interrupted (SIG{signal})")), "{err}");
        assert!(err.contains("--resume"), "{err}");
    }
    // The run picks up where it stopped.
    let resumed = pretext()
        .args(["pretrain", "--out"])
        .arg(tmp.path().join("run-TERM"))
        .args(["--resume", "--stop-after", "1", "--quiet", "--no-cache"])
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
}

#[test]
fn run_says_its_plan_and_estimated_time_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let run = |extra: &[&str]| {
        let done = pretext()
            .arg("run")
            .args(extra)
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(tmp.path().join("cache"))
            .args([
                "--eval-train-images",
                "200",
                "--eval-test-images",
                "100",
                "--probe-epochs",
                "2",
                "--quiet",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&done.stderr).into_owned();
        assert!(done.status.success(), "{err}");
        err
    };
    let data = common::cifar_root();
    let err = run(&[
        "--data",
        data.to_str().unwrap(),
        "--width",
        "8",
        "--blocks",
        "2",
        "--train-images",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "32",
    ]);
    let plan = err.find("plan for").expect("a plan");
    assert!(
        plan < err.find("training:").expect("a training summary"),
        "{err}"
    );
    for said in [
        "pretraining: rotation on nin width 8, 2 of 2 epochs of 64 images (4 inputs each): ~",
        "each with linear probes (2 epochs), kNN and k-means on 200 train / 100 test images: ~",
        "estimated total: ~",
        "inputs/s); the data pipeline and other load are not in it",
    ] {
        assert!(err.contains(said), "{said:?} in {err}");
    }
    // Resumed once done: nothing left to pretrain, and the plan says so.
    let err = run(&["--resume"]);
    assert!(
        err.contains("0 of 2 epochs of 64 images (4 inputs each), resumed after epoch 2: ~0 s"),
        "{err}"
    );
}
