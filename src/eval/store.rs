//! The feature store: every tap's pooled features of a split, written once to a file per
//! tap in the run and read back in blocks of rows, so no protocol holds a whole tap in
//! memory (a tap of ImageNet at ~9k dimensions is 47 GB).
//!
//! A store is one folder, `RUN/features/<eval|eval-random-init>-<split>/`: a file per tap
//! (`<tap>.f32` or `<tap>.f16`, row-major, little-endian, nothing else), `images.txt` (the
//! images of the rows, in order) and `manifest.json`, written last, which records what
//! the rows are: a hash of the network's every weight and running statistic, the
//! checkpoint's epoch, the evaluation view (crop, input, normalisation), the pooling
//! target, the value type, the split and a hash of its image list. A later evaluation
//! whose manifest would be the same reads the rows instead of computing them again; any
//! difference (a new checkpoint, another subset, another view) computes them anew and
//! replaces the folder. The folder is written under a temporary name and renamed.
//!
//! Rows are read with positioned reads, not a memory map: a mapped page that was touched
//! counts as the process's own resident memory, and a probe's shuffled mini-batches touch
//! every page of the file each epoch; read, the file stays in the kernel's page cache.

use std::fs;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::data::cache::{FNV_START, fnv1a};
use crate::models::Backbone;

/// How the values are stored: `f16` halves the disk and page cache a store takes, at a
/// rounding of ~3 significant digits per value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FeatureDtype {
    #[default]
    F32,
    F16,
}

impl FeatureDtype {
    fn bytes(self) -> usize {
        match self {
            FeatureDtype::F32 => 4,
            FeatureDtype::F16 => 2,
        }
    }
    fn ext(self) -> &'static str {
        match self {
            FeatureDtype::F32 => "f32",
            FeatureDtype::F16 => "f16",
        }
    }
    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            FeatureDtype::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            FeatureDtype::F16 => out.extend(
                values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes()),
            ),
        }
    }
    fn decode(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            FeatureDtype::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            FeatureDtype::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
        }
    }
}

/// Where a tap's rows are.
enum Rows {
    Memory(Vec<f32>),
    File {
        file: fs::File,
        path: PathBuf,
        dtype: FeatureDtype,
    },
}

/// Features of `n` images at each tap: an `n × dims[t]` row-major matrix per tap, in
/// memory or in a store, read by rows.
pub struct Features {
    pub taps: Vec<String>,
    pub dims: Vec<usize>,
    /// Pooling grid side per tap (the map was pooled to `grid × grid`).
    pub grids: Vec<usize>,
    pub labels: Vec<u16>,
    pub n: usize,
    rows: Vec<Rows>,
}

impl Features {
    /// Features held in memory (`data[t]` is tap `t`'s `n × dims[t]` matrix).
    pub fn in_memory(
        taps: Vec<String>,
        dims: Vec<usize>,
        grids: Vec<usize>,
        data: Vec<Vec<f32>>,
        labels: Vec<u16>,
    ) -> Self {
        let n = labels.len();
        for (d, v) in dims.iter().zip(&data) {
            assert_eq!(v.len(), n * d, "a tap of {n} rows of {d}");
        }
        Self {
            taps,
            dims,
            grids,
            labels,
            n,
            rows: data.into_iter().map(Rows::Memory).collect(),
        }
    }

    /// Tap `t`'s whole matrix, taken out of memory (`None` for a tap in a store).
    pub fn take_memory(&mut self, t: usize) -> Option<Vec<f32>> {
        match &mut self.rows[t] {
            Rows::Memory(v) => Some(std::mem::take(v)),
            Rows::File { .. } => None,
        }
    }

