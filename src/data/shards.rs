//! WebDataset-style tar shards (`train-000000.tar`, `train-000001.tar`, …): each sample is
//! a run of tar members sharing a key, `00000012.jpg` and its label `00000012.cls` (a
//! class index as decimal text). This is the format PyTorch users shard large image sets
//! into (the `webdataset` library), so a data set of millions of images needs neither
//! millions of files nor a decode pass before training. pretext reads shards two ways:
//! - **streamed**, to pretrain: each epoch reads the shards in a seeded order, each from
//!   front to back. Images are decoded in parallel as they come. A seeded shuffle buffer
//!   mixes samples across shards, so memory is bounded by the buffer, not the data set.
//!   The same seed gives the same order, so a resumed run sees the data an uninterrupted
//!   one would.
//! - **decoded once** into the image cache by [`open`], for what needs random access
//!   (evaluation, embedding, inspection), like every other format.
//!
//! `--data` names shards as a folder holding `train-*.tar`, `test-*.tar` and/or
//! `unlabeled-*.tar` (what `pretext data shard` writes, with `classes.txt` beside them), or
//! as one split's pattern with brace ranges: `shards/train-{000000..000099}.tar`.
//! `pretext data shard` ([`write`]) shuffles the samples before cutting them into shards,
//! as WebDataset recommends: a shuffle buffer only mixes what lies near in the stream.

use std::fs;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::cache::{self, FNV_START, Header, PixelSink, fnv1a};
use super::folder::decode_bytes;
use super::loader::{
    Batch, EpochBatches, LoaderConfig, SampleMaker, batches_per_epoch, build_batch, mix_seed,
};
use super::{CacheOptions, DataError, ImageSet, Split};

/// Member extensions read as the sample's image (the formats pretext decodes).
const IMAGE_EXTS: [&str; 3] = ["jpg", "jpeg", "png"];
/// Member extensions read as the sample's class index.
const LABEL_EXTS: [&str; 2] = ["cls", "class"];
/// Class names, one per line in class-index order, beside the shards.
pub const CLASSES_FILE: &str = "classes.txt";
/// Decoded pixels a stream's shuffle buffer may hold.
const BUFFER_BYTES: usize = 256 << 20;
/// Most images a stream's shuffle buffer holds (WebDataset's examples use 1,000–10,000).
const BUFFER_IMAGES: usize = 10_000;
/// Images a stream opens with to size the run and its normalization (see [`Stream::open`]).
pub const SAMPLE_IMAGES: usize = 4096;

/// Whether `data` names shards by pattern (`dir/train-{000000..000099}.tar`) or one `.tar`.
pub fn is_pattern(data: &Path) -> bool {
    let s = data.to_string_lossy();
    s.contains('{') || s.ends_with(".tar")
}

/// Whether `dir` holds shards named by split (`train-000000.tar`, …).
pub fn is_shard_folder(dir: &Path) -> bool {
    [Split::Train, Split::Test, Split::Unlabeled]
        .into_iter()
        .any(|s| in_folder(dir, s).is_ok_and(|f| !f.is_empty()))
}

/// The image tree the shards at `data` (a folder or a pattern) were written from by
/// `pretext data shard`, and the held-out split it used (from `source.json`), so an
/// evaluation on that tree can tell which of its images the shards hold.
pub fn source_tree(data: &Path) -> Option<(PathBuf, Option<super::Holdout>)> {
    let text = fs::read_to_string(folder_of(data).join(SOURCE_FILE)).ok()?;
    let s: Source = serde_json::from_str(&text).ok()?;
    Some((PathBuf::from(s.tree), s.holdout))
}

/// Where shards written from an image tree came from (`source.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Source {
    /// The tree, canonical.
    tree: String,
    holdout: Option<super::Holdout>,
}

/// The file naming the image tree shards came from.
const SOURCE_FILE: &str = "source.json";

/// The splits a shard folder (or pattern: one split, train) holds.
pub fn splits(data: &Path) -> Vec<Split> {
    if is_pattern(data) {
        return vec![Split::Train];
    }
    [Split::Train, Split::Test, Split::Unlabeled]
        .into_iter()
        .filter(|s| in_folder(data, *s).is_ok_and(|f| !f.is_empty()))
        .collect()
}

fn in_folder(dir: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    let prefix = format!("{}-", split.name());
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tar"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Expand brace groups as WebDataset and the shell do: `{000..012}` is a numeric range
/// (zero-padded to the first bound's width), `{a,b}` a list; several groups multiply.
pub fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| format!("an unclosed '{{' in {pattern:?}"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    if body.contains('{') {
        return Err(format!("nested braces in {pattern:?}"));
    }
    let items: Vec<String> = match body.split_once("..") {
        Some((a, b)) => {
            let bound = |t: &str| {
                t.parse::<u64>().map_err(|_| {
                    format!("{{{body}}} in {pattern:?}: expected a range of numbers like {{000000..000099}}")
                })
            };
            let (lo, hi) = (bound(a)?, bound(b)?);
            if lo > hi || hi - lo >= 10_000_000 {
                return Err(format!(
                    "{{{body}}} in {pattern:?}: the range must go up, and hold fewer than 10 million shards"
                ));
            }
            let width = a.len();
            (lo..=hi).map(|i| format!("{i:0width$}")).collect()
        }
        None => body.split(',').map(str::to_string).collect(),
    };
    let rest = expand(tail)?;
    if items.len().saturating_mul(rest.len()) > 10_000_000 {
        return Err(format!("{pattern:?} names more than 10 million shards"));
    }
    Ok(items
        .iter()
        .flat_map(|i| rest.iter().map(move |r| format!("{head}{i}{r}")))
        .collect())
}

/// The shard files of `split` under `data` (a folder of shards, or a pattern).
pub fn files(data: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    if is_pattern(data) {
        if split == Split::Test {
            return Err(DataError::format(
                data,
                "a shard pattern names one split, and this needs a test split too: give (as \
                 --data) the folder `pretext data shard` wrote, with train-*.tar and \
                 test-*.tar side by side",
            ));
        }
        let names = expand(&data.to_string_lossy()).map_err(|e| DataError::format(data, e))?;
        let files: Vec<PathBuf> = names.into_iter().map(PathBuf::from).collect();
        if let Some(gone) = files.iter().find(|f| !f.is_file()) {
            return Err(DataError::format(
                gone,
                format!(
                    "no such shard (the pattern {} names {} shard files)",
                    data.display(),
                    files.len()
                ),
            ));
        }
        return Ok(files);
    }
    let files = in_folder(data, split)?;
    if files.is_empty() {
        let have: Vec<&str> = splits(data).iter().map(|s| s.name()).collect();
        return Err(DataError::format(
            data,
            format!(
                "no {}-*.tar shards here (this folder has shards of: {})",
                split.name(),
                have.join(", ")
            ),
        ));
    }
    Ok(files)
}

/// The folder holding the shards at `data` (a folder of shards, or a pattern's folder),
/// where `classes.txt` and `source.json` sit beside them.
fn folder_of(data: &Path) -> &Path {
    if is_pattern(data) {
        data.parent().unwrap_or(Path::new("."))
    } else {
        data
    }
}

/// Where the class names of the shards at `data` are kept.
fn classes_path(data: &Path) -> PathBuf {
    folder_of(data).join(CLASSES_FILE)
}

/// The class names beside the shards, if there are any.
fn read_classes(data: &Path) -> Result<Option<Vec<String>>, DataError> {
    let path = classes_path(data);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.lines().map(|l| l.trim().to_string()).collect())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(&path, e)),
    }
}

