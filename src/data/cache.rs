//! Decoded images as one u8 file per data set split, memory-mapped on reuse.
//!
//! Layout: `n × h × w × c` bytes in HWC order from the start of the file, then a JSON
//! header (counts, size, labels, class names, source names, fingerprint of the source), its
//! length as a little-endian u64 and the `PRTXIMG2` magic. The header comes last so a
//! reader decoding millions of files can stream the pixels into the file as they come and
//! write what it learnt about them (skipped files, sources) at the end: memory stays
//! bounded whatever the folder's size. The file is written to a temporary name, flushed
//! and renamed, so a killed run never leaves a half-written cache behind. (`PRTXIMG1`
//! files, header first, are not read: they are decoded again once.)

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::DataError;

const MAGIC: &[u8; 8] = b"PRTXIMG2";

/// Where decoded caches live and how a folder's images are brought to one size.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Folder for cache files; `None` keeps decoded images in memory only.
    pub dir: Option<PathBuf>,
    /// Side length every folder image is brought to (shorter side resized, center crop).
    /// `None`: the size of the first image found; images smaller than it are an error.
    pub image_size: Option<u32>,
    /// Skip (and count) images that cannot be decoded instead of stopping.
    pub skip_bad: bool,
    /// Print progress while decoding.
    pub progress: bool,
    /// How a labelled image tree without `train/` and `test/` folders is split; `None`:
    /// not at all (every split is the whole tree — for pretraining only, since evaluation
    /// refuses a test split that is its train split).
    pub holdout: Option<Holdout>,
}

/// The test split carved out of a labelled image tree that has no `train/` and `test/`
/// folders: `fraction` of every class of two or more images (at least one image, never
/// all), chosen with `seed`; the train split is the rest. Without it the same images would
/// be both, and every protocol would report training accuracy as test accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    pub fraction: f64,
    pub seed: u64,
}

impl Default for Holdout {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            seed: 0,
        }
    }
}

impl std::fmt::Display for Holdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rounded: 0.07 is "7%", not "7.000000000000001%".
        let pct = format!("{:.3}", 100.0 * self.fraction);
        let pct = pct.trim_end_matches('0').trim_end_matches('.');
        write!(
            f,
            "test = {pct}% of each class held out (seed {}), train = the rest",
            self.seed
        )
    }
}

impl CacheOptions {
    /// Refuse options no data set can be opened with (`root` names the data in the error).
    pub fn validate(&self, root: &Path) -> Result<(), DataError> {
        if self.image_size == Some(0) {
            return Err(DataError::format(
                root,
                "--image-size must be at least 1 pixel",
            ));
        }
        if let Some(h) = self.holdout
            && !(h.fraction > 0.0 && h.fraction < 1.0)
        {
            return Err(DataError::format(
                root,
                format!(
                    "--test-fraction must be between 0 and 1 (0 turns the held-out split off), got {}",
                    h.fraction
                ),
            ));
        }
        Ok(())
    }
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            dir: default_cache_dir(),
            image_size: None,
            skip_bad: false,
            progress: true,
            holdout: Some(Holdout::default()),
        }
    }
}

/// `$PRETEXT_CACHE_DIR`, else `$XDG_CACHE_HOME/pretext`, else `~/.cache/pretext`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PRETEXT_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("pretext"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("pretext"))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// One label per image, indexes into `classes`; `None` for unlabeled sets.
    pub labels: Option<Vec<u16>>,
    pub classes: Vec<String>,
    /// Where each image came from (a file path, or `file#record`), for messages and search.
    pub sources: Vec<String>,
    /// Images skipped with `--skip-bad`: why, one line each.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// How many of them decoded fine but were smaller than the set's size (the others
    /// could not be read at all).
    #[serde(default)]
    pub skipped_small: usize,
    pub fingerprint: u64,
    /// Set when this split was carved out of a tree without split folders (see [`Holdout`]).
    #[serde(default)]
    pub holdout: Option<Holdout>,
}

enum Pixels {
    Owned(Vec<u8>),
    /// The first `len` bytes of a cache file.
    Mapped {
        map: Mmap,
        len: usize,
    },
}

impl Pixels {
    fn bytes(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped { map, len } => &map[..*len],
        }
    }
}

/// A decoded split: `n` images of `h × w × c` u8 pixels (HWC), with optional labels.
#[derive(Clone)]
pub struct ImageSet {
    pub header: Arc<Header>,
    pixels: Arc<Pixels>,
    /// A subset's view of the pixels it shares: image `i` is stored image `index[i]`.
    index: Option<Arc<Vec<usize>>>,
    /// Where the cache file is, if it was written.
    pub cache_path: Option<PathBuf>,
}