    /// Append rows `rows` of tap `t` to `out`.
    pub fn read(&self, t: usize, rows: Range<usize>, out: &mut Vec<f32>) -> Result<()> {
        let d = self.dims[t];
        assert!(rows.end <= self.n, "rows {rows:?} of {}", self.n);
        match &self.rows[t] {
            Rows::Memory(v) => out.extend_from_slice(&v[rows.start * d..rows.end * d]),
            Rows::File { file, path, dtype } => {
                let row = d * dtype.bytes();
                let mut buf = vec![0u8; rows.len() * row];
                file.read_exact_at(&mut buf, (rows.start * row) as u64)
                    .with_context(|| format!("reading the feature store {}", path.display()))?;
                dtype.decode(&buf, out);
            }
        }
        Ok(())
    }

    /// Append the rows `rows` (in that order) of tap `t` to `out`, each passed through
    /// `map` (a row of `d` values) on the way.
    pub fn gather(
        &self,
        t: usize,
        rows: &[usize],
        out: &mut Vec<f32>,
        mut map: impl FnMut(&mut [f32]),
    ) -> Result<()> {
        let d = self.dims[t];
        out.reserve(rows.len() * d);
        // Runs of consecutive rows are read at once (a block read is one call).
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[j - 1] + 1 {
                j += 1;
            }
            let at = out.len();
            self.read(t, rows[i]..rows[j - 1] + 1, out)?;
            out[at..].chunks_exact_mut(d).for_each(&mut map);
            i = j;
        }
        Ok(())
    }
}

/// One of the blocks of rows `0..n` of at most `block` rows each.
pub fn blocks(n: usize, block: usize) -> impl Iterator<Item = Range<usize>> {
    let block = block.max(1);
    (0..n).step_by(block).map(move |s| s..(s + block).min(n))
}

/// Rows per block so that a block of `d`-wide f32 rows takes about `bytes`.
pub fn rows_for(bytes: usize, d: usize) -> usize {
    (bytes / (d.max(1) * 4)).max(1)
}

/// Where extracted rows go: memory, or the tap files of a store being written.
pub(crate) enum Sink {
    Memory(Vec<Vec<f32>>),
    Files {
        dir: PathBuf,
        dtype: FeatureDtype,
        files: Vec<Option<std::io::BufWriter<fs::File>>>,
        buf: Vec<u8>,
    },
}

impl Sink {
    pub(crate) fn new(taps: usize, to: Option<(&Path, FeatureDtype)>) -> Self {
        match to {
            None => Sink::Memory(vec![Vec::new(); taps]),
            Some((dir, dtype)) => Sink::Files {
                dir: dir.to_path_buf(),
                dtype,
                files: (0..taps).map(|_| None).collect(),
                buf: Vec::new(),
            },
        }
    }

