//! The build context: `.dockerignore` and the files a COPY or ADD takes from it.
//!
//! `.dockerignore` follows docker's rules: one pattern per line, `#` comments, `!` re-includes,
//! `*` and `?` stay within a path segment, `**` spans segments, a leading `/` is ignored, a
//! pattern that matches a directory excludes everything under it, and the last pattern that
//! matches a path (or one of its parent directories) decides.

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobMatcher};

/// The `.dockerignore` rules of a context.
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    /// Reads `context/.dockerignore` (none: nothing ignored).
    pub fn load(context: &Path) -> Result<Ignore, String> {
        match crate::input::read_text_file(
            &context.join(".dockerignore"),
            crate::input::MAX_CONFIG_BYTES,
            ".dockerignore",
        ) {
            Ok(text) => Ignore::parse(&text),
            Err(e) if e.is_not_found() => Ok(Ignore::default()),
            Err(e) => Err(format!("cannot read .dockerignore: {}", e.reason())),
        }
    }

    /// Parses `.dockerignore` text.
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = Glob::new(&pattern)
                .and_then(|g| {
                    globset::GlobBuilder::new(g.glob()).literal_separator(true).backslash_escape(true).build()
                })
                .map_err(|e| format!(".dockerignore pattern `{line}`: {e}"))?;
            rules.push((glob.compile_matcher(), negated));
        }
        Ok(Ignore { rules })
    }

    /// Whether `rel` (a `/`-separated path relative to the context) is excluded.
    pub fn excluded(&self, rel: &str) -> bool {
        let mut excluded = false;
        for (glob, negated) in &self.rules {
            // The path itself or any parent directory.
            let mut matched = glob.is_match(rel);
            if !matched {
                let mut prefix = rel;
                while let Some((parent, _)) = prefix.rsplit_once('/') {
                    if glob.is_match(parent) {
                        matched = true;
                        break;
                    }
                    prefix = parent;
                }
            }
            if matched {
                excluded = !negated;
            }
        }
        excluded
    }
}

/// `./a//b/../c/` → `a/c` (lexically, as Go's `filepath.Clean`; a leading `/` dropped).
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

/// One file-system entry of the context (sorted by path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the context, `/`-separated.
    pub rel: String,
    /// Absolute path on disk.
    pub path: PathBuf,
    /// What it is.
    pub kind: Kind,
}

/// Kinds of entries a layer can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file; `executable` when any execute bit is set.
    File {
        /// Any execute bit set.
        executable: bool,
        /// Size.
        size: u64,
    },
    /// A symbolic link to this target.
    Symlink(PathBuf),
}

/// Most entries a build context may hold (after `.dockerignore`).
pub const MAX_CONTEXT_ENTRIES: usize = 200_000;
/// Most bytes of regular files a build context may hold (after `.dockerignore`).
pub const MAX_CONTEXT_BYTES: u64 = 4 << 30;

/// Every entry of the context not excluded by `ignore`, sorted by path. Special files (sockets,
/// devices, fifos) are an error: they have no place in an image layer.
pub fn walk(context: &Path, ignore: &Ignore) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = context.join(&rel_dir);
        let read = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for item in read {
            let item = item.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let name = item.file_name();
            let name =
                name.to_str().ok_or_else(|| format!("{} has a name that is not UTF-8", item.path().display()))?;
            let rel_path = rel_dir.join(name);
            let rel = rel_path.to_str().expect("utf-8 components").replace('\\', "/");
            let meta = std::fs::symlink_metadata(item.path())
                .map_err(|e| format!("cannot stat {}: {e}", item.path().display()))?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                // Walk into excluded directories too: a `!` rule may re-include something inside.
                stack.push(rel_path.clone());
                Kind::Dir
            } else if ft.is_file() {
                use std::os::unix::fs::PermissionsExt;
                Kind::File { executable: meta.permissions().mode() & 0o111 != 0, size: meta.len() }
            } else if ft.is_symlink() {
                Kind::Symlink(std::fs::read_link(item.path()).map_err(|e| format!("cannot read link {rel}: {e}"))?)
            } else {
                if ignore.excluded(&rel) {
                    continue;
                }
                return Err(format!("{rel} is a special file (socket, device or fifo); exclude it in .dockerignore"));
            };
            if ignore.excluded(&rel) {
                continue;
            }
            if let Kind::File { size, .. } = &kind {
                bytes += size;
            }
            out.push(Entry { rel, path: item.path(), kind });
            // The pull request decides what the context holds: bound it, as every other input.
            if out.len() > MAX_CONTEXT_ENTRIES || bytes > MAX_CONTEXT_BYTES {
                return Err(format!(
                    "the build context holds more than {MAX_CONTEXT_ENTRIES} entries or {} GiB of files; \
                     exclude what the image does not need in .dockerignore",
                    MAX_CONTEXT_BYTES >> 30
                ));
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Resolves `dest` (a COPY destination) against the working directory to an absolute,
/// cleaned path inside the image, without the leading `/` (`app/static`). `/` itself is "".
pub fn image_path(workdir: &str, dest: &str) -> String {
    let joined = if dest.starts_with('/') { dest.to_string() } else { format!("{workdir}/{dest}") };
    clean(&joined)
}

/// Whether `rel` escapes the context (`../x`).
pub fn escapes(rel: &str) -> bool {
    let mut depth: i32 = 0;
    for c in Path::new(rel).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let ig = Ignore::parse("# c\n.git\n*.log\n/build\nnode_modules\n!node_modules/keep\n**/*.tmp\n").unwrap();
        assert!(ig.excluded(".git"));
        assert!(ig.excluded(".git/objects/ab"));
        assert!(ig.excluded("x.log"));
        assert!(!ig.excluded("sub/x.log"), "* does not cross /");
        assert!(ig.excluded("build/out"));
        assert!(ig.excluded("node_modules/a/b"));
        assert!(!ig.excluded("node_modules/keep"));
        assert!(!ig.excluded("node_modules/keep/inner"));
        assert!(ig.excluded("a/b/c.tmp"));
        assert!(!ig.excluded("src/main.rs"));
    }

    #[test]
    fn paths() {
        assert_eq!(clean("./a//b/../c/"), "a/c");
        assert_eq!(image_path("/app", "static/"), "app/static");
        assert_eq!(image_path("/app", "/etc/x"), "etc/x");
        assert_eq!(image_path("/", "."), "");
        assert!(escapes("../x"));
        assert!(escapes("a/../../x"));
        assert!(!escapes("a/../x"));
    }
}
