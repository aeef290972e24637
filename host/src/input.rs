//! Reading files the user names (plugins, JSON inputs, manifests): regular files only, with a
//! size cap, so `/dev/zero` cannot exhaust memory and a FIFO cannot hang prpod.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest plugin component prpod reads (a Python plugin with its interpreter is ~20 MB).
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// Largest JSON (or YAML) input file prpod reads.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// A file that cannot be read as an input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Not a regular file (a directory, a device such as `/dev/zero`, a FIFO, a socket).
    #[error("failed to read {what} {path}: it is {kind}, not a regular file; give the path of a file")]
    NotRegular {
        /// What the file is for.
        what: String,
        /// The path as given.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// A symlink in the pull request's files, where prpod follows none.
    #[error(
        "failed to read {what} {path}: it is (or lies below) a symlink, which prpod does not follow in the \
         pull request's files; replace the link with the file itself"
    )]
    Symlink {
        /// What the file is for.
        what: String,
        /// The path inside the repository.
        path: PathBuf,
    },
    /// Larger than the cap.
    #[error("failed to read {what} {path}: it is larger than the {max_mib} MiB prpod accepts")]
    TooLarge {
        /// What the file is for.
        what: String,
        /// The path as given.
        path: PathBuf,
        /// The cap in MiB.
        max_mib: u64,
    },
    /// Opening or reading failed.
    #[error("failed to read {what} {path}: {source}")]
    Io {
        /// What the file is for.
        what: String,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl InputError {
    /// Why, without the "failed to read WHAT PATH" prefix (for errors that name the file
    /// their own way).
    pub fn into_io(self) -> std::io::Error {
        match self {
            InputError::Io { source, .. } => source,
            InputError::NotRegular { kind, .. } => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("it is {kind}, not a regular file; give the path of a file"),
            ),
            InputError::Symlink { .. } => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is (or lies below) a symlink, which prpod does not follow in the pull request's files",
            ),
            InputError::TooLarge { max_mib, .. } => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("it is larger than the {max_mib} MiB prpod accepts"),
            ),
        }
    }
}

/// The contents of `path`, which must be a regular file (a symlink to one is fine) of at most
/// `max` bytes. `what` names the input in errors ("PR context", "plugin").
pub fn read_regular_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, InputError> {
    let io = |source| InputError::Io { what: what.to_string(), path: path.to_path_buf(), source };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the
    // type check below then refuses it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io)?;
    read_open_file(file, max, what, path)
}

/// The checks and the bounded read of [`read_regular_file`], on a file already open.
fn read_open_file(mut file: std::fs::File, max: u64, what: &str, path: &Path) -> Result<Vec<u8>, InputError> {
    let io = |source| InputError::Io { what: what.to_string(), path: path.to_path_buf(), source };
    let meta = file.metadata().map_err(io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(InputError::NotRegular { what: what.to_string(), path: path.to_path_buf(), kind });
    }
    let too_large = || InputError::TooLarge { what: what.to_string(), path: path.to_path_buf(), max_mib: max >> 20 };
    if meta.len() > max {
        return Err(too_large());
    }
    // The file may grow while it is read: never read more than the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.by_ref().take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_regular_file`] as UTF-8 text.
pub fn read_text_file(path: &Path, max: u64, what: &str) -> Result<String, InputError> {
    let bytes = read_regular_file(path, max, what)?;
    String::from_utf8(bytes).map_err(|e| InputError::Io {
        what: what.to_string(),
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("it is not UTF-8 text ({e})")),
    })
}

/// The contents of `rel` inside the repository checkout `root`, or `None` when it does not
/// exist. The pull request controls every file below `root`, so no symlink is followed on the way
/// (`rel`'s directories included: each is opened with `O_NOFOLLOW` from its parent's handle), the
/// file must be regular (checked on the handle, opened without blocking) and at most `max` bytes.
/// `root` itself is prpod's own directory and trusted.
pub fn read_repository_file(root: &Path, rel: &Path, max: u64, what: &str) -> Result<Option<Vec<u8>>, InputError> {
    let shown = root.join(rel);
    let fd = match open_in_repository(root, rel, false) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(InputError::Symlink { what: what.to_string(), path: rel.to_path_buf() });
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
            return Err(InputError::Symlink { what: what.to_string(), path: rel.to_path_buf() });
        }
        Err(source) => return Err(InputError::Io { what: what.to_string(), path: shown, source }),
    };
    // Read through the handle already opened, with the same checks as any input file.
    read_open_file(std::fs::File::from(fd), max, what, &shown).map(Some)
}

/// Checks that `rel` inside `root` is a directory reached without following a symlink (the
/// build context root).
pub fn check_repository_dir(root: &Path, rel: &Path, what: &str) -> Result<(), InputError> {
    match open_in_repository(root, rel, true) {
        Ok(_) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
                || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
        {
            Err(InputError::Symlink { what: what.to_string(), path: rel.to_path_buf() })
        }
        Err(source) => Err(InputError::Io { what: what.to_string(), path: root.join(rel), source }),
    }
}

/// Opens `rel` below `root` one component at a time, never following a symlink.
fn open_in_repository(root: &Path, rel: &Path, dir: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    use std::path::Component;
    let mut current = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let parts: Vec<_> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n.to_owned()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path must be relative to the repository, without `..`",
            )),
        })
        .collect::<Result<_, _>>()?;
    for (i, name) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let flags = if last && !dir {
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
        } else {
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC
        };
        current = rustix::fs::openat(&current, name.as_os_str(), flags, Mode::empty())?;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_refused_at_once() {
        let e = read_regular_file(Path::new("/dev/zero"), MAX_JSON_BYTES, "PR context").unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular_file(dir.path(), MAX_JSON_BYTES, "PR context").unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = read_regular_file(&fifo, MAX_JSON_BYTES, "PR context").unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn size_cap_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.json");
        std::fs::write(&p, vec![b' '; 2 << 20]).unwrap();
        let e = read_regular_file(&p, 1 << 20, "app spec").unwrap_err();
        assert!(e.to_string().contains("larger than the 1 MiB"), "{e}");
        assert_eq!(read_regular_file(&p, 2 << 20, "app spec").unwrap().len(), 2 << 20);
    }
}