impl std::fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ImageSet({} × {}×{}×{}, {} classes)",
            self.header.n,
            self.header.h,
            self.header.w,
            self.header.c,
            self.header.classes.len()
        )
    }
}

impl ImageSet {
    pub fn from_parts(header: Header, pixels: Vec<u8>) -> Self {
        assert_eq!(pixels.len(), header.n * header.h * header.w * header.c);
        Self {
            header: Arc::new(header),
            pixels: Arc::new(Pixels::Owned(pixels)),
            index: None,
            cache_path: None,
        }
    }
    /// An in-memory, unlabelled set of `n` HWC images (for tests and synthetic data).
    pub fn unlabelled(h: usize, w: usize, c: usize, pixels: Vec<u8>) -> Self {
        let n = pixels.len() / (h * w * c).max(1);
        let header = Header {
            n,
            h,
            w,
            c,
            labels: None,
            classes: vec![],
            sources: (0..n).map(|i| format!("image-{i}")).collect(),
            skipped: vec![],
            skipped_small: 0,
            fingerprint: 0,
            holdout: None,
        };
        Self::from_parts(header, pixels)
    }
    pub fn len(&self) -> usize {
        self.header.n
    }
    pub fn is_empty(&self) -> bool {
        self.header.n == 0
    }
    pub fn image_bytes(&self) -> usize {
        self.header.h * self.header.w * self.header.c
    }
    /// HWC bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let j = self.index.as_ref().map_or(i, |ix| ix[i]);
        let b = self.image_bytes();
        &self.pixels.bytes()[j * b..(j + 1) * b]
    }
    pub fn label(&self, i: usize) -> Option<u16> {
        self.header.labels.as_ref().map(|l| l[i])
    }
    pub fn num_classes(&self) -> usize {
        self.header.classes.len()
    }
    pub fn is_labelled(&self) -> bool {
        self.header.labels.is_some()
    }
    /// Per-class image counts, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        if let Some(l) = &self.header.labels {
            for &y in l {
                counts[y as usize] += 1;
            }
        }
        counts
    }

    /// The images `indices` (in that order): a view that shares the pixels (of a cache
    /// file, or in memory), so a subset of a large set costs no copy of its pixels.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let index: Vec<usize> = match &self.index {
            Some(ix) => indices.iter().map(|&i| ix[i]).collect(),
            None => indices.to_vec(),
        };
        let h = &self.header;
        let header = Header {
            n: indices.len(),
            labels: h
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            sources: indices.iter().map(|&i| h.sources[i].clone()).collect(),
            skipped: vec![],
            skipped_small: 0,
            ..(**h).clone()
        };
        ImageSet {
            header: Arc::new(header),
            pixels: self.pixels.clone(),
            index: Some(Arc::new(index)),
            cache_path: self.cache_path.clone(),
        }
    }

    /// Per-channel mean and standard deviation in [0, 1] units, from up to `max` images
    /// spread evenly over the set.
    pub fn channel_stats(&self, max: usize) -> (Vec<f32>, Vec<f32>) {
        let c = self.header.c;
        let step = (self.len() / max.max(1)).max(1);
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        let mut count = 0f64;
        for i in (0..self.len()).step_by(step) {
            for px in self.image(i).chunks_exact(c) {
                for (ch, &v) in px.iter().enumerate() {
                    let v = v as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
            count += (self.header.h * self.header.w) as f64;
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, &m)| ((q / count - (m as f64).powi(2)).max(1e-8)).sqrt() as f32)
            .collect();
        (mean, std)
    }
}

impl Header {
    /// What `--skip-bad` left out, by kind ("3 image(s) skipped: 2 unreadable, 1 smaller
    /// than 32×32"), or `None` when nothing was.
    pub fn skipped_summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let small = self.skipped_small.min(self.skipped.len());
        let unreadable = self.skipped.len() - small;
        let mut kinds = vec![];
        if unreadable > 0 {
            kinds.push(format!("{unreadable} unreadable"));
        }
        if small > 0 {
            kinds.push(format!(
                "{small} smaller than {}×{} (--image-size brings every image to one size)",
                self.w, self.h
            ));
        }
        Some(format!(
            "{} image(s) skipped (--skip-bad): {}; first: {}",
            self.skipped.len(),
            kinds.join(", "),
            self.skipped[0]
        ))
    }
}

/// 64-bit FNV-1a: a stable fingerprint for cache keys (std's hasher is not stable across
/// Rust versions, and a cache key must be).
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
pub const FNV_START: u64 = 0xcbf29ce484222325;

