//! A repository chart is the pull request's files: before Helm reads it, it is copied into a
//! private directory, and nothing outside the chart comes along.
//!
//! Helm's loader follows symlinks, so a chart with `leak.txt -> /proc/self/environ` and
//! `{{ .Files.Get "leak.txt" }}` in a template would put Helm's environment into the manifests.
//! The copy follows a symlink only when it points to a regular file inside the chart directory
//! (copied as that file); every other symlink (leaving the chart, dangling, to a directory) and
//! every special file (FIFO, socket, device) is refused with an error naming it. The copy is
//! bounded ([`MAX_ENTRIES`], [`MAX_FILE_BYTES`], [`MAX_TOTAL_BYTES`], [`MAX_DEPTH`]).

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ChartError;

/// Most files and directories a repository chart may hold.
pub const MAX_ENTRIES: usize = 4096;
/// Largest file of a repository chart (Helm's own limit for a file of a chart archive).
pub const MAX_FILE_BYTES: u64 = 5 * 1024 * 1024;
/// Most bytes a repository chart may hold in all.
pub const MAX_TOTAL_BYTES: u64 = 50 * 1024 * 1024;
/// Deepest directory nesting of a repository chart.
pub const MAX_DEPTH: usize = 32;

/// Copies the chart directory `chart` (which must lie inside `repository`, symlinks resolved)
/// into `dest` (an empty private directory).
pub fn copy_chart(chart: &Path, repository: &Path, dest: &Path) -> Result<(), ChartError> {
    let refuse = |path: &Path, why: String| ChartError::Confined { path: path.to_path_buf(), why };
    let root = repository
        .canonicalize()
        .map_err(|e| ChartError::NoChart { path: repository.to_path_buf(), why: e.to_string() })?;
    let top =
        chart.canonicalize().map_err(|e| ChartError::NoChart { path: chart.to_path_buf(), why: e.to_string() })?;
    if !top.starts_with(&root) {
        return Err(refuse(
            chart,
            format!(
                "resolves to {}, outside the repository (through a symlink); name a directory of the \
                 repository itself in `[deploy] chart`",
                top.display()
            ),
        ));
    }
    if !top.is_dir() {
        return Err(ChartError::NoChart { path: chart.to_path_buf(), why: "it is not a directory".into() });
    }
    let mut copy = Copy { top: &top, shown: chart, dest, entries: 0, bytes: 0 };
    copy.dir(Path::new(""), 0)
}

struct Copy<'a> {
    /// The chart directory, symlinks resolved.
    top: &'a Path,
    /// The chart directory as configured (for messages).
    shown: &'a Path,
    dest: &'a Path,
    entries: usize,
    bytes: u64,
}