    /// Append `rows` (whole rows) to tap `t` named `name`.
    pub(crate) fn push(&mut self, t: usize, name: &str, rows: &[f32]) -> Result<()> {
        match self {
            Sink::Memory(data) => data[t].extend_from_slice(rows),
            Sink::Files {
                dir,
                dtype,
                files,
                buf,
            } => {
                let path = dir.join(format!("{name}.{}", dtype.ext()));
                if files[t].is_none() {
                    let f = fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    files[t] = Some(std::io::BufWriter::with_capacity(1 << 20, f));
                }
                if *dtype == FeatureDtype::F16
                    && let Some(v) = rows.iter().find(|v| v.is_nan() || v.abs() > 65504.0)
                {
                    anyhow::bail!(
                        "{name}: a feature value of {v} does not fit in f16 (largest 65504); \
                         evaluate with --feature-dtype f32"
                    );
                }
                buf.clear();
                dtype.encode(rows, buf);
                files[t]
                    .as_mut()
                    .expect("opened above")
                    .write_all(buf)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// The features pushed.
    pub(crate) fn finish(
        self,
        taps: Vec<String>,
        dims: Vec<usize>,
        grids: Vec<usize>,
        labels: Vec<u16>,
    ) -> Result<Features> {
        match self {
            Sink::Memory(data) => Ok(Features::in_memory(taps, dims, grids, data, labels)),
            Sink::Files {
                dir, dtype, files, ..
            } => {
                for (f, name) in files.into_iter().zip(&taps) {
                    if let Some(f) = f {
                        f.into_inner()
                            .map_err(|e| e.into_error())
                            .and_then(|f| f.sync_all())
                            .with_context(|| format!("writing the feature store {name}"))?;
                    }
                }
                open_files(&dir, dtype, taps, dims, grids, labels)
            }
        }
    }
}

fn open_files(
    dir: &Path,
    dtype: FeatureDtype,
    taps: Vec<String>,
    dims: Vec<usize>,
    grids: Vec<usize>,
    labels: Vec<u16>,
) -> Result<Features> {
    let n = labels.len();
    let mut rows = Vec::new();
    for (name, &d) in taps.iter().zip(&dims) {
        let path = dir.join(format!("{name}.{}", dtype.ext()));
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        anyhow::ensure!(
            len == (n * d * dtype.bytes()) as u64,
            "{}: {len} bytes, expected {n} rows of {d} values",
            path.display()
        );
        rows.push(Rows::File { file, path, dtype });
    }
    Ok(Features {
        taps,
        dims,
        grids,
        labels,
        n,
        rows,
    })
}

/// The store folder of one evaluation split of a run.
pub fn dir(run: &Path, random_init: bool, split: &str) -> PathBuf {
    let kind = if random_init {
        "eval-random-init"
    } else {
        "eval"
    };
    run.join("features").join(format!("{kind}-{split}"))
}

/// Remove an evaluation's stores (train and test). `run` and `study` evaluate each
/// network once, so they do not keep gigabytes of rows for an evaluation that will not
/// come; `pretext eval` keeps them for the next one.
pub fn discard(run: &Path, random_init: bool) -> Result<()> {
    for split in ["train", "test"] {
        let d = dir(run, random_init, split);
        if d.exists() {
            fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    let parent = run.join("features");
    if fs::read_dir(&parent).is_ok_and(|mut e| e.next().is_none()) {
        let _ = fs::remove_dir(&parent);
    }
    Ok(())
}

/// What a store's rows are: two stores of equal keys hold the same numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreKey {
    pub format: u32,
    /// FNV-1a of the program that computed the rows: another build may pool, crop or
    /// compute differently, and nothing else in the key would say so.
    pub program: String,
    /// FNV-1a of every weight and running statistic of the network, in module order.
    pub network: String,
    /// The network's taps, in order.
    pub taps: Vec<String>,
    pub checkpoint_epoch: usize,
    pub random_init: bool,
    /// The evaluation view (crop, padding, input transform, normalisation) as JSON text:
    /// text compares exactly, where floats parsed back from JSON may not.
    pub view: String,
    pub target_dim: usize,
    pub dtype: FeatureDtype,
    pub split: String,
    pub images: usize,
    /// FNV-1a of the image list (sources in order) and of the decoded data's fingerprint.
    pub image_list: String,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    key: StoreKey,
    taps: Vec<TapInfo>,
}

#[derive(Serialize, Deserialize)]
struct TapInfo {
    name: String,
    dim: usize,
    grid: usize,
}

/// What computes a store's rows: a network (by the hash of its weights) and its taps, from
/// a checkpoint epoch or the random init.
pub struct Producer {
    pub weights: u64,
    pub taps: Vec<String>,
    pub checkpoint_epoch: usize,
    pub random_init: bool,
}

impl Producer {
    pub fn new(network: &Backbone, checkpoint_epoch: usize, random_init: bool) -> Self {
        Self {
            weights: weights_hash(network),
            taps: network.tap_names(),
            checkpoint_epoch,
            random_init,
        }
    }
}

impl StoreKey {
    pub fn new(
        by: &Producer,
        view: String,
        cfg: &super::EvalConfig,
        split: &str,
        set: &ImageSet,
    ) -> Self {
        let mut h = fnv1a(&set.header.fingerprint.to_le_bytes(), FNV_START);
        for s in &set.header.sources {
            h = fnv1a(s.as_bytes(), fnv1a(&[0], h));
        }
        Self {
            format: 1,
            program: program_hash(),
            network: format!("{:016x}", by.weights),
            taps: by.taps.clone(),
            checkpoint_epoch: by.checkpoint_epoch,
            random_init: by.random_init,
            view,
            target_dim: cfg.probe_dim,
            dtype: cfg.feature_dtype,
            split: split.to_string(),
            images: set.len(),
            image_list: format!("{h:016x}"),
        }
    }
}

/// FNV-1a of the running executable's bytes (once per process), or, where it cannot be
/// read, a value no other process gives: then nothing is reused rather than something
/// stale.
fn program_hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| match std::env::current_exe().and_then(fs::read) {
        Ok(bytes) => format!("{:016x}", fnv1a(&bytes, FNV_START)),
        Err(_) => format!(
            "unread-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ),
    })
    .clone()
}

/// FNV-1a over the shape and values of every float tensor of `module` (parameters and
/// running statistics), in visiting order; burn's random parameter ids are left out.
pub fn weights_hash<M: Module>(module: &M) -> u64 {
    struct Hasher(u64);
    impl ModuleVisitor for Hasher {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            for s in t.dims() {
                self.0 = fnv1a(&(s as u64).to_le_bytes(), self.0);
            }
            let v = t.into_data().convert::<f32>();
            self.0 = fnv1a(v.as_bytes(), self.0);
        }
    }
    let mut h = Hasher(FNV_START);
    module.visit(&mut h);
    h.0
}

/// The features of `key` from the store in `dir` if it holds them; else computed by
/// `extract` (given the folder to write the tap files into), then recorded there.
pub fn stored(
    dir: &Path,
    key: &StoreKey,
    set: &ImageSet,
    extract: impl FnOnce(&Path) -> Result<Features>,
) -> Result<Features> {
    let labels: Vec<u16> = (0..set.len()).map(|i| set.label(i).unwrap_or(0)).collect();
    if let Some(f) = open(dir, key, &labels) {
        return Ok(f);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Temporary folders of killed evaluations go first (they hold gigabytes).
    let name = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    for e in fs::read_dir(parent).into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{name}.tmp"))
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        let f = extract(&tmp)?;
        anyhow::ensure!(
            f.labels == labels,
            "the features' labels are not the images'"
        );
        let mut list = String::new();
        for s in &set.header.sources {
            list.push_str(s);
            list.push('\n');
        }
        crate::util::fsutil::write_bytes(&tmp.join("images.txt"), list.as_bytes())?;
        let manifest = Manifest {
            key: key.clone(),
            taps: (0..f.taps.len())
                .map(|t| TapInfo {
                    name: f.taps[t].clone(),
                    dim: f.dims[t],
                    grid: f.grids[t],
                })
                .collect(),
        };
        crate::util::fsutil::write_bytes(
            &tmp.join("manifest.json"),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
        }
        fs::rename(&tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    open(dir, key, &labels).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the feature store just written does not read back",
            dir.display()
        )
    })
}

/// The store in `dir`, if its manifest is `key`'s and its files are whole.
fn open(dir: &Path, key: &StoreKey, labels: &[u16]) -> Option<Features> {
    let text = fs::read(dir.join("manifest.json")).ok()?;
    let m: Manifest = serde_json::from_slice(&text).ok()?;
    let names: Vec<String> = m.taps.iter().map(|t| t.name.clone()).collect();
    if m.key != *key || key.images != labels.len() || names != key.taps {
        return None;
    }
    let f = open_files(
        dir,
        key.dtype,
        names,
        m.taps.iter().map(|t| t.dim).collect(),
        m.taps.iter().map(|t| t.grid).collect(),
        labels.to_vec(),
    )
    .ok()?;
    // Another evaluation may have replaced the store between the manifest and the files:
    // the files held now are the manifest's only if it is still the one read (a file
    // opened stays readable when its folder is replaced).
    (fs::read(dir.join("manifest.json")).ok()? == text).then_some(f)
}

/// The rows of one tap as kNN and k-means read them: in blocks, scaled to unit L2 norm on
/// the way when `normalize` (zero rows stay zero).
#[derive(Clone, Copy)]
pub struct TapRows<'a> {
    pub features: &'a Features,
    pub tap: usize,
    pub normalize: bool,
}