/// Extend fingerprint `h` with each file's path, length and modification time, so any
/// change to a source file invalidates its cache.
pub fn fingerprint_files<'a>(
    files: impl IntoIterator<Item = &'a PathBuf>,
    mut h: u64,
) -> Result<u64, DataError> {
    for f in files {
        let md = fs::metadata(f).map_err(|e| DataError::io(f, e))?;
        h = fnv1a(f.to_string_lossy().as_bytes(), h);
        h = fnv1a(&md.len().to_le_bytes(), h);
        if let Ok(t) = md.modified()
            && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
        {
            h = fnv1a(&d.as_nanos().to_le_bytes(), h);
        }
    }
    Ok(h)
}

/// Path of the cache file for a source with this fingerprint.
pub fn cache_file(dir: &Path, kind: &str, split: &str, fingerprint: u64) -> PathBuf {
    dir.join(format!("{kind}-{split}-{fingerprint:016x}.u8"))
}

/// Load a cache file if it exists and matches `fingerprint`.
pub fn load(path: &Path, fingerprint: u64) -> Option<ImageSet> {
    let file = fs::File::open(path).ok()?;
    // SAFETY: the file is only ever replaced by rename, never modified in place, so the
    // mapping stays valid for as long as we hold it.
    let map = unsafe { Mmap::map(&file) }.ok()?;
    let end = map.len().checked_sub(16)?;
    if &map[end + 8..] != MAGIC {
        return None;
    }
    let hlen = usize::try_from(u64::from_le_bytes(map[end..end + 8].try_into().ok()?)).ok()?;
    let start = end.checked_sub(hlen)?;
    let header: Header = serde_json::from_slice(&map[start..end]).ok()?;
    if header.fingerprint != fingerprint {
        return None;
    }
    // Checked: a damaged header must make a cache miss, not an overflow.
    let need = header
        .n
        .checked_mul(header.h)?
        .checked_mul(header.w)?
        .checked_mul(header.c)?;
    if start != need {
        return None;
    }
    let labels_fit = header.labels.as_ref().is_none_or(|l| {
        l.len() == header.n && l.iter().all(|&y| (y as usize) < header.classes.len())
    });
    if !labels_fit || header.sources.len() != header.n {
        return None;
    }
    Some(ImageSet {
        header: Arc::new(header),
        pixels: Arc::new(Pixels::Mapped { map, len: need }),
        index: None,
        cache_path: Some(path.to_path_buf()),
    })
}

/// Write `set` to `path` atomically (temporary file, flushed, renamed).
#[cfg(test)]
fn store(path: &Path, set: &ImageSet) -> Result<(), DataError> {
    let mut sink = PixelSink::to_file(path)?;
    for i in 0..set.len() {
        sink.push(set.image(i))?;
    }
    sink.finish_file(&set.header).map(|_| ())
}

/// Where a reader puts decoded pixels as they come: straight into the cache file (bounded
/// memory whatever the number of images) or, without a cache, into memory.
pub struct PixelSink {
    file: Option<(PathBuf, PathBuf, std::io::BufWriter<fs::File>)>,
    mem: Vec<u8>,
}

impl PixelSink {
    /// A sink for the cache file of this source in `opts`' folder, or in memory without
    /// one (or when the folder cannot be written: a cache costs speed, not correctness).
    pub fn new(opts: &CacheOptions, kind: &str, split: &str, fingerprint: u64) -> Self {
        if let Some(d) = &opts.dir {
            match Self::to_file(&cache_file(d, kind, split, fingerprint)) {
                Ok(s) => return s,
                Err(e) => eprintln!("warning: could not write the image cache: {e}"),
            }
        }
        Self {
            file: None,
            mem: Vec::new(),
        }
    }

