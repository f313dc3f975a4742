//! Run folders written before the run format changed (issue 11's constraint: "checkpoints
//! and run directories written before the change still load"): `tests/fixtures/old-runs`
//! holds a jigsaw and an inpainting run made by the binary of commit 98f10eb. Today's code
//! reads their configuration (old setting names, no recorded split), loads each backbone
//! out of its task's network — the exact stored weights — and evaluates them.

mod common;

use std::path::Path;

use burn::tensor::Device;
use pretext::run::{RunConfig, load_backbone};

fn fixture(name: &str, into: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/old-runs")
        .join(name);
    let dst = into.join(name);
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    dst
}

/// The first convolution's weights as stored in the checkpoint under `prefix`.
fn stored_first_conv(run: &Path, prefix: &str) -> Vec<f32> {
    let file = run.join("checkpoints/epoch-0001/model.bpk");
    let name = format!("{prefix}.Nin.blocks.0.convs.0.conv.weight");
    let t = burn_pack::Reader::from_file(&file)
        .unwrap()
        .into_tensors()
        .unwrap()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} in {}", file.display()));
    let (_, _, _, _, bytes) = t.into_parts().unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn runs_written_before_the_format_changed_load_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = common::cache_opts(&tmp.path().join("cache"));
    let dev = Device::flex();
    for (name, prefix) in [("jigsaw", "backbone"), ("inpainting", "generator.backbone")] {
        let run = fixture(name, tmp.path());
        let rc = RunConfig::load(&run).unwrap();
        assert_eq!(rc.task.name(), name);
        assert_eq!(rc.holdout, None, "no split was recorded then");
        if name == "jigsaw" {
            // `greyscale`, as it was spelt then.
            let j: pretext::tasks::JigsawConfig = rc.task.typed().unwrap();
            assert_eq!((j.grayscale, j.permutations), (0.3, 10));
        }
        let (backbone, epoch) = load_backbone(&rc, &run, false, &dev).unwrap();
        assert_eq!(epoch, 1);
        assert_eq!(
            common::first_conv(&backbone),
            stored_first_conv(&run, prefix),
            "{name}"
        );
        let ecfg = common::eval_config(Some(200), Some(100), 1, 512);
        let (report, _) = pretext::eval::evaluate_run(
            &run,
            &common::cifar_root(),
            false,
            &ecfg,
            &cache,
            &dev,
            false,
        )
        .unwrap();
        assert_eq!((report.method.as_str(), report.rows.len()), (name, 4));
        assert_eq!(report.checkpoint_epoch, 1);
    }
}
