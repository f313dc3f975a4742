//! Files written so that a reader (or a resumed run) sees either the old or the new
//! content, never half of one: write a temporary sibling, flush it, rename over.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Call `write` on a temporary path, then rename it to `path`.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = tmp_path(path);
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("flushing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
        // The rename itself is durable only once the directory is flushed.
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Atomically write bytes.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    atomic_write(path, |tmp| Ok(std::fs::write(tmp, bytes)?))
}

/// Flush a directory's entries (a rename or a new file in it) to disk. File systems that
/// cannot flush a directory (some network and FUSE mounts answer EINVAL; Windows cannot
/// open one) are let be: there the rename is as durable as they make it.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    if !cfg!(unix) {
        return Ok(());
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match std::fs::File::open(dir).and_then(|f| f.sync_all()) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::InvalidInput
            ) =>
        {
            Ok(())
        }
        r => r.with_context(|| format!("flushing the folder {}", dir.display())),
    }
}