impl TapRows<'_> {
    pub fn n(&self) -> usize {
        self.features.n
    }
    pub fn d(&self) -> usize {
        self.features.dims[self.tap]
    }
    /// Rows `rows`, as a new `rows.len() × d` matrix.
    pub fn read(&self, rows: Range<usize>) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(rows.len() * self.d());
        self.features.read(self.tap, rows, &mut out)?;
        if self.normalize {
            super::features::l2_normalize(&mut out, self.d());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_to(dir: &Path, dtype: FeatureDtype, rows: &[[f32; 3]]) -> Features {
        let mut sink = Sink::new(1, Some((dir, dtype)));
        for pair in rows.chunks(2) {
            let flat: Vec<f32> = pair.iter().flatten().copied().collect();
            sink.push(0, "block1", &flat).unwrap();
        }
        let labels = (0..rows.len() as u16).collect();
        sink.finish(vec!["block1".into()], vec![3], vec![1], labels)
            .unwrap()
    }

    const ROWS: [[f32; 3]; 5] = [
        [1.0, -2.0, 3.5],
        [0.1, 0.2, 0.3],
        [1e-3, 1e3, -7.25],
        [0.0, 0.0, 0.0],
        [9.0, 8.0, 7.0],
    ];

    #[test]
    fn rows_written_to_a_store_read_back_by_block_and_gathered() {
        let dir = tempfile::tempdir().unwrap();
        let f = sink_to(dir.path(), FeatureDtype::F32, &ROWS);
        assert!(dir.path().join("block1.f32").is_file());
        let mut all = vec![];
        f.read(0, 0..5, &mut all).unwrap();
        assert_eq!(all, ROWS.concat());
        // Gathered in a shuffled order (with a run of neighbours read at once), mapped.
        let mut g = vec![];
        f.gather(0, &[4, 1, 2, 0], &mut g, |r| r[0] = -r[0])
            .unwrap();
        let want: Vec<f32> = [4, 1, 2, 0]
            .iter()
            .flat_map(|&i| {
                let mut r = ROWS[i];
                r[0] = -r[0];
                r
            })
            .collect();
        assert_eq!(g, want);
        // f16 keeps ~3 significant digits.
        let dir16 = tempfile::tempdir().unwrap();
        let h = sink_to(dir16.path(), FeatureDtype::F16, &ROWS);
        assert_eq!(
            fs::metadata(dir16.path().join("block1.f16")).unwrap().len(),
            30
        );
        let mut back = vec![];
        h.read(0, 0..5, &mut back).unwrap();
        for (a, b) in back.iter().zip(ROWS.concat()) {
            assert!((a - b).abs() <= 1e-3 * b.abs().max(1e-3), "{a} vs {b}");
        }
    }

    /// A value f16 cannot hold is an error naming the way out, not an infinity that turns
    /// into NaN in the standardiser.
    #[test]
    fn an_f16_store_refuses_values_beyond_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = Sink::new(1, Some((dir.path(), FeatureDtype::F16)));
        sink.push(0, "block1", &[1.0, 65504.0, -65504.0]).unwrap();
        let e = sink
            .push(0, "block1", &[1.0, 7e4, 0.0])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not fit in f16") && e.contains("--feature-dtype f32"),
            "{e}"
        );
        let e = sink.push(0, "block1", &[f32::NAN]).unwrap_err().to_string();
        assert!(e.contains("does not fit in f16"), "{e}");
    }

    fn key(network: &str) -> StoreKey {
        StoreKey {
            format: 1,
            program: "p".into(),
            network: network.into(),
            taps: vec!["block1".into()],
            checkpoint_epoch: 3,
            random_init: false,
            // A float that JSON text does not give back bit for bit once parsed (the
            // first store compared parsed values and never read back).
            view: serde_json::to_string(&(28, [0.4914f32, 0.1f32], 1.0f64 / 3.0)).unwrap(),
            target_dim: 3,
            dtype: FeatureDtype::F32,
            split: "test".into(),
            images: 5,
            image_list: "x".into(),
        }
    }

    #[test]
    fn a_store_is_reused_for_its_key_and_replaced_for_another() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("features").join("eval-test");
        let set = ImageSet::from_parts(
            crate::data::cache::Header {
                n: 5,
                h: 1,
                w: 1,
                c: 1,
                labels: Some(vec![0, 1, 2, 3, 4]),
                classes: (0..5).map(|i| i.to_string()).collect(),
                sources: (0..5).map(|i| format!("img{i}")).collect(),
                skipped: vec![],
                skipped_small: 0,
                fingerprint: 0,
                holdout: None,
            },
            vec![0; 5],
        );
        let calls = std::cell::Cell::new(0);
        let extract = |rows: [[f32; 3]; 5]| {
            let calls = &calls;
            move |to: &Path| {
                calls.set(calls.get() + 1);
                Ok(sink_to(to, FeatureDtype::F32, &rows))
            }
        };
        let read = |f: &Features| {
            let mut v = vec![];
            f.read(0, 0..5, &mut v).unwrap();
            v
        };
        let a = stored(&dir, &key("a"), &set, extract(ROWS)).unwrap();
        assert_eq!((calls.get(), read(&a)), (1, ROWS.concat()));
        assert_eq!(
            fs::read_to_string(dir.join("images.txt"))
                .unwrap()
                .lines()
                .count(),
            5
        );
        // The same key: read from the store, not computed.
        let again = stored(&dir, &key("a"), &set, extract([[0.0; 3]; 5])).unwrap();
        assert_eq!((calls.get(), read(&again)), (1, ROWS.concat()));
        // Other weights: computed again, and the folder holds the new rows only.
        let b = stored(&dir, &key("b"), &set, extract([[1.0; 3]; 5])).unwrap();
        assert_eq!((calls.get(), read(&b)), (2, vec![1.0; 15]));
        assert_eq!(fs::read_dir(dir.parent().unwrap()).unwrap().count(), 1);
        // A cut tap file is not trusted.
        fs::write(dir.join("block1.f32"), [0u8; 7]).unwrap();
        let c = stored(&dir, &key("b"), &set, extract([[2.0; 3]; 5])).unwrap();
        assert_eq!((calls.get(), read(&c)), (3, vec![2.0; 15]));
        // A failed extraction leaves the store as it was, and no temporary folder.
        let e = stored(&dir, &key("c"), &set, |_: &Path| anyhow::bail!("disk full"));
        assert!(e.is_err());
        let d = stored(&dir, &key("b"), &set, extract([[3.0; 3]; 5])).unwrap();
        assert_eq!((calls.get(), read(&d)), (3, vec![2.0; 15]));
        assert_eq!(fs::read_dir(dir.parent().unwrap()).unwrap().count(), 1);
    }

    /// The network's hash sees its weights and its running statistics, not burn's random
    /// parameter ids.
    #[test]
    fn the_weights_hash_follows_the_values() {
        let dev = burn::tensor::Device::flex();
        dev.seed(1);
        let mut cfg = crate::models::BackboneConfig::new(crate::models::Arch::Nin, 8);
        cfg.width = 8;
        cfg.blocks = 2;
        // (Parameters are initialised lazily, when first read: each is hashed at once.)
        let a = weights_hash(&cfg.init(&dev));
        dev.seed(1);
        let same = weights_hash(&cfg.init(&dev));
        dev.seed(2);
        let other = weights_hash(&cfg.init(&dev));
        assert_eq!(a, same);
        assert_ne!(a, other);
    }
}