impl Copy<'_> {
    fn refuse(&self, rel: &Path, why: String) -> ChartError {
        ChartError::Confined { path: self.shown.join(rel), why }
    }

    fn dir(&mut self, rel: &Path, depth: usize) -> Result<(), ChartError> {
        if depth > MAX_DEPTH {
            return Err(self.refuse(rel, format!("nests directories more than {MAX_DEPTH} deep")));
        }
        let src = self.top.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&src)
            .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>())
            .map_err(|e| self.refuse(rel, format!("cannot be listed ({e})")))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(self.refuse(
                    Path::new(""),
                    format!("holds more than {MAX_ENTRIES} files and directories; prpod copies no more"),
                ));
            }
            let path = self.top.join(&rel);
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| self.refuse(&rel, format!("cannot be examined ({e})")))?;
            let out = self.dest.join(&rel);
            let ft = meta.file_type();
            if ft.is_dir() {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&out)
                    .map_err(|source| ChartError::Write { path: out.clone(), source })?;
                self.dir(&rel, depth + 1)?;
            } else if ft.is_file() {
                self.file(&rel, &path, &out)?;
            } else if ft.is_symlink() {
                let target = self.inside_target(&rel, &path)?;
                self.file(&rel, &target, &out)?;
            } else {
                return Err(self.refuse(
                    &rel,
                    "is not a regular file, directory or symlink (a FIFO, socket or device); remove it from the \
                     chart"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Where the symlink at `path` leads, when that is a regular file inside the chart.
    fn inside_target(&self, rel: &Path, path: &Path) -> Result<PathBuf, ChartError> {
        let link = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
        let target = path.canonicalize().map_err(|e| {
            self.refuse(
                rel,
                format!("is a symlink to {link}, which cannot be followed ({e}); replace it with the file"),
            )
        })?;
        if !target.starts_with(self.top) {
            return Err(self.refuse(
                rel,
                format!(
                    "is a symlink to {link}, outside the chart directory: prpod does not follow it (Helm would read \
                     that file into the chart); replace the link with the file itself"
                ),
            ));
        }
        if !target.is_file() {
            return Err(self.refuse(
                rel,
                format!(
                    "is a symlink to {link}, which is not a regular file: prpod follows symlinks only to files \
                     inside the chart; replace the link with what it points to"
                ),
            ));
        }
        Ok(target)
    }

    /// Copies the regular file at `from` (no symlink in its path) to `out`, within the bounds.
    fn file(&mut self, rel: &Path, from: &Path, out: &Path) -> Result<(), ChartError> {
        let bytes = read_bounded(from).map_err(|why| self.refuse(rel, why))?;
        self.bytes += bytes.len() as u64;
        if self.bytes > MAX_TOTAL_BYTES {
            return Err(self.refuse(
                Path::new(""),
                format!("holds more than {} MiB; prpod copies no more", MAX_TOTAL_BYTES >> 20),
            ));
        }
        crate::clients::helm::write_private(out, &bytes)
            .map_err(|source| ChartError::Write { path: out.to_path_buf(), source })
    }
}

/// The bytes of the regular file `from`, at most [`MAX_FILE_BYTES`].
fn read_bounded(from: &Path) -> Result<Vec<u8>, String> {
    // O_NOFOLLOW: `from` was checked to be a regular file or a link's resolved target, and a
    // symlink put in its place since must not be followed; O_NONBLOCK: nor may a FIFO hang us.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(from)
        .map_err(|e| format!("cannot be opened ({e})"))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err("is not a regular file".into());
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot be read ({e})"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("is larger than {} MiB, the most prpod copies of one chart file", MAX_FILE_BYTES >> 20));
    }
    Ok(bytes)
}

/// Copies the values file `file` (`[deploy] values`), which must resolve, symlinks followed, to
/// a regular file inside `repository`, to `out` (mode 0600).
pub fn copy_values_file(file: &Path, repository: &Path, out: &Path) -> Result<(), ChartError> {
    let refuse = |why: String| ChartError::Values { path: file.to_path_buf(), why };
    let root =
        repository.canonicalize().map_err(|e| refuse(format!("its repository {}: {e}", repository.display())))?;
    let real = file.canonicalize().map_err(|e| refuse(e.to_string()))?;
    if !real.starts_with(&root) {
        return Err(refuse(format!(
            "it resolves to {}, outside the repository (through a symlink): prpod does not follow it; put the \
             values themselves in the repository",
            real.display()
        )));
    }
    let bytes = read_bounded(&real).map_err(|why| refuse(format!("it {why}")))?;
    crate::clients::helm::write_private(out, &bytes)
        .map_err(|source| ChartError::Write { path: out.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn repo() -> (tempfile::TempDir, PathBuf) {
        let repo = tempfile::tempdir().unwrap();
        let chart = repo.path().join("deploy/chart");
        std::fs::create_dir_all(chart.join("templates")).unwrap();
        std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: c\nversion: 0.1.0\n").unwrap();
        std::fs::write(chart.join("templates/cm.yaml"), "kind: ConfigMap\n").unwrap();
        (repo, chart)
    }

    fn copy(repo: &Path, chart: &Path) -> Result<tempfile::TempDir, ChartError> {
        let dest = tempfile::tempdir().unwrap();
        copy_chart(chart, repo, dest.path()).map(|()| dest)
    }

    #[test]
    fn a_plain_chart_is_copied_privately() {
        let (repo, chart) = repo();
        let dest = copy(repo.path(), &chart).unwrap();
        assert_eq!(std::fs::read_to_string(dest.path().join("templates/cm.yaml")).unwrap(), "kind: ConfigMap\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dest.path().join("Chart.yaml")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn symlinks_leaving_the_chart_are_refused_by_name() {
        let (repo, chart) = repo();
        symlink("/proc/self/environ", chart.join("leak.txt")).unwrap();
        let err = copy(repo.path(), &chart).unwrap_err().to_string();
        assert!(err.contains("deploy/chart/leak.txt") && err.contains("/proc/self/environ"), "{err}");
        std::fs::remove_file(chart.join("leak.txt")).unwrap();

        // Inside the repository but outside the chart: refused too.
        std::fs::write(repo.path().join("secret.env"), "TOKEN=x").unwrap();
        symlink("../../../secret.env", chart.join("templates/env.txt")).unwrap();
        let err = copy(repo.path(), &chart).unwrap_err().to_string();
        assert!(err.contains("templates/env.txt") && err.contains("outside the chart"), "{err}");
        std::fs::remove_file(chart.join("templates/env.txt")).unwrap();

        // A directory symlink, even inside, and a dangling one.
        symlink("templates", chart.join("more")).unwrap();
        assert!(copy(repo.path(), &chart).unwrap_err().to_string().contains("not a regular file"));
        std::fs::remove_file(chart.join("more")).unwrap();
        symlink("nowhere", chart.join("gone")).unwrap();
        assert!(copy(repo.path(), &chart).unwrap_err().to_string().contains("deploy/chart/gone"));
    }

    #[test]
    fn a_symlink_to_a_file_inside_the_chart_is_copied_as_the_file() {
        let (repo, chart) = repo();
        std::fs::write(chart.join("real.txt"), "hello").unwrap();
        symlink("../real.txt", chart.join("templates/alias.txt")).unwrap();
        let dest = copy(repo.path(), &chart).unwrap();
        let alias = dest.path().join("templates/alias.txt");
        assert!(!std::fs::symlink_metadata(&alias).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(alias).unwrap(), "hello");
    }

    #[test]
    fn a_chart_directory_reached_through_a_symlink_must_stay_in_the_repository() {
        let (repo, _) = repo();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("Chart.yaml"), "name: x\n").unwrap();
        symlink(outside.path(), repo.path().join("evil")).unwrap();
        let err = copy(repo.path(), &repo.path().join("evil")).unwrap_err().to_string();
        assert!(err.contains("outside the repository"), "{err}");
        // Inside the repository, a symlinked chart directory is fine.
        symlink("deploy/chart", repo.path().join("chart")).unwrap();
        copy(repo.path(), &repo.path().join("chart")).unwrap();
    }

    #[test]
    fn values_files_must_stay_in_the_repository() {
        let (repo, _) = repo();
        let out = tempfile::tempdir().unwrap();
        std::fs::write(repo.path().join("values.yaml"), "a: 1\n").unwrap();
        copy_values_file(&repo.path().join("values.yaml"), repo.path(), &out.path().join("v")).unwrap();
        assert_eq!(std::fs::read_to_string(out.path().join("v")).unwrap(), "a: 1\n");
        symlink("/etc/hostname", repo.path().join("leak.yaml")).unwrap();
        let err = copy_values_file(&repo.path().join("leak.yaml"), repo.path(), &out.path().join("w"));
        let err = err.unwrap_err().to_string();
        assert!(err.contains("leak.yaml") && err.contains("outside the repository"), "{err}");
    }

    #[test]
    fn special_files_and_oversized_charts_are_refused() {
        let (repo, chart) = repo();
        let fifo = chart.join("pipe");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(copy(repo.path(), &chart).unwrap_err().to_string().contains("FIFO"));
        std::fs::remove_file(&fifo).unwrap();
        std::fs::write(chart.join("big.bin"), vec![0u8; MAX_FILE_BYTES as usize + 1]).unwrap();
        let err = copy(repo.path(), &chart).unwrap_err().to_string();
        assert!(err.contains("big.bin") && err.contains("MiB"), "{err}");
        std::fs::remove_file(chart.join("big.bin")).unwrap();
        for i in 0..MAX_ENTRIES {
            std::fs::write(chart.join(format!("f{i}")), "").unwrap();
        }
        assert!(copy(repo.path(), &chart).unwrap_err().to_string().contains("more than 4096"));
    }
}