/// One sample of a shard as stored: its key, its image member and its class index.
pub struct Raw {
    pub key: String,
    /// `shard.tar#member`, for messages and the set's sources.
    pub source: String,
    pub image: Vec<u8>,
    pub label: Option<u32>,
}

/// WebDataset's split of a member name: the key is the path up to the first dot of the
/// file name, the extension all after it (`a/b.seg.png` → `a/b`, `seg.png`).
fn key_ext(name: &str) -> (&str, &str) {
    let base = name.rfind('/').map_or(0, |i| i + 1);
    match name[base..].find('.') {
        Some(d) => (&name[..base + d], &name[base + d + 1..]),
        None => (name, ""),
    }
}

fn member(shard: &Path, name: &str) -> PathBuf {
    PathBuf::from(format!("{}#{name}", shard.display()))
}

/// Read the samples of one shard front to back, handing each to `f` (which returns false
/// to stop). Members of other kinds (captions, metadata) are passed over.
pub fn read(
    shard: &Path,
    mut f: impl FnMut(Raw) -> Result<bool, DataError>,
) -> Result<(), DataError> {
    let file = fs::File::open(shard).map_err(|e| DataError::io(shard, e))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let bad =
        |e: std::io::Error| DataError::format(shard, format!("not a readable tar shard ({e})"));
    // The sample being gathered: key, image member (name, bytes), label.
    type Partial = (String, Option<(String, Vec<u8>)>, Option<u32>);
    let finish = |(key, image, label): Partial| -> Result<Raw, DataError> {
        let Some((name, image)) = image else {
            return Err(DataError::format(
                &member(shard, &key),
                "a sample without an image member (expected KEY.jpg, KEY.jpeg or KEY.png)",
            ));
        };
        Ok(Raw {
            key,
            source: member(shard, &name).to_string_lossy().into_owned(),
            image,
            label,
        })
    };
    let mut current: Option<Partial> = None;
    let mut entries = archive.entries().map_err(bad)?;
    for entry in &mut entries {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let (key, ext) = key_ext(&name);
        let ext = ext.to_ascii_lowercase();
        let is_image = IMAGE_EXTS.contains(&ext.as_str());
        let is_label = LABEL_EXTS.contains(&ext.as_str());
        if !is_image && !is_label {
            continue;
        }
        if current.as_ref().is_some_and(|c| c.0 != key) {
            let done = finish(current.take().expect("checked just above"))?;
            if !f(done)? {
                return Ok(());
            }
        }
        let partial = current.get_or_insert_with(|| (key.to_string(), None, None));
        // A cut file ends a member early without an error from the reader: the length
        // read is checked against the member's header.
        let size = entry.size();
        let mut bytes = Vec::with_capacity(size.min(1 << 30) as usize);
        entry.read_to_end(&mut bytes).map_err(bad)?;
        if bytes.len() as u64 != size {
            return Err(DataError::format(
                &member(shard, &name),
                format!(
                    "cut short: {} of its {size} bytes (a truncated shard?)",
                    bytes.len()
                ),
            ));
        }
        if is_image {
            if partial.1.is_some() {
                return Err(DataError::format(
                    &member(shard, &name),
                    format!("a second image for the sample {key:?} (expected one)"),
                ));
            }
            partial.1 = Some((name, bytes));
        } else {
            let text = String::from_utf8_lossy(&bytes);
            let label = text.trim().parse::<u32>().map_err(|_| {
                DataError::format(
                    &member(shard, &name),
                    format!(
                        "expected a class index (a whole number), found {:?}",
                        text.trim()
                    ),
                )
            })?;
            partial.2 = Some(label);
        }
    }
    let end = archive.into_inner().stream_position().map_err(bad)?;
    check_end(shard, end)?;
    if let Some(last) = current {
        f(finish(last)?)?;
    }
    Ok(())
}

/// Refuse a shard whose reading stopped at `end` without tar's end-of-archive block: a
/// file cut between two members reads as a whole, shorter archive, and its last samples
/// would be lost without a word. (The reader consumes the first zero block of the end
/// marker; a cut file ends where its data does, or past its end when members were
/// skipped by seeking.)
fn check_end(shard: &Path, end: u64) -> Result<(), DataError> {
    let len = fs::metadata(shard)
        .map_err(|e| DataError::io(shard, e))?
        .len();
    let mut block = [0u8; 512];
    let whole = end >= 512 && end <= len && {
        let mut f = fs::File::open(shard).map_err(|e| DataError::io(shard, e))?;
        f.seek(std::io::SeekFrom::Start(end - 512))
            .and_then(|_| f.read_exact(&mut block))
            .is_ok()
            && block.iter().all(|&b| b == 0)
    };
    if whole {
        Ok(())
    } else {
        Err(DataError::format(
            shard,
            format!(
                "cut short: the tar archive ends without its end-of-archive block after {} of \
                 {len} bytes (a truncated shard?)",
                end.min(len)
            ),
        ))
    }
}

