//! Embeddings and image search: `pretext embed` writes a data set's features at one layer
//! of a run as safetensors (with the file list beside it), and `pretext search` finds a
//! query image's nearest neighbors among them by cosine similarity and draws them as a
//! contact sheet.
//!
//! The file is self-describing: its metadata names the run, layer, pooling, data and split,
//! so a search computes the query's embedding exactly as the rows were computed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::data::{self, CacheOptions, ImageSet, Split};
use crate::draw::preview::{Cell, save, sheet};
use crate::eval::EvalReport;
use crate::eval::features::{EvalView, extract, l2_normalize};
use crate::models::Backbone;
use crate::run::{RunConfig, check_fits, load_backbone, open_split, subset_indices};
use crate::util::fsutil;

/// The metadata key that marks a pretext embedding file, and its format version.
const FORMAT: &str = "pretext-embeddings/1";

/// What an embedding file says about its rows.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingInfo {
    pub run: PathBuf,
    pub method: String,
    pub layer: String,
    /// Pooled size asked for (the map is average-pooled to the grid closest to it).
    pub target_dim: usize,
    pub pool_grid: usize,
    pub data: PathBuf,
    pub split: Split,
    pub checkpoint_epoch: usize,
    pub classes: Vec<String>,
}

/// An embedding file read back: `n × dim` row-major features, labels when the split had them.
pub struct Embeddings {
    pub info: EmbeddingInfo,
    pub n: usize,
    pub dim: usize,
    pub data: Vec<f32>,
    pub labels: Option<Vec<i64>>,
    /// Where each row's image came from (line i of the file list).
    pub sources: Vec<String>,
}

/// `emb.safetensors` → `emb.files.txt`.
pub fn file_list_path(path: &Path) -> PathBuf {
    path.with_extension("files.txt")
}

/// The layer to embed: the one named, or the run's best linear-probe layer when it has been
/// evaluated, or its last tap.
fn choose_layer(backbone: &Backbone, run: &Path, layer: Option<&str>) -> Result<usize> {
    let taps = backbone.tap_names();
    let name = match layer {
        Some(l) => l.to_string(),
        None => match EvalReport::read(&run.join("eval"))
            .ok()
            .and_then(|r| r.best_layer().map(|b| b.layer.clone()))
        {
            Some(best) => best,
            None => taps.last().cloned().unwrap_or_default(),
        },
    };
    taps.iter().position(|t| *t == name).ok_or_else(|| {
        anyhow::anyhow!(
            "the run's backbone has no layer {name:?}; its layers are {}",
            taps.join(", ")
        )
    })
}

pub struct EmbedRequest<'a> {
    pub run: &'a Path,
    pub data: &'a Path,
    pub split: Split,
    pub layer: Option<&'a str>,
    pub target_dim: usize,
    /// A seeded subset of this many images (`None`: all).
    pub images: Option<usize>,
    pub out: &'a Path,
}

