//! The command line on the real CIFAR-10 tree.

mod common;

#[test]
fn data_inspect_reports_splits_counts_and_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .arg("data")
        .arg("inspect")
        .arg(common::cifar_root())
        .arg("--cache-dir")
        .arg(tmp.path())
        .arg("--quiet")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
