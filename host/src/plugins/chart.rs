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
//! being followed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, DirBuilder};

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

/// Refuses an output directory that exists and is not empty (or is not a directory, or is a
/// symlink): nothing of the user's is ever overwritten. Call it before generating, so a bad
/// `--out` fails before the plugin runs; [`write_chart`] checks again at the end.
pub fn check_out_dir(out: &Path) -> Result<(), WriteChartError> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WriteChartError::Io { path: out.to_path_buf(), source }),
        Ok(m) if m.is_dir() => match std::fs::read_dir(out).map(|mut d| d.next().is_none()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(WriteChartError::NotEmpty(out.to_path_buf())),
            Err(source) => Err(WriteChartError::Io { path: out.to_path_buf(), source }),
        },
        Ok(_) => Err(WriteChartError::NotEmpty(out.to_path_buf())),
    }
}

/// Writes `files` (checked with [`check_paths`]) as the directory `out`, which must be missing
/// or an empty directory: into a temporary directory beside it, then renamed into place.
pub fn write_chart(out: &Path, files: &[ChartFile]) -> Result<(), WriteChartError> {
    check_out_dir(out)?;
    let io = |source| WriteChartError::Io { path: out.to_path_buf(), source };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new().prefix(".prpod-chart-").tempdir_in(parent).map_err(io)?;
    let dir = Dir::open_ambient_dir(tmp.path(), ambient_authority()).map_err(io)?;
    for f in files {
        if let Some((parent, _)) = f.path.rsplit_once('/') {
            let mut builder = DirBuilder::new();
            builder.recursive(true);
            dir.create_dir_with(parent, &builder).map_err(io)?;
        }
        dir.write(&f.path, &f.content).map_err(io)?;
    }
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).map_err(io)?;
    // rename(2) replaces `out` only when it is missing or an empty directory; anything planted
    // there meanwhile (a file, a symlink) makes it fail, and the temporary directory is removed.
    std::fs::rename(tmp.path(), out).map_err(|e| match e.raw_os_error() {
        Some(code)
            if code == rustix::io::Errno::NOTEMPTY.raw_os_error()
                || code == rustix::io::Errno::NOTDIR.raw_os_error()
                || code == rustix::io::Errno::EXIST.raw_os_error() =>
        {
            WriteChartError::NotEmpty(out.to_path_buf())
        }
        _ => io(e),
    })?;
    let _ = tmp.keep();
    Ok(())
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
