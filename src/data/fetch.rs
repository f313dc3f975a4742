//! `pretext data fetch cifar10|cifar100|stl10`: download a data set's official binary
//! archive, check its MD5 against the published one, and unpack only the expected files.
//! `--data cifar10` (any command) does the same on first use, into the data directory
//! (`$PRETEXT_DATA_DIR`, else `data/` in the cache folder), and reuses it afterwards.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};

/// A data set's official archive: where it is, its published MD5, the folder it unpacks
/// to and the members pretext reads from it.
#[derive(Clone, Copy, Debug)]
pub struct Archive {
    pub name: &'static str,
    pub title: &'static str,
    pub url: &'static str,
    pub md5: &'static str,
    /// The archive's file name.
    pub file: &'static str,
    /// The folder inside the archive, and under `--out` after unpacking.
    pub dir: &'static str,
    pub members: &'static [&'static str],
}

/// A data folder's name as people call it: a named data set's title (its folder
/// `cifar-10-batches-bin` or name `cifar10` is CIFAR-10), else the folder's own name.
pub fn title_of(path: &std::path::Path) -> String {
    let folder = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    ARCHIVES
        .iter()
        .find(|a| a.dir == folder || a.name == folder)
        .map_or(folder, |a| a.title.to_string())
}

/// The data sets `data fetch` knows (MD5s as their authors publish them).
pub const ARCHIVES: [Archive; 3] = [
    Archive {
        name: "cifar10",
        title: "CIFAR-10",
        url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        md5: "c32a1d4ab5d03f1284b67883e8d87530",
        file: "cifar-10-binary.tar.gz",
        dir: "cifar-10-batches-bin",
        members: &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
            "batches.meta.txt",
        ],
    },
    Archive {
        name: "cifar100",
        title: "CIFAR-100",
        url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        md5: "03b5dce01913d631647c71ecec9e9cb8",
        file: "cifar-100-binary.tar.gz",
        dir: "cifar-100-binary",
        members: &[
            "train.bin",
            "test.bin",
            "fine_label_names.txt",
            "coarse_label_names.txt",
        ],
    },
    Archive {
        name: "stl10",
        title: "STL-10",
        url: "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        md5: "91f7769df0f17e558f3565bffb0c7dfb",
        file: "stl10_binary.tar.gz",
        dir: "stl10_binary",
        members: &[
            "train_X.bin",
            "train_y.bin",
            "test_X.bin",
            "test_y.bin",
            "unlabeled_X.bin",
            "class_names.txt",
            "fold_indices.txt",
        ],
    },
];

/// The archive of data set `name`, or an error listing the known ones.
pub fn archive(name: &str) -> Result<&'static Archive> {
    ARCHIVES.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<&str> = ARCHIVES.iter().map(|a| a.name).collect();
        anyhow::anyhow!(
            "unknown data set {name:?}; `data fetch` knows: {}",
            known.join(", ")
        )
    })
}