/// Embed a split with a run's checkpoint; returns what was written.
pub fn embed(
    req: &EmbedRequest,
    cache: &CacheOptions,
    dev: &Device,
    progress: bool,
) -> Result<EmbeddingInfo> {
    anyhow::ensure!(req.target_dim >= 1, "--dim must be at least 1");
    anyhow::ensure!(req.images != Some(0), "--images must be at least 1");
    let rc = RunConfig::load(req.run)?;
    let run = std::fs::canonicalize(req.run).unwrap_or_else(|_| req.run.to_path_buf());
    let (backbone, epoch) = load_backbone(&rc, &run, false, dev)?;
    let backbone = backbone.valid();
    let tap = choose_layer(&backbone, &run, req.layer)?;
    let set = open_split(req.data, req.split, cache)?;
    check_fits(&rc, &set, req.data, req.split.name())?;
    let idx = subset_indices(set.len(), req.images, 0);
    let set = Arc::new(set.subset(&idx));
    let mut feats = extract(
        &backbone,
        set.clone(),
        Arc::new(EvalView::for_run(&rc)),
        req.target_dim,
        256,
        dev,
        progress.then_some("embedding"),
        Some(tap),
        None,
    )?;
    let info = EmbeddingInfo {
        run,
        method: rc.method(),
        layer: feats.taps[0].clone(),
        target_dim: req.target_dim,
        pool_grid: feats.grids[0],
        data: std::fs::canonicalize(req.data).unwrap_or_else(|_| req.data.to_path_buf()),
        split: req.split,
        checkpoint_epoch: epoch,
        classes: set.header.classes.clone(),
    };
    let dim = feats.dims[0];
    let rows = feats.take_memory(0).expect("extracted to memory");
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Option<Vec<u8>> = set
        .header
        .labels
        .as_ref()
        .map(|l| l.iter().flat_map(|&v| i64::from(v).to_le_bytes()).collect());
    let mut tensors = vec![(
        "embeddings",
        TensorView::new(Dtype::F32, vec![set.len(), dim], &bytes)?,
    )];
    if let Some(l) = &labels {
        tensors.push(("labels", TensorView::new(Dtype::I64, vec![set.len()], l)?));
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("run".to_string(), info.run.display().to_string()),
        ("method".to_string(), info.method.clone()),
        ("layer".to_string(), info.layer.clone()),
        ("target_dim".to_string(), info.target_dim.to_string()),
        ("pool_grid".to_string(), info.pool_grid.to_string()),
        ("data".to_string(), info.data.display().to_string()),
        ("split".to_string(), info.split.name().to_string()),
        ("checkpoint_epoch".to_string(), epoch.to_string()),
        ("classes".to_string(), serde_json::to_string(&info.classes)?),
    ]);
    let file = safetensors::serialize(tensors, Some(meta))?;
    fsutil::write_bytes(req.out, &file)?;
    let mut list = String::new();
    for s in &set.header.sources {
        list.push_str(s);
        list.push('\n');
    }
    fsutil::write_bytes(&file_list_path(req.out), list.as_bytes())?;
    Ok(info)
}

/// Read an embedding file and its file list.
pub fn read(path: &Path) -> Result<Embeddings> {
    let buf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&buf)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&buf)?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        bail!(
            "{}: not a pretext embedding file (write one with `pretext embed`)",
            path.display()
        );
    }
    let get = |k: &str| -> Result<&String> {
        meta.get(k)
            .ok_or_else(|| anyhow::anyhow!("{}: metadata lacks {k:?}", path.display()))
    };
    let num = |k: &str| -> Result<usize> {
        get(k)?
            .parse()
            .with_context(|| format!("{}: metadata {k:?} is not a number", path.display()))
    };
    let info = EmbeddingInfo {
        run: PathBuf::from(get("run")?),
        method: get("method")?.clone(),
        layer: get("layer")?.clone(),
        target_dim: num("target_dim")?,
        pool_grid: num("pool_grid")?,
        data: PathBuf::from(get("data")?),
        split: Split::from_name(get("split")?)?,
        checkpoint_epoch: num("checkpoint_epoch")?,
        classes: serde_json::from_str(get("classes")?)?,
    };
    let e = st.tensor("embeddings")?;
    let [n, dim] = e.shape()[..] else {
        bail!("{}: embeddings are not a matrix", path.display());
    };
    let data: Vec<f32> = e
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let labels = match st.tensor("labels") {
        Ok(t) => Some(
            t.data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
        Err(_) => None,
    };
    let list = file_list_path(path);
    let sources: Vec<String> = std::fs::read_to_string(&list)
        .with_context(|| format!("reading the file list {}", list.display()))?
        .lines()
        .map(str::to_string)
        .collect();
    if sources.len() != n {
        bail!(
            "{}: {} lines for {n} embeddings; the two files do not belong together",
            list.display(),
            sources.len()
        );
    }
    Ok(Embeddings {
        info,
        n,
        dim,
        data,
        labels,
        sources,
    })
}

/// One neighbor of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub similarity: f32,
    pub source: String,
    pub class: Option<String>,
}

/// The `k` rows most cosine-similar to `query` (best first; ties by row).
pub fn nearest(index: &Embeddings, query: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut q = query.to_vec();
    l2_normalize(&mut q, index.dim);
    let mut scored: Vec<(usize, f32)> = index
        .data
        .chunks_exact(index.dim)
        .enumerate()
        .map(|(i, row)| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            let dot: f32 = row.iter().zip(&q).map(|(a, b)| a * b).sum();
            (i, if norm > 0.0 { dot / norm } else { 0.0 })
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

/// CHW floats in [0, 1] of image `i` of a set (for the contact sheet).
fn chw(set: &ImageSet, i: usize) -> Vec<f32> {
    let h = &set.header;
    let plane = h.h * h.w;
    let mut out = vec![0.0; h.c * plane];
    for (p, px) in set.image(i).chunks_exact(h.c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * plane + p] = v as f32 / 255.0;
        }
    }
    out
}