    fn to_file(path: &Path) -> Result<Self, DataError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let f = fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        Ok(Self {
            file: Some((path.to_path_buf(), tmp, std::io::BufWriter::new(f))),
            mem: Vec::new(),
        })
    }

    /// Room for `bytes` more in memory (a sink without a file), so a split of known
    /// size is not copied as its vector grows.
    pub fn reserve(&mut self, bytes: usize) {
        if self.file.is_none() {
            self.mem.reserve_exact(bytes);
        }
    }

    /// The next image's HWC bytes.
    pub fn push(&mut self, pixels: &[u8]) -> Result<(), DataError> {
        match &mut self.file {
            Some((_, tmp, w)) => w.write_all(pixels).map_err(|e| DataError::io(tmp, e)),
            None => {
                self.mem.extend_from_slice(pixels);
                Ok(())
            }
        }
    }

    /// The set of the images pushed, described by `header`: the cache file mapped, or
    /// the pixels in memory.
    pub fn finish(mut self, header: Header) -> Result<ImageSet, DataError> {
        if self.file.is_none() {
            return Ok(ImageSet::from_parts(header, std::mem::take(&mut self.mem)));
        }
        let path = self.finish_file(&header)?;
        load(&path, header.fingerprint).ok_or_else(|| {
            DataError::format(&path, "the image cache just written does not read back")
        })
    }

    /// Write the header after the pixels, flush, and rename into place.
    fn finish_file(mut self, header: &Header) -> Result<PathBuf, DataError> {
        let (path, tmp, mut w) = self.file.take().expect("a file sink");
        let write = || -> std::io::Result<()> {
            let json = serde_json::to_vec(header).map_err(std::io::Error::other)?;
            w.write_all(&json)?;
            w.write_all(&(json.len() as u64).to_le_bytes())?;
            w.write_all(MAGIC)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            DataError::io(&path, e)
        })?;
        Ok(path)
    }
}

/// A sink dropped unfinished (its reader failed) leaves no half-written file behind.
impl Drop for PixelSink {
    fn drop(&mut self) {
        if let Some((_, tmp, _)) = &self.file {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// The cached set for this source, if its cache file is there and matches.
fn lookup(opts: &CacheOptions, kind: &str, split: &str, fingerprint: u64) -> Option<ImageSet> {
    let dir = opts.dir.as_ref()?;
    load(&cache_file(dir, kind, split, fingerprint), fingerprint)
}

/// The cached set for this source, or the one `fill` streams into a [`PixelSink`] (the
/// cache file, or memory without a cache folder) and describes with the header it returns.
/// Every reader goes through here, so none holds a whole split in memory to cache it.
pub fn cached(
    opts: &CacheOptions,
    kind: &str,
    split: &str,
    fingerprint: u64,
    fill: impl FnOnce(&mut PixelSink) -> Result<Header, DataError>,
) -> Result<ImageSet, DataError> {
    if let Some(set) = lookup(opts, kind, split, fingerprint) {
        return Ok(set);
    }
    let mut sink = PixelSink::new(opts, kind, split, fingerprint);
    let header = fill(&mut sink)?;
    sink.finish(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        let header = Header {
            n: 2,
            h: 1,
            w: 2,
            c: 3,
            labels: Some(vec![1, 0]),
            classes: vec!["a".into(), "b".into()],
            sources: vec!["x".into(), "y".into()],
            skipped: vec![],
            skipped_small: 0,
            fingerprint: 42,
            holdout: None,
        };
        ImageSet::from_parts(header, (0..12).collect())
    }

    #[test]
    fn cache_round_trip_is_exact_and_checks_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.u8");
        let set = tiny();
        store(&p, &set).unwrap();
        let back = load(&p, 42).expect("cache loads");
        assert_eq!(back.header, set.header);
        for i in 0..set.len() {
            assert_eq!(back.image(i), set.image(i));
        }
        assert_eq!(back.image(1), &[6, 7, 8, 9, 10, 11]);
        assert!(
            load(&p, 43).is_none(),
            "a changed source must not reuse the cache"
        );
    }

    #[test]
    fn subset_and_counts() {
        let s = tiny().subset(&[1]);
        assert_eq!(s.image(0), &[6, 7, 8, 9, 10, 11]);
        assert_eq!(s.header.labels, Some(vec![0]));
        assert_eq!(tiny().class_counts(), vec![1, 1]);
        // A subset of a subset maps through both; both share the pixels (no copy).
        let two = tiny().subset(&[1, 0, 1]);
        let one = two.subset(&[2, 1]);
        assert_eq!(one.image(0), tiny().image(1));
        assert_eq!(one.image(1), tiny().image(0));
        assert_eq!(one.header.sources, ["y", "x"]);
        assert!(Arc::ptr_eq(&one.pixels, &two.pixels));
    }

    #[test]
    fn a_sink_dropped_unfinished_leaves_no_file_and_a_view_stores_its_own_images() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.u8");
        let mut sink = PixelSink::to_file(&p).unwrap();
        sink.push(&[1, 2, 3]).unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A view writes the images it shows, in its order.
        let view = tiny().subset(&[1]);
        store(&p, &view).unwrap();
        let back = load(&p, 42).unwrap();
        assert_eq!(
            (back.len(), back.image(0)),
            (1, &[6u8, 7, 8, 9, 10, 11][..])
        );
    }
}