/// Samples in one shard (its image members), read from the tar headers alone.
pub fn count(shard: &Path) -> Result<usize, DataError> {
    let file = fs::File::open(shard).map_err(|e| DataError::io(shard, e))?;
    let mut archive = tar::Archive::new(file);
    let bad =
        |e: std::io::Error| DataError::format(shard, format!("not a readable tar shard ({e})"));
    let mut n = 0;
    let mut entries = archive.entries_with_seek().map_err(bad)?;
    for entry in &mut entries {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let ext = key_ext(&name).1.to_ascii_lowercase();
        n += (entry.header().entry_type().is_file() && IMAGE_EXTS.contains(&ext.as_str())) as usize;
    }
    let end = archive.into_inner().stream_position().map_err(bad)?;
    check_end(shard, end)?;
    Ok(n)
}

/// One decoded sample: HWC pixels, class, where it came from.
struct Item {
    pixels: Vec<u8>,
    label: Option<u16>,
    source: String,
}

/// What a set of shards holds, as far as decoding needs: image side, labels, classes.
#[derive(Clone, Debug)]
struct Layout {
    size: u32,
    labelled: bool,
    /// Class names (from `classes.txt`); `None`: numbered from the labels found.
    classes: Option<Vec<String>>,
}

impl Layout {
    /// Check `raw` against the layout and decode it.
    fn decode(&self, raw: &Raw) -> Result<Item, DataError> {
        let at = || PathBuf::from(&raw.source);
        let label = match (raw.label, self.labelled) {
            (Some(y), true) => {
                let known = self.classes.as_ref().map_or(1 << 16, |c| c.len());
                if y as usize >= known {
                    return Err(DataError::format(
                        &at(),
                        format!(
                            "class index {y} is past the {known} classes (name them all, one a line, in {CLASSES_FILE} beside the shards)"
                        ),
                    ));
                }
                Some(y as u16)
            }
            (None, false) => None,
            (Some(_), false) => {
                return Err(DataError::format(
                    &at(),
                    "a .cls label, while the first sample has none (label every sample, or none)",
                ));
            }
            (None, true) => {
                return Err(DataError::format(
                    &at(),
                    format!(
                        "no .cls label, while the other samples have one (expected {}.cls)",
                        raw.key
                    ),
                ));
            }
        };
        let img = decode_bytes(&raw.image, &at(), Some(self.size))?;
        Ok(Item {
            pixels: img.into_raw(),
            label,
            source: raw.source.clone(),
        })
    }
}