/// Find the `k` nearest images of `query` (an image file) in the embedding file `index`,
/// and draw query + neighbors with their similarity and class to `sheet_path`.
pub fn search(
    index_path: &Path,
    query: &Path,
    k: usize,
    sheet_path: &Path,
    cache: &CacheOptions,
    dev: &Device,
) -> Result<Vec<Hit>> {
    let index = read(index_path)?;
    let info = &index.info;
    let rc = RunConfig::load(&info.run)?;
    let (backbone, _) = load_backbone(&rc, &info.run, false, dev)?;
    let backbone = backbone.valid();
    let tap = choose_layer(&backbone, &info.run, Some(&info.layer))?;
    // The query is brought to the run's image size the way an image folder is.
    let img = data::folder::decode_file(query, Some(rc.image_size as u32))?;
    let side = rc.image_size;
    let query_set = ImageSet::unlabelled(side, side, 3, img.into_raw());
    check_fits(&rc, &query_set, query, "the query")?;
    let mut q = extract(
        &backbone,
        Arc::new(query_set.clone()),
        Arc::new(EvalView::for_run(&rc)),
        info.target_dim,
        1,
        dev,
        None,
        Some(tap),
        None,
    )?;
    if q.dims[0] != index.dim {
        bail!(
            "{}: the query's embedding has {} values but the file's rows have {}; was the run retrained since?",
            index_path.display(),
            q.dims[0],
            index.dim
        );
    }
    let hits: Vec<Hit> = nearest(&index, &q.take_memory(0).expect("extracted to memory"), k)
        .into_iter()
        .map(|(row, similarity)| Hit {
            row,
            similarity,
            source: index.sources[row].clone(),
            class: index
                .labels
                .as_ref()
                .and_then(|l| info.classes.get(l[row] as usize).cloned()),
        })
        .collect();
    // Neighbors' pixels come from the data set the rows were computed on.
    let set = open_split(&info.data, info.split, cache)?;
    let rows_of: HashMap<&str, usize> = set
        .header
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut cells = vec![Cell {
        caption: "query".into(),
        ..Cell::plain(chw(&query_set, 0), 3, side)
    }];
    for (rank, h) in hits.iter().enumerate() {
        let Some(&i) = rows_of.get(h.source.as_str()) else {
            bail!(
                "{}: {} is no longer in {}; embed the data again",
                index_path.display(),
                h.source,
                info.data.display()
            );
        };
        cells.push(Cell {
            chw: chw(&set, i),
            c: set.header.c,
            h: set.header.h,
            w: set.header.w,
            caption: format!(
                "{} {:.3}\n{}",
                rank + 1,
                h.similarity,
                h.class.as_deref().unwrap_or("")
            ),
        });
    }
    let scale = (96 / side).max(1);
    save(&sheet(&[cells], scale), sheet_path)?;
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(rows: &[[f32; 2]]) -> Embeddings {
        Embeddings {
            info: EmbeddingInfo {
                run: PathBuf::new(),
                method: String::new(),
                layer: String::new(),
                target_dim: 2,
                pool_grid: 1,
                data: PathBuf::new(),
                split: Split::Test,
                checkpoint_epoch: 0,
                classes: vec![],
            },
            n: rows.len(),
            dim: 2,
            data: rows.iter().flatten().copied().collect(),
            labels: None,
            sources: vec![String::new(); rows.len()],
        }
    }

    #[test]
    fn nearest_ranks_by_cosine_similarity_worked_by_hand() {
        // Query (3, 0) points along x: row 0 (2, 0) cos 1; row 2 (1, 1) cos 1/√2;
        // row 1 (0, 5) cos 0; row 3 (-1, 0) cos -1; the zero row scores 0 and loses the
        // tie with row 1 by its index.
        let e = index(&[[2.0, 0.0], [0.0, 5.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]);
        let got = nearest(&e, &[3.0, 0.0], 4);
        let rows: Vec<usize> = got.iter().map(|h| h.0).collect();
        assert_eq!(rows, [0, 2, 1, 4]);
        assert!((got[0].1 - 1.0).abs() < 1e-6);
        assert!((got[1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(got[2].1, 0.0);
        assert_eq!(nearest(&e, &[3.0, 0.0], 10).len(), 5);
    }
}
