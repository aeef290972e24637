//! A generated chart on its way to disk: its paths are checked before anything is written, and
//! it is written with cap-std into a fresh temporary directory that is renamed into place.
//!
//! The chart generator is someone else's code and it names the paths. Checked up front (so a
//! bad path is the plugin's error, exit 3, not a half-written directory): relative, inside the
//! chart, no control characters, no name longer than file systems allow, no file that is also a
//! directory, no duplicates, `Chart.yaml` at the root. Written through a `cap_std::fs::Dir`, so
//! no path can resolve outside the temporary directory whatever it contains, and renamed over
//! the (empty or missing) output directory at the end, so a failure leaves no half chart and a
//! symlink planted in the output directory during the call makes the rename fail instead of
//! being followed. The parent of the output directory is opened once, before the plugin runs,
//! and refused when others can write it; from then on only directory handles are used
//! ([`OutDir`]).

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, DirBuilder};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::validate;
use crate::model::ChartFile;

/// Longest file name (one path component) in bytes: `NAME_MAX` on Linux file systems.
pub const MAX_NAME: usize = 255;
/// Longest chart file path in bytes.
pub const MAX_PATH: usize = 1024;

/// Checks a generated chart's paths; on failure, the offending path and the rule it breaks.
pub fn check_paths(files: &[ChartFile]) -> Result<(), (String, String)> {
    let mut seen = HashSet::new();
    for f in files {
        let p = f.path.as_str();
        let bad = |rule: &str| Err((p.to_string(), rule.to_string()));
        if !validate::is_safe_relative_path(p) {
            return bad("paths must be relative, '/'-separated, without '.' or '..' parts");
        }
        if p.chars().any(crate::untrusted::is_dangerous) {
            return bad("paths must not contain control characters");
        }
        if p.len() > MAX_PATH {
            return bad("a path may be at most 1024 bytes long");
        }
        if p.split('/').any(|part| part.len() > MAX_NAME) {
            return bad("each file or directory name may be at most 255 bytes long");
        }
        if !seen.insert(p) {
            return bad("each path may appear only once");
        }
    }
    for p in &seen {
        // Every proper prefix of a path is a directory; none of them may also be a file.
        let mut prefix = *p;
        while let Some((dir, _)) = prefix.rsplit_once('/') {
            if seen.contains(dir) {
                return Err((dir.to_string(), format!("it is a file, and also a directory holding {p}")));
            }
            prefix = dir;
        }
    }
    if !seen.contains("Chart.yaml") {
        return Err(("(no Chart.yaml)".into(), "a chart must contain Chart.yaml at its root".into()));
    }
    Ok(())
}

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteChartError {
    /// The output directory exists and is not an empty directory.
    #[error("refusing to write the chart into {0}: it exists and is not an empty directory; pick a new one")]
    NotEmpty(PathBuf),
    /// The directory that holds the output directory is not safe to work in.
    #[error("refusing to write the chart into {out}: its parent directory {why}; pick a directory only you can write")]
    UnsafeParent {
        /// The output directory.
        out: PathBuf,
        /// What is wrong with its parent.
        why: String,
    },
    /// Writing failed.
    #[error("failed to write the chart into {path}: {source}")]
    Io {
        /// The output directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Where a chart goes: the output directory's parent, opened once, and the output's name in
/// it. Everything after [`OutDir::open`] goes through directory handles (`openat`, `mkdirat`,
/// `fchmod`, `renameat`), never through a path again, so swapping the parent or the temporary
/// directory for a symlink meanwhile cannot redirect a write or a `chmod`.
pub struct OutDir {
    out: PathBuf,
    parent: OwnedFd,
    name: OsString,
}

impl OutDir {
    /// Opens `out`'s parent and checks it, and checks that `out` is missing or an empty
    /// directory (nothing of the user's is ever overwritten; a symlink is refused). Call it
    /// before generating, so a bad `--out` fails before the plugin runs;
    /// [`OutDir::write`] checks `out` again at the end.
    ///
    /// A parent that others can write (group or world, without the sticky bit) or that another
    /// user owns is refused: whoever can write there can rename and replace entries in it.
    pub fn open(out: &Path) -> Result<OutDir, WriteChartError> {
        let io = |source| WriteChartError::Io { path: out.to_path_buf(), source };
        let name = match out.components().next_back() {
            Some(Component::Normal(n)) => n.to_os_string(),
            _ => {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "give the path of a new directory (not `.`, `..` or `/`)",
                )));
            }
        };
        let parent_path = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent = rustix::fs::open(parent_path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io(e.into()))?;
        let st = rustix::fs::fstat(&parent).map_err(|e| io(e.into()))?;
        let mode = st.st_mode & 0o7777;
        let me = rustix::process::geteuid().as_raw();
        let unsafe_parent = |why: String| WriteChartError::UnsafeParent { out: out.to_path_buf(), why };
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(unsafe_parent(format!(
                "{} is writable by {} and not sticky (mode {mode:o}), so another user could swap what prpod \
                 writes there for a symlink",
                parent_path.display(),
                if mode & 0o002 != 0 { "everyone" } else { "its group" },
            )));
        }
        if st.st_uid != me && st.st_uid != 0 {
            return Err(unsafe_parent(format!(
                "{} is owned by uid {}, not by you (uid {me}) or root",
                parent_path.display(),
                st.st_uid
            )));
        }
        let dir = OutDir { out: out.to_path_buf(), parent, name };
        dir.check_empty()?;
        Ok(dir)
    }

    fn io(&self, source: std::io::Error) -> WriteChartError {
        WriteChartError::Io { path: self.out.clone(), source }
    }

    /// `out` is missing or an empty directory (not a symlink to one).
    fn check_empty(&self) -> Result<(), WriteChartError> {
        match rustix::fs::statat(&self.parent, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.io(e.into())),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let fd = rustix::fs::openat(
                    &self.parent,
                    &self.name,
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io(e.into()))?;
                let dir = Dir::from_std_file(std::fs::File::from(fd));
                match dir.entries().map_err(|e| self.io(e))?.next() {
                    None => Ok(()),
                    Some(_) => Err(WriteChartError::NotEmpty(self.out.clone())),
                }
            }
            Ok(_) => Err(WriteChartError::NotEmpty(self.out.clone())),
        }
    }

    /// Writes `files` (checked with [`check_paths`]) into a fresh private directory beside
    /// `out`, then renames it into place: a failure leaves no half chart, and the temporary
    /// directory is removed.
    pub fn write(&self, files: &[ChartFile]) -> Result<(), WriteChartError> {
        self.check_empty()?;
        let (tmp_name, tmp) = self.make_temp()?;
        let result = self.fill_and_rename(&tmp_name, &tmp, files);
        if result.is_err()
            && self.still_ours(&tmp_name, &tmp)
            && let Ok(parent) = rustix::io::dup(&self.parent)
        {
            let _ = Dir::from_std_file(std::fs::File::from(parent)).remove_dir_all(&tmp_name);
        }
        result
    }

    /// A new directory (mode 0700, random name) in the parent, and a handle on it.
    fn make_temp(&self) -> Result<(OsString, OwnedFd), WriteChartError> {
        use std::hash::{BuildHasher, Hasher};
        let mut last = None;
        for attempt in 0..16u32 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(attempt);
            h.write_u32(std::process::id());
            let name = OsString::from(format!(".prpod-chart-{:016x}", h.finish()));
            match rustix::fs::mkdirat(&self.parent, &name, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {
                    last = Some(rustix::io::Errno::EXIST);
                    continue;
                }
                Err(e) => return Err(self.io(e.into())),
            }
            let fd = rustix::fs::openat(
                &self.parent,
                &name,
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.io(e.into()))?;
            return Ok((name, fd));
        }
        Err(self.io(last.unwrap_or(rustix::io::Errno::EXIST).into()))
    }

    /// Whether `name` in the parent is still the directory `tmp` is a handle on.
    fn still_ours(&self, name: &OsString, tmp: &OwnedFd) -> bool {
        match (rustix::fs::statat(&self.parent, name, AtFlags::SYMLINK_NOFOLLOW), rustix::fs::fstat(tmp)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    fn fill_and_rename(&self, tmp_name: &OsString, tmp: &OwnedFd, files: &[ChartFile]) -> Result<(), WriteChartError> {
        let dir = Dir::from_std_file(std::fs::File::from(rustix::io::dup(tmp).map_err(|e| self.io(e.into()))?));
        for f in files {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                let mut builder = DirBuilder::new();
                builder.recursive(true);
                dir.create_dir_with(parent, &builder).map_err(|e| self.io(e))?;
            }
            dir.write(&f.path, &f.content).map_err(|e| self.io(e))?;
        }
        rustix::fs::fchmod(tmp, Mode::from_raw_mode(0o755)).map_err(|e| self.io(e.into()))?;
        if !self.still_ours(tmp_name, tmp) {
            return Err(self.io(std::io::Error::other(format!(
                "the temporary directory {} was replaced while the chart was written; nothing was moved into place",
                Path::new(tmp_name).display()
            ))));
        }
        // rename(2) replaces `out` only when it is missing or an empty directory; anything planted
        // there meanwhile (a file, a symlink) makes it fail.
        rustix::fs::renameat(&self.parent, tmp_name, &self.parent, &self.name).map_err(|e| match e {
            rustix::io::Errno::NOTEMPTY | rustix::io::Errno::NOTDIR | rustix::io::Errno::EXIST => {
                WriteChartError::NotEmpty(self.out.clone())
            }
            e => self.io(e.into()),
        })?;
        // The name may have been swapped between the check above and the rename: then what was
        // moved into place is not ours. A symlink there is removed (unlinking a link never
        // touches its target); anything else is left for the user to look at.
        let name = OsString::from(&self.name);
        if !self.still_ours(&name, tmp) {
            let planted = rustix::fs::statat(&self.parent, &self.name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
            if planted {
                let _ = rustix::fs::unlinkat(&self.parent, &self.name, AtFlags::empty());
            }
            return Err(self.io(std::io::Error::other(
                "the temporary directory was replaced while it was renamed into place; the chart was not written",
            )));
        }
        Ok(())
    }
}

/// Refuses an output directory that exists and is not empty (or is not a directory, or is a
/// symlink), or whose parent is not safe ([`OutDir::open`]).
pub fn check_out_dir(out: &Path) -> Result<(), WriteChartError> {
    OutDir::open(out).map(drop)
}

/// Writes `files` (checked with [`check_paths`]) as the directory `out`, which must be missing
/// or an empty directory ([`OutDir::open`] then [`OutDir::write`]).
pub fn write_chart(out: &Path, files: &[ChartFile]) -> Result<(), WriteChartError> {
    OutDir::open(out)?.write(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(paths: &[&str]) -> Vec<ChartFile> {
        paths.iter().map(|p| ChartFile { path: p.to_string(), content: b"x".to_vec() }).collect()
    }

    #[test]
    fn paths_are_checked_before_writing() {
        assert!(check_paths(&files(&["Chart.yaml", "templates/a.yaml", "values.yaml"])).is_ok());
        let rule = |p: &[&str]| check_paths(&files(p)).unwrap_err();
        assert!(rule(&["Chart.yaml", "templates", "templates/a.yaml"]).1.contains("also a directory"));
        assert!(rule(&["Chart.yaml", "Chart.yaml/x"]).1.contains("also a directory"));
        assert!(rule(&["Chart.yaml", &"a".repeat(300)]).1.contains("255 bytes"));
        assert!(rule(&["Chart.yaml", "templates/\x1b[2J.yaml"]).1.contains("control"));
        assert!(rule(&["Chart.yaml", "../x"]).1.contains("relative"));
        assert!(rule(&["Chart.yaml", "a", "a"]).1.contains("once"));
        assert!(rule(&["values.yaml"]).1.contains("Chart.yaml"));
    }

    #[test]
    fn writes_into_a_new_or_empty_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("chart");
        write_chart(&out, &files(&["Chart.yaml", "templates/a.yaml"])).unwrap();
        assert_eq!(std::fs::read(out.join("templates/a.yaml")).unwrap(), b"x");
        let e = write_chart(&out, &files(&["Chart.yaml"])).unwrap_err();
        assert!(matches!(e, WriteChartError::NotEmpty(_)), "{e}");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_chart(&empty, &files(&["Chart.yaml"])).unwrap();
        assert!(empty.join("Chart.yaml").is_file());
        // Nothing but the two charts is left beside them (no temporary directories).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_symlink_as_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let out = dir.path().join("out");
        std::os::unix::fs::symlink(&target, &out).unwrap();
        assert!(matches!(write_chart(&out, &files(&["Chart.yaml"])), Err(WriteChartError::NotEmpty(_))));
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    }
}