/// The first readable sample of `files` (it fixes the image size when none is chosen,
/// and whether the set is labelled).
fn first_sample(files: &[PathBuf], skip_bad: bool) -> Result<(Raw, u32), DataError> {
    let mut found = None;
    let mut why = None;
    for f in files {
        read(f, |raw| {
            match decode_bytes(&raw.image, Path::new(&raw.source), None) {
                Ok(img) => {
                    let side = img.width().min(img.height());
                    found = Some((raw, side));
                    Ok(false)
                }
                Err(e) if skip_bad => {
                    why.get_or_insert(e);
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        })?;
        if let Some(found) = found {
            return Ok(found);
        }
    }
    Err(DataError::format(
        files.first().map_or(Path::new("."), |f| f.as_path()),
        match why {
            Some(e) => format!("no sample can be decoded (--skip-bad); first: {e}"),
            None => "no samples (expected KEY.jpg/.png members, with KEY.cls labels)".into(),
        },
    ))
}

/// The layout of the shards at `data`: size from the options or the first sample,
/// labelled if that sample is, classes from `classes.txt` if there is one.
fn layout(data: &Path, files: &[PathBuf], opts: &CacheOptions) -> Result<Layout, DataError> {
    let (first, side) = first_sample(files, opts.skip_bad)?;
    Ok(Layout {
        size: opts.image_size.unwrap_or(side),
        labelled: first.label.is_some(),
        classes: read_classes(data)?,
    })
}

/// Numbered class names `0..=max` for shards without `classes.txt`.
fn numbered(max: Option<u16>) -> Vec<String> {
    (0..max.map_or(0, |m| m as usize + 1))
        .map(|i| i.to_string())
        .collect()
}

/// Decode the samples of `files` in order into `sink` (at most `limit`), in chunks
/// decoded in parallel, and describe them.
fn decode_into(
    files: &[PathBuf],
    layout: &Layout,
    opts: &CacheOptions,
    fingerprint: u64,
    limit: usize,
    sink: &mut PixelSink,
) -> Result<Header, DataError> {
    let s = layout.size as usize;
    let chunk = ((64 << 20) / (s * s * 3).max(1)).clamp(64, 8192);
    let mut labels = layout.labelled.then(Vec::new);
    let mut sources = Vec::new();
    let mut skipped = Vec::new();
    let mut skipped_small = 0;
    let mut raws = Vec::with_capacity(chunk);
    let bar = crate::util::progress::bar(
        0,
        &format!("decoding {} shard(s)", files.len()),
        opts.progress && limit == usize::MAX,
    );
    let mut flush = |raws: &mut Vec<Raw>| -> Result<(), DataError> {
        let decoded: Vec<Result<Item, DataError>> =
            raws.par_iter().map(|r| layout.decode(r)).collect();
        for item in decoded {
            match item {
                Ok(item) => {
                    sink.push(&item.pixels)?;
                    if let (Some(out), Some(y)) = (labels.as_mut(), item.label) {
                        out.push(y);
                    }
                    sources.push(item.source);
                }
                Err(e) if opts.skip_bad => {
                    skipped_small += matches!(e, DataError::TooSmall { .. }) as usize;
                    skipped.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        bar.inc(raws.len() as u64);
        raws.clear();
        Ok(())
    };
    let mut taken = 0;
    for (i, f) in files.iter().enumerate() {
        read(f, |raw| {
            raws.push(raw);
            taken += 1;
            if raws.len() == chunk {
                flush(&mut raws)?;
            }
            Ok(taken < limit)
        })?;
        bar.set_message(format!("decoding shard {} of {}", i + 1, files.len()));
        if taken >= limit {
            break;
        }
    }
    flush(&mut raws)?;
    bar.finish_and_clear();
    if sources.is_empty() {
        return Err(DataError::Empty {
            path: files.first().cloned().unwrap_or_default(),
        });
    }
    let classes = match (&labels, layout.classes.clone()) {
        (_, Some(named)) => named,
        (Some(l), None) => numbered(l.iter().copied().max()),
        (None, None) => vec![],
    };
    Ok(Header {
        n: sources.len(),
        h: s,
        w: s,
        c: 3,
        labels,
        classes,
        sources,
        skipped,
        skipped_small,
        fingerprint,
        holdout: None,
    })
}

fn fingerprint(data: &Path, files: &[PathBuf], opts: &CacheOptions) -> Result<u64, DataError> {
    let mut h = fnv1a(data.to_string_lossy().as_bytes(), FNV_START);
    h = fnv1a(&opts.image_size.unwrap_or(0).to_le_bytes(), h);
    h = fnv1a(&[opts.skip_bad as u8], h);
    let classes = classes_path(data);
    let with_classes: Vec<PathBuf> = files
        .iter()
        .cloned()
        .chain(classes.is_file().then_some(classes))
        .collect();
    cache::fingerprint_files(&with_classes, h)
}

/// Open `split` of the shards at `data` with random access: decoded once into the cache
/// (in bounded memory), reused afterwards.
pub fn open(data: &Path, split: Split, opts: &CacheOptions) -> Result<ImageSet, DataError> {
    let files = files(data, split)?;
    let fp = fingerprint(data, &files, opts)?;
    cache::cached(opts, "shards", split.name(), fp, |sink| {
        decode_into(
            &files,
            &layout(data, &files, opts)?,
            opts,
            fp,
            usize::MAX,
            sink,
        )
    })
}

/// Shards streamed for training (see the module's notes).
#[derive(Debug)]
pub struct Stream {
    files: Vec<PathBuf>,
    len: usize,
    layout: Layout,
    /// Most samples the shuffle buffer holds.
    buffer: usize,
}

impl Stream {
    /// The stream of `split` under `data`, and the images it opens with: the first
    /// [`SAMPLE_IMAGES`] in shard order (shards written by `pretext data shard` are
    /// shuffled, so they are a fair sample), from which a run takes its image size,
    /// classes, normalization and preview. Counts the samples from the tar headers.
    pub fn open(
        data: &Path,
        split: Split,
        opts: &CacheOptions,
    ) -> Result<(Stream, ImageSet), DataError> {
        if opts.skip_bad {
            // Leaving a sample out mid-epoch would change the epoch's length and the
            // batches after it; better to find the broken ones first.
            return Err(DataError::format(
                data,
                "a shard stream does not skip samples (--skip-bad): `pretext data inspect` \
                 with --skip-bad names the broken ones, and `pretext data shard --skip-bad` \
                 writes shards without them",
            ));
        }
        let files = files(data, split)?;
        let mut layout = layout(data, &files, opts)?;
        let in_memory = CacheOptions {
            dir: None,
            progress: false,
            ..opts.clone()
        };
        let mut sink = PixelSink::new(&in_memory, "shards", split.name(), 0);
        let header = decode_into(&files, &layout, &in_memory, 0, SAMPLE_IMAGES, &mut sink)?;
        // Unnamed classes are numbered up to the sample's largest label; a larger one
        // later in the stream is an error naming its sample and classes.txt.
        layout.classes = Some(header.classes.clone());
        let sample = sink.finish(header)?;
        let counts: Vec<Result<usize, DataError>> = files.par_iter().map(|f| count(f)).collect();
        let len = counts.into_iter().sum::<Result<usize, DataError>>()?;
        let image = 3 * (layout.size as usize).pow(2);
        let buffer = (BUFFER_BYTES / image.max(1)).clamp(1, BUFFER_IMAGES);
        Ok((
            Stream {
                files,
                len,
                layout,
                buffer,
            },
            sample,
        ))
    }

    /// Samples in one epoch (all the shards).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The batches of `epoch`, built on a background thread.
    pub fn epoch<M: SampleMaker>(
        self: &Arc<Self>,
        maker: Arc<M>,
        cfg: &LoaderConfig,
        epoch: u64,
    ) -> EpochBatches {
        let expected = batches_per_epoch(self.len, cfg);
        let (stream, cfg) = (self.clone(), cfg.clone());
        super::loader::spawn(expected, cfg.prefetch, epoch, move |send| {
            stream
                .produce(&*maker, &cfg, epoch, expected, send)
                .map_err(|e| e.to_string())
        })
    }

    fn produce(
        &self,
        maker: &dyn SampleMaker,
        cfg: &LoaderConfig,
        epoch: u64,
        expected: usize,
        send: &mut dyn FnMut(Batch) -> bool,
    ) -> Result<(), DataError> {
        let mut order = self.files.clone();
        let mut mixer = Mixer {
            stream: self,
            maker,
            cfg,
            epoch,
            expected,
            pick: ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, epoch, u64::MAX - 2)),
            buffer: Vec::new(),
            cap: if cfg.shuffle { self.buffer } else { 0 },
            pending: Vec::with_capacity(cfg.batch_size),
            first: 0,
            batches: 0,
            seen: 0,
            send,
            stopped: false,
        };
        if cfg.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(
                cfg.seed,
                epoch,
                u64::MAX - 1,
            )));
        }
        let s = self.layout.size as usize;
        let chunk = ((16 << 20) / (s * s * 3).max(1)).clamp(32, 1024);
        let mut raws = Vec::with_capacity(chunk);
        for shard in &order {
            read(shard, |raw| {
                raws.push(raw);
                if raws.len() == chunk {
                    mixer.decode(&mut raws)?;
                }
                Ok(!mixer.stopped)
            })?;
            if mixer.stopped {
                return Ok(());
            }
        }
        mixer.decode(&mut raws)?;
        mixer.drain();
        if !mixer.stopped && mixer.seen != self.len {
            // Fewer would end the epoch short, more would be left out without a word.
            return Err(DataError::format(
                &self.files[0],
                format!(
                    "the shards hold {} samples, but {} when the run started: were they changed during the run?",
                    mixer.seen, self.len
                ),
            ));
        }
        Ok(())
    }
}

