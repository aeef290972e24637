//! Reproducible layers: the same entries give the same bytes on any machine.
//!
//! Entries are sorted by path; every header has the same mtime (`SOURCE_DATE_EPOCH`, default 0),
//! uid/gid from the instruction (default 0:0) and no user or group names; modes are normalised
//! (directories 0755, files 0644 or 0755 by their execute bit, so a umask or a checkout's
//! permissions do not leak in) unless `--chmod` says otherwise. Gzip runs at level 6 with an
//! empty header (no name, mtime 0) through flate2's pure-Rust backend (miniz_oxide), the one
//! compressor every machine runs identically.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path in the image, relative to `/` (`app/index.html`).
    pub path: String,
    /// What it is.
    pub kind: LayerKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
}

/// Entry kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerKind {
    /// A directory.
    Dir,
    /// A regular file copied from this path.
    File(PathBuf),
    /// A symbolic link to this target.
    Symlink(PathBuf),
}

/// A layer written into a layout's `blobs/sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// `sha256:` of the gzip bytes (the blob).
    pub digest: String,
    /// `sha256:` of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: String,
    /// Size of the gzip bytes.
    pub size: u64,
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hashing<W: Write>(inner: W) -> HashWriter<W> {
    HashWriter { inner, hasher: Sha256::new(), count: 0 }
}

/// Writes `entries` (in any order; the last entry for a path wins) as a gzip'd tar into
/// `layout/blobs/sha256/<digest>`.
pub fn write_layer(layout: &Path, entries: Vec<LayerEntry>, mtime: u64) -> io::Result<BuiltLayer> {
    let mut entries = entries;
    // Sort by path, keeping the last of duplicates (a later COPY source overrides an earlier one).
    entries.reverse();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|later, first| later.path == first.path);

    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let tmp = blobs.join(format!(".layer-{}.tmp", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    let compressed = hashing(io::BufWriter::with_capacity(256 * 1024, file));
    let gz = GzBuilder::new().mtime(0).operating_system(255).write(compressed, Compression::new(6));
    let mut tar = tar::Builder::new(hashing(gz));
    tar.mode(tar::HeaderMode::Deterministic);
    for e in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(mtime);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mode(e.mode);
        match &e.kind {
            LayerKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", e.path), io::empty())?;
            }
            LayerKind::File(src) => {
                // The work tree is the PR's: whatever its walk saw, open without blocking and
                // without following a link, and check the handle (a FIFO or a device swapped in
                // since is refused, not waited on or read forever).
                let f = {
                    use std::os::unix::fs::OpenOptionsExt;
                    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
                    std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(src)?
                };
                let meta = f.metadata()?;
                if !meta.is_file() {
                    return Err(io::Error::other(format!("{} is no longer a regular file", src.display())));
                }
                let len = meta.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                let mut reader = f.take(len);
                tar.append_data(&mut h, &e.path, &mut reader)?;
                if reader.limit() != 0 {
                    return Err(io::Error::other(format!("{} shrank while it was being read", src.display())));
                }
            }
            LayerKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &e.path, target)?;
            }
        }
    }
    let diff = tar.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(diff.hasher.finalize()));
    let mut compressed = diff.inner.finish()?;
    compressed.flush()?;
    let digest = format!("sha256:{}", hex::encode(compressed.hasher.finalize()));
    let size = compressed.count;
    let file = compressed.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, blobs.join(&digest["sha256:".len()..]))?;
    Ok(BuiltLayer { digest, diff_id, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_entries_same_bytes_whatever_the_order_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, b"hello").unwrap();
        let entries = vec![
            LayerEntry { path: "app".into(), kind: LayerKind::Dir, mode: 0o755, uid: 0, gid: 0 },
            LayerEntry { path: "app/f".into(), kind: LayerKind::File(src.clone()), mode: 0o644, uid: 0, gid: 0 },
            LayerEntry { path: "app/l".into(), kind: LayerKind::Symlink("f".into()), mode: 0o777, uid: 0, gid: 0 },
        ];
        let a = write_layer(&dir.path().join("a"), entries.clone(), 0).unwrap();
        let file = std::fs::File::options().write(true).open(&src).unwrap();
        file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(86400)).unwrap();
        let mut reversed = entries;
        reversed.reverse();
        let b = write_layer(&dir.path().join("b"), reversed, 0).unwrap();
        assert_eq!(a, b);
        // Pinned: a change in tar or gzip output (a crate update, another flate2 backend chosen by
        // feature unification) would change every image digest prpod produces. Update on purpose.
        assert_eq!(a.diff_id, "sha256:691f366ee9f1ccc3d84e7385af6d7272285e14c51756fda061e6f8e1c9d8f580");
        assert_eq!(a.digest, "sha256:5c65b5a649ec0fddc7192923c455fe6377aaac3855106b3808175955cd0e2231");
    }

    #[test]
    fn a_file_swapped_for_a_fifo_or_a_link_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        for src in [fifo, link] {
            let entries = vec![LayerEntry {
                path: "app/f".into(),
                kind: LayerKind::File(src.clone()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }];
            assert!(write_layer(&dir.path().join("out"), entries, 0).is_err(), "{}", src.display());
        }
    }
}