/// Where named data sets live: `$PRETEXT_DATA_DIR`, else `data/` in the cache folder
/// (`$PRETEXT_CACHE_DIR`, `$XDG_CACHE_HOME/pretext` or `~/.cache/pretext`).
pub fn data_dir() -> Option<PathBuf> {
    std::env::var_os("PRETEXT_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| super::cache::default_cache_dir().map(|d| d.join("data")))
}

/// Where `archive` is downloaded from: the official address, or the same file name
/// under `$PRETEXT_DATA_MIRROR` (a mirror, a proxy, a local server). The published MD5 is
/// checked either way.
pub fn source_url(archive: &Archive) -> String {
    match std::env::var("PRETEXT_DATA_MIRROR") {
        Ok(m) if !m.is_empty() => format!("{}/{}", m.trim_end_matches('/'), archive.file),
        _ => archive.url.to_string(),
    }
}

/// The folder `data` stands for: a data set's name (`cifar10`, `cifar100`, `stl10`) is its
/// folder in the [`data_dir`], downloaded, checked and unpacked on first use; anything
/// else is a path and comes back as it is (so is a name that is also an existing path in
/// the working directory: the folder the user has wins).
pub fn locate(data: &Path, progress: bool) -> Result<PathBuf> {
    let Some(archive) = data
        .to_str()
        .and_then(|name| ARCHIVES.iter().find(|a| a.name == name))
    else {
        return Ok(data.to_path_buf());
    };
    if data.exists() {
        return Ok(data.to_path_buf());
    }
    let root = data_dir().context(
        "no folder for named data sets: set PRETEXT_DATA_DIR (or HOME, for ~/.cache/pretext/data)",
    )?;
    let dir = root.join(archive.dir);
    if archive.members.iter().all(|m| dir.join(m).is_file()) {
        return Ok(dir);
    }
    let url = source_url(archive);
    if progress {
        eprintln!(
            "{}: not in {} yet; fetching {url} (once)",
            archive.title,
            root.display()
        );
    }
    fetch(archive, &root, &url, archive.md5, progress)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Download `url` to `dest`, returning the MD5 of what arrived. Written to a `.part` file
/// first, so an interrupted download never looks complete.
pub fn download(url: &str, dest: &Path, progress: bool) -> Result<String> {
    let part = dest.with_extension("part");
    let r = download_to(url, &part, progress);
    match r {
        Ok(sum) => {
            fs::rename(&part, dest)?;
            Ok(sum)
        }
        Err(e) => {
            // A cut download is no use to anyone: nothing is left behind.
            let _ = fs::remove_file(&part);
            Err(e)
        }
    }
}

fn download_to(url: &str, part: &Path, progress: bool) -> Result<String> {
    let mut resp = ureq::get(url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar =
        crate::util::progress::bar(len.unwrap_or(0), "downloading", progress && len.is_some());
    let mut out = fs::File::create(part).with_context(|| format!("creating {}", part.display()))?;
    let mut reader = resp.body_mut().as_reader();
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    out.sync_all()?;
    if let Some(l) = len
        && l != got
    {
        bail!("{url}: the download stopped after {got} of {l} bytes");
    }
    Ok(hex(&hasher.finalize()))
}

/// Unpack the members of `archive` (the file at `path`) into `out/<dir>/`. Anything else
/// in the archive (or any path that would escape `out`) is ignored.
pub fn unpack(archive: &Archive, path: &Path, out: &Path) -> Result<PathBuf> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let dir = out.join(archive.dir);
    fs::create_dir_all(&dir)?;
    let mut found = Vec::new();
    for entry in tar
        .entries()
        .with_context(|| format!("{}: not a tar.gz archive", path.display()))?
    {
        let mut entry = entry.with_context(|| format!("{}: corrupt archive", path.display()))?;
        let member = entry.path()?.into_owned();
        let name = member
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let parent_ok = member
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|p| p == archive.dir);
        if entry.header().entry_type().is_file()
            && parent_ok
            && archive.members.contains(&name.as_str())
        {
            let target = dir.join(&name);
            crate::util::fsutil::atomic_write(&target, |tmp| {
                let mut w = fs::File::create(tmp)?;
                std::io::copy(&mut entry, &mut w)?;
                Ok(())
            })
            .with_context(|| format!("{}: unpacking {name}", path.display()))?;
            found.push(name);
        }
    }
    let missing: Vec<&str> = archive
        .members
        .iter()
        .copied()
        .filter(|f| !found.iter().any(|g| g == f))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: not the {} binary archive (missing {})",
            path.display(),
            archive.title,
            missing.join(", ")
        );
    }
    Ok(dir)
}

/// Download, verify and unpack `archive` into `out` (from `url`, expecting `md5`: the
/// official ones unless a mirror is given); returns the folder to pass to `--data`.
pub fn fetch(
    archive: &Archive,
    out: &Path,
    url: &str,
    md5: &str,
    progress: bool,
) -> Result<PathBuf> {
    let existed = out.exists();
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // A name of this process's own: two commands fetching at once (jobs started together
    // on a fresh machine) must not write into one file. Each unpacks whole members by
    // rename, so either's files are complete.
    let path = out.join(format!("{}.{}.download", archive.file, std::process::id()));
    let r = (|| {
        let sum = download(url, &path, progress).with_context(|| {
            format!(
                "fetching {} (without internet: download {} elsewhere, check that its MD5 is \
                 {}, and unpack it into {}, so that {} holds {})",
                archive.title,
                archive.url,
                archive.md5,
                out.display(),
                out.join(archive.dir).display(),
                archive.members.join(", ")
            )
        })?;
        if !sum.eq_ignore_ascii_case(md5) {
            let _ = fs::remove_file(&path);
            bail!("{url}: MD5 {sum} does not match the published {md5}; the download was deleted");
        }
        let dir = unpack(archive, &path, out)?;
        fs::remove_file(&path)?;
        Ok(dir)
    })();
    // Whatever happened, the archive is not kept (unpacked, refused or cut).
    let _ = fs::remove_file(&path);
    if r.is_err() && !existed {
        // A failed fetch leaves no empty folder behind (remove_dir keeps a non-empty one).
        let _ = fs::remove_dir(out);
    }
    r
}