/// One epoch's way from decoded samples to batches: a seeded shuffle buffer (each new
/// sample takes the place of a random one, which goes on to the batch), then batches
/// built by the task's [`SampleMaker`] exactly as from a decoded set.
struct Mixer<'a> {
    stream: &'a Stream,
    maker: &'a dyn SampleMaker,
    cfg: &'a LoaderConfig,
    epoch: u64,
    expected: usize,
    pick: ChaCha8Rng,
    buffer: Vec<Item>,
    cap: usize,
    pending: Vec<Item>,
    /// Position in the epoch of the next batch's first image (seeds its randomness).
    first: usize,
    batches: usize,
    /// Samples read so far this epoch.
    seen: usize,
    send: &'a mut dyn FnMut(Batch) -> bool,
    stopped: bool,
}

impl Mixer<'_> {
    fn decode(&mut self, raws: &mut Vec<Raw>) -> Result<(), DataError> {
        let layout = &self.stream.layout;
        let decoded: Vec<Result<Item, DataError>> =
            raws.par_iter().map(|r| layout.decode(r)).collect();
        raws.clear();
        for item in decoded {
            self.seen += 1;
            self.take(item?);
        }
        Ok(())
    }

    fn take(&mut self, item: Item) {
        let out = if self.buffer.len() < self.cap {
            self.buffer.push(item);
            return;
        } else if self.cap == 0 {
            item
        } else {
            let j = self.pick.random_range(0..self.cap);
            std::mem::replace(&mut self.buffer[j], item)
        };
        self.pending.push(out);
        if self.pending.len() == self.cfg.batch_size {
            self.flush();
        }
    }

    /// The buffer's samples in a seeded order, then the last partial batch if the epoch
    /// keeps it.
    fn drain(&mut self) {
        let mut rest = std::mem::take(&mut self.buffer);
        rest.shuffle(&mut self.pick);
        self.cap = 0;
        for item in rest {
            self.take(item);
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.stopped || self.pending.is_empty() {
            return;
        }
        if self.batches == self.expected {
            // The remainder a dropped last batch leaves out.
            self.pending.clear();
            return;
        }
        let items = std::mem::take(&mut self.pending);
        let layout = &self.stream.layout;
        let s = layout.size as usize;
        let mut pixels = Vec::with_capacity(items.len() * s * s * 3);
        let mut labels = Vec::with_capacity(items.len());
        let mut sources = Vec::with_capacity(items.len());
        for it in items {
            pixels.extend_from_slice(&it.pixels);
            labels.extend(it.label);
            sources.push(it.source);
        }
        let n = sources.len();
        let set = ImageSet::from_parts(
            Header {
                n,
                h: s,
                w: s,
                c: 3,
                labels: layout.labelled.then_some(labels),
                classes: layout.classes.clone().unwrap_or_default(),
                sources,
                skipped: vec![],
                skipped_small: 0,
                fingerprint: 0,
                holdout: None,
            },
            pixels,
        );
        let idx: Vec<usize> = (0..n).collect();
        let batch = build_batch(
            &set,
            self.maker,
            &idx,
            self.cfg.seed,
            self.epoch,
            self.first,
        );
        self.first += n;
        self.batches += 1;
        self.stopped = !(self.send)(batch);
        self.pending = Vec::with_capacity(self.cfg.batch_size);
    }
}

/// What [`write`] wrote.
#[derive(Debug, PartialEq)]
pub struct Written {
    /// Per split: its name, samples, shard files.
    pub splits: Vec<(Split, usize, usize)>,
}

/// Write the data set at `src` as shards in the folder `out` (which must not exist yet):
/// every split pretext reads there, `per_shard` samples a shard, shuffled with `seed`;
/// `classes.txt` beside them. An image tree's files go in as they are (no re-encoding);
/// binary releases (CIFAR, STL-10) as PNG, which is lossless. Every image is decoded once
/// on the way, so a file that cannot be read stops the command (or, with `--skip-bad`,
/// is left out and counted) before a shard with it exists. Written under a temporary
/// name and renamed: a failed or killed command leaves no partial folder.
pub fn write(
    src: &Path,
    out: &Path,
    per_shard: usize,
    seed: u64,
    opts: &CacheOptions,
) -> anyhow::Result<Written> {
    use anyhow::{Context, bail};
    if per_shard == 0 {
        bail!("--per-shard must be at least 1");
    }
    if out.exists() {
        bail!(
            "{} already exists; choose a new folder for the shards",
            out.display()
        );
    }
    opts.validate(src)?;
    let splits = super::splits(src, opts.holdout)?;
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a folder name", out.display()))?
        .to_string_lossy();
    let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    remove_stale(&tmp, &name);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let cleanup = TmpDir(tmp.clone());
    let mut written = Written { splits: vec![] };
    let mut classes: Option<Vec<String>> = None;
    for split in splits {
        let samples = Samples::of(src, split, opts)?;
        if let Some(c) = samples.classes() {
            match &classes {
                None => classes = Some(c.to_vec()),
                Some(have) if have.as_slice() != c => bail!(
                    "{}: the {} split has other classes than the ones before it",
                    src.display(),
                    split.name()
                ),
                Some(_) => {}
            }
        }
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let bar = crate::util::progress::bar(
            order.len() as u64,
            &format!("sharding {}", split.name()),
            opts.progress,
        );
        let (mut n, mut shards) = (0usize, 0usize);
        for part in order.chunks(per_shard) {
            // Numbered by the shards written, so one left empty by --skip-bad leaves no
            // gap in the names a pattern lists.
            let path = tmp.join(format!("{}-{shards:06}.tar", split.name()));
            let encoded: Vec<Result<Encoded, DataError>> =
                part.par_iter().map(|&i| samples.encoded(i, opts)).collect();
            let mut tar = tar::Builder::new(std::io::BufWriter::new(
                fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
            ));
            let mut in_shard = 0;
            for (&i, enc) in part.iter().zip(encoded) {
                let Some((bytes, ext)) = enc? else { continue };
                let key = format!("{n:08}");
                append(&mut tar, &format!("{key}.{ext}"), &bytes)?;
                if let Some(y) = samples.label(i) {
                    append(&mut tar, &format!("{key}.cls"), y.to_string().as_bytes())?;
                }
                n += 1;
                in_shard += 1;
            }
            let mut inner = tar.into_inner()?;
            inner.flush()?;
            inner.into_inner()?.sync_all()?;
            if in_shard == 0 {
                fs::remove_file(&path)?;
            } else {
                shards += 1;
            }
            bar.inc(part.len() as u64);
        }
        bar.finish_and_clear();
        written.splits.push((split, n, shards));
    }
    if let Some(c) = classes {
        fs::write(tmp.join(CLASSES_FILE), c.join("\n") + "\n")?;
    }
    if super::detect_format(src)? == super::Format::Folder {
        let tree = fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
        let source = Source {
            tree: tree.to_string_lossy().into_owned(),
            // A tree with train/ and test/ folders has its own split.
            holdout: (!super::folder::has_split_folders(src))
                .then_some(opts.holdout)
                .flatten(),
        };
        fs::write(tmp.join(SOURCE_FILE), serde_json::to_vec_pretty(&source)?)?;
    }
    fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    std::mem::forget(cleanup);
    Ok(written)
}

