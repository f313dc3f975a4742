//! Kill and resume (issue 16, item 16): a pretraining killed with SIGKILL in the middle of
//! an epoch, inside a checkpoint write, between a checkpoint and its `latest.json`, and
//! between a checkpoint and its metrics line — each time resumed with `--resume` — ends with
//! the very bytes of an uninterrupted run of the same seed: the same `model.bpk` and
//! `optim.bpk`, and the same metrics log apart from its timings.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn pretext(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pretext"));
    c.current_dir(dir)
        .args(["--quiet", "--threads", "2", "--cache-dir"])
        .arg(dir.join("cache"));
    c
}

fn start_args(out: &str) -> Vec<String> {
    let data = common::cifar_root().display().to_string();
    [
        "pretrain",
        "--data",
        &data,
        "--out",
        out,
        "--width",
        "16",
        "--train-images",
        "512",
        "--batch-size",
        "64",
        "--epochs",
        "3",
        "--seed",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Run to completion; panics with stderr on failure.
fn finish(mut cmd: Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start `cmd` paused at `point`, wait until it is there, SIGKILL it.
fn kill_at(mut cmd: Command, point: &str, dir: &Path) {
    let marker = dir.join("paused");
    let _ = std::fs::remove_file(&marker);
    let mut child: Child = cmd
        .env("PRETEXT_PAUSE_AT", point)
        .env("PRETEXT_PAUSE_MARKER", &marker)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !marker.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before reaching {point}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The metrics log without its wall-clock fields.
fn log_without_timings(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("images_per_second");
            v
        })
        .collect()
}

#[test]
fn a_run_killed_anywhere_resumes_to_the_bytes_of_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    finish({
        let mut c = pretext(dir);
        c.args(start_args("whole"));
        c
    });
    let resume = || {
        let mut c = pretext(dir);
        c.args(["pretrain", "--resume", "--out", "killed"]);
        c
    };
    // 8 steps an epoch; kills in epoch 1 (before any checkpoint), in epoch 2's checkpoint
    // write, after epoch 2's rename (before its latest.json and metrics line), mid-epoch 3,
    // and after epoch 3's checkpoint, before its metrics line.
    kill_at(
        {
            let mut c = pretext(dir);
            c.args(start_args("killed"));
            c
        },
        "step:5",
        dir,
    );
    for point in [
        "checkpoint:2:model",
        "checkpoint:2:renamed",
        "step:20",
        "epoch-log:3",
    ] {
        kill_at(resume(), point, dir);
    }
    // A checkpoint write killed half way leaves its temporary folder; the resume removes it.
    finish(resume());
    let (whole, killed) = (dir.join("whole"), dir.join("killed"));
    for f in ["model.bpk", "optim.bpk"] {
        let (a, b) = (
            std::fs::read(whole.join("checkpoints/epoch-0003").join(f)).unwrap(),
            std::fs::read(killed.join("checkpoints/epoch-0003").join(f)).unwrap(),
        );
        assert!(a == b, "{f} differs after kill and resume");
    }
    assert_eq!(log_without_timings(&whole), log_without_timings(&killed));
    let epochs: Vec<u64> = log_without_timings(&killed)
        .iter()
        .filter(|v| v["kind"] == "epoch")
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2, 3], "each epoch logged once");
    let leftovers: Vec<String> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
