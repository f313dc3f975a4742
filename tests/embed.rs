//! Embeddings and search on the real CIFAR-10: a small rotation run embeds the test split,
//! the file reads back with the set's labels and file list, an indexed image finds itself
//! first; data of another image size is refused by embed, eval and fine-tuning.

mod common;

use std::path::Path;

use burn::tensor::Device;

use pretext::commands::embed::{EmbedRequest, embed, read, search};
use pretext::data::Split;
use pretext::eval::evaluate_run;
use pretext::eval::finetune::{FinetuneConfig, finetune_run};
use pretext::run::{open_split, subset_indices};

fn small_run(dir: &Path, cache: &pretext::data::CacheOptions) {
    common::small_run(dir, cache, pretext::models::Arch::Nin, 16);
}

/// Class folders of `side`-px PNGs.
fn other_data(root: &Path, side: u32) {
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..4u32 {
                image::RgbImage::from_fn(side, side, |x, y| {
                    image::Rgb([x as u8, y as u8, i as u8])
                })
                .save(dir.join(format!("{i}.png")))
                .unwrap();
            }
        }
    }
}

#[test]
fn embeddings_read_back_and_an_indexed_image_finds_itself_first() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = common::cache_opts(&tmp.path().join("cache"));
    let run = tmp.path().join("run");
    small_run(&run, &cache);
    let dev = Device::flex();
    let data = common::cifar_root();
    let out = tmp.path().join("emb.safetensors");
    let info = embed(
        &EmbedRequest {
            run: &run,
            data: &data,
            split: Split::Test,
            layer: Some("block2"),
            target_dim: 512,
            images: Some(300),
            out: &out,
        },
        &cache,
        &dev,
        false,
    )
    .unwrap();
    assert_eq!(info.layer, "block2");
    let e = read(&out).unwrap();
    assert_eq!(e.info, info);
    assert_eq!(e.n, 300);
    // block2 of NIN width 16 has 16 channels on an 8×8 map; the grid closest to 512 values
    // is 6×6 (576; 5×5 would give 400).
    assert_eq!((e.dim, info.pool_grid), (576, 6));
    assert_eq!(e.data.len(), 300 * 576);
    assert!(e.data.iter().all(|v| v.is_finite()));
    // Labels and file list are the set's, row for row.
    let test = open_split(&data, Split::Test, &cache).unwrap();
    let idx = subset_indices(test.len(), Some(300), 0);
    let labels = test.header.labels.as_ref().unwrap();
    for (row, &i) in idx.iter().enumerate() {
        assert_eq!(e.labels.as_ref().unwrap()[row], i64::from(labels[i]));
        assert_eq!(e.sources[row], test.header.sources[i]);
    }
    // An image of the index as the query: itself first, at similarity 1.
    let row = 123;
    let query = Path::new(&e.sources[row]);
    let sheet = tmp.path().join("search.png");
    let hits = search(&out, query, 5, &sheet, &cache, &dev).unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].row, row, "{hits:?}");
    assert!((hits[0].similarity - 1.0).abs() < 1e-4, "{hits:?}");
    assert!(hits.windows(2).all(|w| w[0].similarity >= w[1].similarity));
    assert_eq!(
        hits[0].class.as_deref(),
        Some(test.header.classes[labels[idx[row]] as usize].as_str())
    );
    let png = image::open(&sheet).unwrap();
    assert!(png.width() > 6 * 96, "query + 5 neighbors side by side");

    // A safetensors file that is not an embedding file is refused by name.
    let other = tmp.path().join("other.safetensors");
    let bytes = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    std::fs::write(&other, bytes).unwrap();
    let err = format!("{:#}", read(&other).err().unwrap());
    assert!(err.contains("not a pretext embedding file"), "{err}");
}

#[test]
fn data_of_another_image_size_is_refused_saying_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = common::cache_opts(&tmp.path().join("cache"));
    let run = tmp.path().join("run");
    small_run(&run, &cache);
    let dev = Device::flex();
    // Smaller, and larger (which a center crop would otherwise measure silently at
    // another scale). Folder images are always decoded to RGB, so a channel mismatch cannot
    // be built from files; the same check covers it.
    for (name, side, want) in [
        ("small", 24, "images are 24×24 with 3 channel(s)"),
        ("large", 48, "images are 48×48 with 3 channel(s)"),
    ] {
        let data = tmp.path().join(name);
        other_data(&data, side);
        let ecfg = common::eval_config(None, None, 1, 9216);
        let errors = [
            evaluate_run(&run, &data, false, &ecfg, &cache, &dev, false)
                .err()
                .unwrap(),
            finetune_run(
                &run,
                &data,
                &FinetuneConfig {
                    fractions: vec![0.5],
                    seeds: vec![0],
                    epochs: 1,
                    ..Default::default()
                },
                None,
                &cache,
                &dev,
                false,
            )
            .err()
            .unwrap(),
            embed(
                &EmbedRequest {
                    run: &run,
                    data: &data,
                    split: Split::Test,
                    layer: None,
                    target_dim: 512,
                    images: None,
                    out: &tmp.path().join("x.safetensors"),
                },
                &cache,
                &dev,
                false,
            )
            .err()
            .unwrap(),
        ];
        for e in errors {
            let e = format!("{e:#}");
            assert!(e.contains(want), "{name}: {e}");
            assert!(
                e.contains("trained on 32×32 images with 3 input channel(s)"),
                "{name}: {e}"
            );
        }
    }
    assert!(!tmp.path().join("x.safetensors").exists());
}