/// Temporary folders of earlier `data shard` runs to the same `out` that were killed (their
/// process is gone: an interrupt exits without unwinding), and `tmp` itself.
fn remove_stale(tmp: &Path, name: &str) {
    let _ = fs::remove_dir_all(tmp);
    let Some(parent) = tmp.parent() else { return };
    let prefix = format!(".{name}.tmp-");
    for e in fs::read_dir(parent).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let dead = file
            .strip_prefix(&prefix)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A temporary folder removed unless the work in it was finished.
struct TmpDir(PathBuf);
impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn append(tar: &mut tar::Builder<impl Write>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    // A fixed time: the same data and seed give byte-identical shards.
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
}

/// An image as the bytes of a file and its extension; `None` when it cannot be read and
/// `--skip-bad` leaves it out.
type Encoded = Option<(Vec<u8>, &'static str)>;

/// The samples of one split of a source data set, as [`write`] takes them.
enum Samples {
    /// An image tree: its files as they are.
    Files(super::folder::Listing),
    /// Anything else, decoded: encoded again as PNG.
    Decoded(ImageSet),
}

impl Samples {
    fn of(src: &Path, split: Split, opts: &CacheOptions) -> anyhow::Result<Samples> {
        Ok(
            if super::detect_format(src)? == super::Format::Folder && opts.image_size.is_none() {
                Samples::Files(super::folder::list(src, split, opts.holdout)?)
            } else {
                Samples::Decoded(super::open(src, split, opts)?)
            },
        )
    }
    fn len(&self) -> usize {
        match self {
            Samples::Files(l) => l.files.len(),
            Samples::Decoded(s) => s.len(),
        }
    }
    fn classes(&self) -> Option<&[String]> {
        match self {
            Samples::Files(l) => l.labels.as_ref().map(|_| l.classes.as_slice()),
            Samples::Decoded(s) => s.is_labelled().then_some(s.header.classes.as_slice()),
        }
    }
    fn label(&self, i: usize) -> Option<u16> {
        match self {
            Samples::Files(l) => l.labels.as_ref().map(|y| y[i]),
            Samples::Decoded(s) => s.label(i),
        }
    }
    /// Image `i` as a file's bytes (see [`Encoded`]).
    fn encoded(&self, i: usize, opts: &CacheOptions) -> Result<Encoded, DataError> {
        match self {
            Samples::Files(l) => {
                let path = &l.files[i];
                let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
                // Decoded once here so a broken file stops the command now, not a
                // training run days later.
                match decode_bytes(&bytes, path, None) {
                    Ok(_) => {}
                    Err(_) if opts.skip_bad => return Ok(None),
                    Err(e) => return Err(e),
                }
                let ext = match path
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(|e| e.to_ascii_lowercase())
                    .as_deref()
                {
                    Some("png") => "png",
                    _ => "jpg",
                };
                Ok(Some((bytes, ext)))
            }
            Samples::Decoded(set) => {
                let h = &set.header;
                let mut png = Vec::new();
                image::codecs::png::PngEncoder::new(&mut png)
                    .write_image(
                        set.image(i),
                        h.w as u32,
                        h.h as u32,
                        image::ExtendedColorType::Rgb8,
                    )
                    .map_err(|e| {
                        DataError::format(Path::new(&h.sources[i]), format!("encoding PNG: {e}"))
                    })?;
                Ok(Some((png, "png")))
            }
        }
    }
}

use image::ImageEncoder;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_like_webdataset() {
        assert_eq!(
            expand("s/train-{000..002}.tar").unwrap(),
            ["s/train-000.tar", "s/train-001.tar", "s/train-002.tar"]
        );
        assert_eq!(
            expand("{a,b}-{8..10}").unwrap(),
            ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
        );
        assert_eq!(expand("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["x-{3..1}.tar", "x-{1..z}.tar", "x-{1..3.tar", "x-{{1}}"] {
            assert!(expand(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_the_name_up_to_the_first_dot() {
        assert_eq!(key_ext("00000012.jpg"), ("00000012", "jpg"));
        assert_eq!(key_ext("a.b/c.seg.png"), ("a.b/c", "seg.png"));
        assert_eq!(key_ext("noext"), ("noext", ""));
    }

    /// `root/{train,test}/{a,b}/NNN.png`: 4×4 images whose first red value is their number
    /// (test images from 100 on), class `a` for even numbers, `b` for odd.
    fn tree(root: &Path, train: usize, test: usize) {
        for (split, n, base) in [("train", train, 0), ("test", test, 100)] {
            for i in 0..n {
                let dir = root.join(split).join(["a", "b"][i % 2]);
                fs::create_dir_all(&dir).unwrap();
                let v = (base + i) as u8;
                image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([v, 10 * x as u8, 10 * y as u8]))
                    .save(dir.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }

    fn no_cache() -> CacheOptions {
        CacheOptions {
            dir: None,
            progress: false,
            ..Default::default()
        }
    }

    /// (first red value, label) of every image of `set`, sorted.
    fn contents(set: &ImageSet) -> Vec<(u8, u16)> {
        let mut v: Vec<(u8, u16)> = (0..set.len())
            .map(|i| (set.image(i)[0], set.label(i).unwrap()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sharding_then_reading_gives_back_every_image_and_label_shuffled() {
        let tmp = tempfile::tempdir().unwrap();
        tree(&tmp.path().join("src"), 10, 4);
        let out = tmp.path().join("shards");
        let w = write(&tmp.path().join("src"), &out, 3, 7, &no_cache()).unwrap();
        assert_eq!(
            w.splits,
            [(Split::Train, 10, 4), (Split::Test, 4, 2)],
            "10 images in shards of 3, 4 in shards of 3"
        );
        assert_eq!(
            fs::read_to_string(out.join(CLASSES_FILE)).unwrap(),
            "a\nb\n"
        );
        assert_eq!(
            super::super::detect_format(&out).unwrap(),
            super::super::Format::Shards
        );
        let src = super::super::open(&tmp.path().join("src"), Split::Train, &no_cache()).unwrap();
        let back = open(&out, Split::Train, &no_cache()).unwrap();
        assert_eq!(contents(&back), contents(&src));
        assert_eq!(back.header.classes, ["a", "b"]);
        // Every image is bit for bit what the folder reader decodes.
        for i in 0..back.len() {
            let j = (0..src.len())
                .find(|&j| src.image(j)[0] == back.image(i)[0])
                .unwrap();
            assert_eq!(back.image(i), src.image(j));
        }
        // Shuffled before sharding: the shards do not hold the sorted tree in order.
        let order: Vec<u8> = (0..back.len()).map(|i| back.image(i)[0]).collect();
        assert_ne!(order, (0..10).collect::<Vec<u8>>());
        // A pattern names the same shards; a missing one is named.
        let pattern = out.join("train-{000000..000003}.tar");
        let by_pattern = open(&pattern, Split::Train, &no_cache()).unwrap();
        assert_eq!(contents(&by_pattern), contents(&back));
        let e = open(
            &out.join("train-{000000..000005}.tar"),
            Split::Train,
            &no_cache(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("train-000004.tar") && e.contains("no such shard"),
            "{e}"
        );
        let e = open(&pattern, Split::Test, &no_cache())
            .unwrap_err()
            .to_string();
        assert!(e.contains("one split"), "{e}");
        // The same data and seed give the same bytes; an existing folder is refused.
        let again = tmp.path().join("again");
        write(&tmp.path().join("src"), &again, 3, 7, &no_cache()).unwrap();
        assert_eq!(
            fs::read(out.join("train-000001.tar")).unwrap(),
            fs::read(again.join("train-000001.tar")).unwrap()
        );
        let e = write(&tmp.path().join("src"), &out, 3, 7, &no_cache()).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }

    #[test]
    fn decoded_sets_are_sharded_as_lossless_png_and_unnamed_classes_are_numbered() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        tree(&src, 6, 2);
        // With --image-size the tree is decoded (and resized) first, then stored as PNG,
        // as the binary releases (CIFAR, STL-10) are.
        let small = CacheOptions {
            image_size: Some(2),
            ..no_cache()
        };
        let out = tmp.path().join("shards");
        write(&src, &out, 4, 3, &small).unwrap();
        let names: Vec<String> =
            tar::Archive::new(fs::File::open(out.join("train-000000.tar")).unwrap())
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect();
        assert_eq!(names[..2], ["00000000.png", "00000000.cls"]);
        let want = super::super::open(&src, Split::Train, &small).unwrap();
        let back = open(&out, Split::Train, &no_cache()).unwrap();
        assert_eq!((back.header.h, back.header.w), (2, 2));
        let mut a: Vec<&[u8]> = (0..want.len()).map(|i| want.image(i)).collect();
        let mut b: Vec<&[u8]> = (0..back.len()).map(|i| back.image(i)).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "PNG keeps every pixel");
        // Without classes.txt, classes are numbered up to the largest index.
        tar_of(
            &tmp.path().join("x.tar"),
            &[
                ("0.png", &png()),
                ("0.cls", b"2"),
                ("1.png", &png()),
                ("1.cls", b"0"),
            ],
        );
        let set = open(&tmp.path().join("x.tar"), Split::Train, &no_cache()).unwrap();
        assert_eq!(set.header.classes, ["0", "1", "2"]);
        assert_eq!(set.header.labels, Some(vec![2, 0]));
    }

    /// One input per image (its first red value) and its label as target.
    struct FirstPixel;
    impl SampleMaker for FirstPixel {
        fn samples_per_image(&self) -> usize {
            1
        }
        fn input_shape(&self) -> [usize; 3] {
            [1, 1, 1]
        }
        fn make(
            &self,
            set: &ImageSet,
            i: usize,
            _: &mut ChaCha8Rng,
            out: super::super::loader::SampleOut<'_>,
        ) {
            out.inputs[0] = set.image(i)[0] as f32;
            out.targets[0] = set.label(i).unwrap() as i64;
        }
    }

    fn epoch_values(stream: &Arc<Stream>, cfg: &LoaderConfig, epoch: u64) -> Vec<Vec<u8>> {
        stream
            .epoch(Arc::new(FirstPixel), cfg, epoch)
            .map(|b| {
                let b = b.unwrap();
                // The label travels with its image (even numbers are class a).
                for (x, y) in b.inputs.iter().zip(&b.targets) {
                    assert_eq!(*x as i64 % 2, *y, "{b:?}");
                }
                b.inputs.iter().map(|&x| x as u8).collect()
            })
            .collect()
    }

    #[test]
    fn a_stream_yields_every_sample_once_an_epoch_in_a_seeded_order() {
        let tmp = tempfile::tempdir().unwrap();
        tree(&tmp.path().join("src"), 23, 0);
        let out = tmp.path().join("shards");
        write(&tmp.path().join("src"), &out, 4, 1, &no_cache()).unwrap();
        let (mut stream, sample) = Stream::open(&out, Split::Train, &no_cache()).unwrap();
        assert_eq!((stream.len(), sample.len()), (23, 23));
        // A buffer smaller than the data set, so samples are swapped in and out of it.
        stream.buffer = 5;
        let stream = Arc::new(stream);
        let mut cfg = LoaderConfig {
            batch_size: 4,
            shuffle: true,
            drop_last: false,
            seed: 9,
            prefetch: 2,
        };
        let first = epoch_values(&stream, &cfg, 0);
        assert_eq!(first.len(), 6);
        assert_eq!(first.last().unwrap().len(), 3, "23 = 5 × 4 + 3");
        let mut all: Vec<u8> = first.concat();
        all.sort();
        assert_eq!(all, (0..23).collect::<Vec<u8>>(), "each sample once");
        assert_eq!(
            epoch_values(&stream, &cfg, 0),
            first,
            "the same seed, the same order"
        );
        let second = epoch_values(&stream, &cfg, 1);
        assert_ne!(second, first, "another epoch, another order");
        cfg.seed = 10;
        assert_ne!(
            epoch_values(&stream, &cfg, 0),
            first,
            "another seed, another order"
        );
        // A shard rewritten under a running stream is an error, not a shorter epoch.
        let more = tmp.path().join("more");
        tree(&more, 30, 0);
        let other = tmp.path().join("other");
        write(&more, &other, 4, 1, &no_cache()).unwrap();
        let last = out.join("train-000005.tar"); // 23 = 5 × 4 + 3: its last shard holds 3
        let kept = fs::read(&last).unwrap();
        fs::copy(other.join("train-000000.tar"), &last).unwrap();
        let e = stream
            .epoch(Arc::new(FirstPixel), &cfg, 0)
            .find_map(|b| b.err())
            .expect("an error")
            .to_string();
        assert!(e.contains("24 samples, but 23"), "{e}");
        fs::write(&last, kept).unwrap();
        // Dropping the last partial batch: 5 whole batches of distinct samples.
        cfg.drop_last = true;
        let dropped = epoch_values(&stream, &cfg, 0);
        assert_eq!(dropped.len(), 5);
        let mut seen: Vec<u8> = dropped.concat();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 20);
    }

    /// A tar file of `(name, bytes)` members.
    fn tar_of(path: &Path, members: &[(&str, &[u8])]) {
        let mut b = tar::Builder::new(fs::File::create(path).unwrap());
        for (name, bytes) in members {
            append(&mut b, name, bytes).unwrap();
        }
        b.finish().unwrap();
    }

    fn png() -> Vec<u8> {
        let mut v = Vec::new();
        image::codecs::png::PngEncoder::new(&mut v)
            .write_image(&[7u8; 12], 2, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        v
    }

    #[test]
    fn broken_shards_are_refused_naming_the_member() {
        let tmp = tempfile::tempdir().unwrap();
        let at = |name: &str| tmp.path().join(name);
        let err = |p: &Path| open(p, Split::Train, &no_cache()).unwrap_err().to_string();
        tar_of(&at("label.tar"), &[("0.png", &png()), ("0.cls", b"cat")]);
        let e = err(&at("label.tar"));
        assert!(
            e.contains("label.tar#0.cls") && e.contains("class index"),
            "{e}"
        );
        tar_of(&at("noimage.tar"), &[("0.png", &png()), ("1.cls", b"1")]);
        let e = err(&at("noimage.tar"));
        assert!(
            e.contains("noimage.tar#1") && e.contains("without an image"),
            "{e}"
        );
        tar_of(&at("twice.tar"), &[("0.png", &png()), ("0.jpg", &png())]);
        let e = err(&at("twice.tar"));
        assert!(e.contains("second image"), "{e}");
        tar_of(
            &at("corrupt.tar"),
            &[("0.png", &png()), ("1.png", b"not a png")],
        );
        let e = err(&at("corrupt.tar"));
        assert!(
            e.contains("corrupt.tar#1.png") && e.contains("cannot decode"),
            "{e}"
        );
        // Cut inside a member's bytes: the reader would hand over a short member.
        let big: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        tar_of(&at("whole.tar"), &[("0.png", &png()), ("1.png", &big)]);
        let whole = fs::read(at("whole.tar")).unwrap();
        fs::write(at("cut.tar"), &whole[..2048 + 1000]).unwrap();
        let e = err(&at("cut.tar"));
        assert!(
            e.contains("cut.tar#1.png") && e.contains("cut short"),
            "{e}"
        );
        fs::write(at("text.tar"), b"hello, not a tar file at all").unwrap();
        let e = err(&at("text.tar"));
        assert!(e.contains("text.tar"), "{e}");
        // Cut between two members: it reads as a shorter archive, unless its end marker
        // is checked.
        let second = 512 + png().len().div_ceil(512) * 512;
        fs::write(at("boundary.tar"), &whole[..second]).unwrap();
        let e = err(&at("boundary.tar"));
        assert!(
            e.contains("boundary.tar") && e.contains("end-of-archive"),
            "{e}"
        );
        let e = count(&at("cut.tar")).unwrap_err().to_string();
        assert!(e.contains("end-of-archive"), "counting a cut shard: {e}");
        assert_eq!(count(&at("whole.tar")).unwrap(), 2);
        // A label in a set whose first sample has none is not dropped without a word.
        tar_of(
            &at("mixed.tar"),
            &[("0.png", &png()), ("1.png", &png()), ("1.cls", b"0")],
        );
        let e = err(&at("mixed.tar"));
        assert!(
            e.contains("mixed.tar#1.png") && e.contains("first sample has none"),
            "{e}"
        );
    }

    #[test]
    fn a_stream_refuses_to_skip_and_shards_beside_image_folders_are_ambiguous() {
        let tmp = tempfile::tempdir().unwrap();
        tree(&tmp.path().join("src"), 4, 2);
        let out = tmp.path().join("shards");
        write(&tmp.path().join("src"), &out, 4, 0, &no_cache()).unwrap();
        let skip = CacheOptions {
            skip_bad: true,
            ..no_cache()
        };
        let e = Stream::open(&out, Split::Train, &skip)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not skip"), "{e}");
        // A folder with shards and an image tree side by side names neither silently.
        fs::copy(
            out.join("train-000000.tar"),
            tmp.path().join("src/train-000000.tar"),
        )
        .unwrap();
        let e = super::super::detect_format(&tmp.path().join("src"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both tar shards"), "{e}");
    }

    #[test]
    fn sharding_a_tree_with_a_broken_image_stops_before_anything_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        tree(&src, 6, 2);
        fs::write(src.join("train/a/bad.png"), b"garbage").unwrap();
        let out = tmp.path().join("shards");
        let e = write(&src, &out, 4, 0, &no_cache())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.png"), "{e}");
        assert!(!out.exists());
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary folder left: {left:?}");
        // --skip-bad leaves it out.
        let skip = CacheOptions {
            skip_bad: true,
            ..no_cache()
        };
        let w = write(&src, &out, 4, 0, &skip).unwrap();
        assert_eq!(w.splits[0], (Split::Train, 6, 2));
    }
}
