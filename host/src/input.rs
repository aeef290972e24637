//! Reading what prpod did not write itself: files the user names (config, plugins, JSON and
//! YAML inputs, token and password files), the plugin cache's entries and key, and documents
//! other programs hand back (`helm template` output).
//!
//! Every such file goes through [`read_bounded`]: opened `O_NONBLOCK` (opening a FIFO for
//! reading would otherwise wait for a writer forever), checked to be a regular file *on the
//! handle* (`fstat`, so a path swapped after a check cannot matter), checked for size before a
//! byte is read (a sparse 1 TiB file is refused, not read), and read with `take(max + 1)` (a
//! file growing while it is read never costs more than the cap). Every YAML or JSON document
//! is checked by [`check_yaml_nesting`] / [`check_json_nesting`] before a parser sees it: a
//! linear scan bounds nesting depth, which parsers pay for far more than linearly.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest plugin component prpod reads (a Python plugin with its interpreter is ~20 MB).
pub const MAX_PLUGIN_BYTES: u64 = 256 << 20;
/// Largest JSON (or YAML) input file prpod reads, and largest rendered manifests it parses.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// Largest `prpod.toml` (and other small text inputs: a Dockerfile, `.dockerignore`, a docker
/// `config.json`, a CA bundle).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest token, password or key file (a token is a few hundred bytes; a JWT a few KiB).
pub const MAX_SECRET_BYTES: u64 = 64 << 10;
/// Deepest nesting of collections a YAML or JSON document may have. Kubernetes objects, CRD
/// schemas included, stay far below it; the YAML parser's own limit (128) is above it, so
/// nothing refused here would have parsed.
pub const MAX_NESTING: usize = 100;

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
    /// Larger than the cap.
    #[error("failed to read {what} {path}: it is larger than the {max} prpod accepts")]
    TooLarge {
        /// What the file is for.
        what: String,
        /// The path as given.
        path: PathBuf,
        /// The cap, for people ("64 MiB").
        max: String,
    },
    /// The caller's check on the open file (owner, mode) refused it.
    #[error("failed to read {what} {path}: {why}")]
    Refused {
        /// What the file is for.
        what: String,
        /// The path as given.
        path: PathBuf,
        /// Why.
        why: String,
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
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other.reason()),
        }
    }

    /// Why, without the "failed to read WHAT PATH" prefix.
    pub fn reason(&self) -> String {
        match self {
            InputError::NotRegular { kind, .. } => format!("it is {kind}, not a regular file; give the path of a file"),
            InputError::TooLarge { max, .. } => format!("it is larger than the {max} prpod accepts"),
            InputError::Refused { why, .. } => why.clone(),
            InputError::Io { source, .. } => source.to_string(),
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, InputError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A size for people: "64 MiB", "4 KiB", "100 bytes".
fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// How [`read_bounded`] opens a file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open {
    /// Refuse a symlink at the path itself (`O_NOFOLLOW`), for files in directories prpod owns
    /// (cache entries, the cache key), where a symlink can only have been planted.
    pub no_follow: bool,
}

/// The one way prpod reads a file it did not just write: the contents of `path`, which must be
/// a regular file of at most `max` bytes (a symlink to one is fine unless `open.no_follow`).
/// `what` names the input in errors ("PR context", "plugin"). `check` sees the open file's
/// metadata (from `fstat` on the handle) before anything is read, and may refuse it (an
/// owner or mode the caller does not trust).
pub fn read_bounded(
    path: &Path,
    max: u64,
    what: &str,
    open: Open,
    check: impl FnOnce(&std::fs::Metadata) -> Result<(), String>,
) -> Result<Vec<u8>, InputError> {
    let (mut file, len) = open_bounded(path, max, what, open, check)?;
    let io = |source| InputError::Io { what: what.to_string(), path: path.to_path_buf(), source };
    // The file may grow while it is read: never read more than the cap.
    let mut bytes = Vec::with_capacity(len as usize);
    file.by_ref().take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(InputError::TooLarge { what: what.to_string(), path: path.to_path_buf(), max: human(max) });
    }
    Ok(bytes)
}

/// Opens `path` as [`read_bounded`] does and checks it, reading nothing; returns the file and
/// its size.
fn open_bounded(
    path: &Path,
    max: u64,
    what: &str,
    open: Open,
    check: impl FnOnce(&std::fs::Metadata) -> Result<(), String>,
) -> Result<(std::fs::File, u64), InputError> {
    let io = |source| InputError::Io { what: what.to_string(), path: path.to_path_buf(), source };
    let mut flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    if open.no_follow {
        flags |= rustix::fs::OFlags::NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path).map_err(|e| {
        if open.no_follow && e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            InputError::Refused {
                what: what.to_string(),
                path: path.to_path_buf(),
                why: "it is a symlink, which prpod never follows here".into(),
            }
        } else {
            io(e)
        }
    })?;
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
    check(&meta).map_err(|why| InputError::Refused { what: what.to_string(), path: path.to_path_buf(), why })?;
    // The apparent size, before a byte is read: a sparse file of 1 TiB costs nothing on disk
    // and would cost 1 TiB of memory.
    if meta.len() > max {
        return Err(InputError::TooLarge { what: what.to_string(), path: path.to_path_buf(), max: human(max) });
    }
    Ok((file, meta.len()))
}

/// [`read_bounded`] with no extra check, following symlinks: for files the user names.
pub fn read_regular_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, InputError> {
    read_bounded(path, max, what, Open::default(), |_| Ok(()))
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

/// Checks, without reading it, that `path` is a regular file of at most `max` bytes: for files
/// prpod hands to another program (Helm's values files), so that program is never given a FIFO
/// or a device.
pub fn check_regular_file(path: &Path, max: u64, what: &str) -> Result<(), InputError> {
    open_bounded(path, max, what, Open::default(), |_| Ok(())).map(drop)
}

/// A document refused before it is parsed.
#[derive(Debug, thiserror::Error)]
#[error("refusing to parse {what}: {why}")]
pub struct DocumentError {
    /// What the document is ("manifests rendered by `helm template`", "PR context ctx.json").
    pub what: String,
    /// Why.
    pub why: String,
}

fn too_big(text: &str, what: &str) -> Result<(), DocumentError> {
    if text.len() as u64 > MAX_JSON_BYTES {
        return Err(DocumentError {
            what: what.to_string(),
            why: format!("it is larger than the {} prpod accepts", human(MAX_JSON_BYTES)),
        });
    }
    Ok(())
}

fn too_deep(what: &str, line: usize) -> DocumentError {
    DocumentError {
        what: what.to_string(),
        why: format!(
            "it nests collections more than {MAX_NESTING} levels deep (at line {line}); no Kubernetes object or \
             prpod input needs that, so it is refused before a parser spends its time on it"
        ),
    }
}

/// Refuses a JSON document larger than [`MAX_JSON_BYTES`] or nested deeper than
/// [`MAX_NESTING`], in one pass over its bytes (exact: brackets inside strings do not count).
pub fn check_json_nesting(text: &str, what: &str) -> Result<(), DocumentError> {
    too_big(text, what)?;
    let (mut depth, mut line, mut in_string, mut escaped) = (0usize, 1usize, false, false);
    for b in text.bytes() {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep(what, line));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses a YAML stream larger than [`MAX_JSON_BYTES`] or with collections nested deeper than
/// [`MAX_NESTING`] (block collections by indentation, `- ` and `? ` on one line, and flow
/// collections), in one pass, before the parser runs.
///
/// The scan follows libyaml's tokenizer (the parser behind `serde_yaml`) wherever that decides
/// what counts: quoted scalars (where brackets are text) start only where a token starts, never
/// inside a plain scalar; `#` starts a comment at a token start or after a blank; a block
/// scalar's content is the lines indented at least as far as its first line, and at least one
/// column more than the collection that holds it; a plain scalar continues on lines indented
/// more than that collection; lines end at `\n`, `\r`, NEL, LS and PS. Where the scan and the
/// parser could still disagree, the scan counts a bracket that the parser might take for text,
/// never the other way round, so the depth it finds is never lower than the parser's.
pub fn check_yaml_nesting(text: &str, what: &str) -> Result<(), DocumentError> {
    too_big(text, what)?;
    yaml_depth(text, what, MAX_NESTING).map(drop)
}

/// The deepest nesting the scan finds in `text` (an error past `max`).
fn yaml_depth(text: &str, what: &str, max: usize) -> Result<usize, DocumentError> {
    let mut scan = YamlScan {
        max,
        deepest: 0,
        what,
        line: 0,
        flow: 0,
        block: Vec::new(),
        mode: Mode::Normal,
        plain_continues: None,
        in_plain: false,
        flow_levels: Vec::new(),
        flow_pairs: 0,
        flow_key: None,
    };
    let mut chars: Vec<char> = Vec::new();
    let mut rest = text;
    loop {
        // YAML's line breaks: \n, \r, \r\n, NEL, LS, PS.
        let end = rest.find(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']);
        let line = &rest[..end.unwrap_or(rest.len())];
        chars.clear();
        chars.extend(line.chars());
        scan.line += 1;
        scan.line(&chars)?;
        match end {
            None => return Ok(scan.deepest),
            Some(i) => {
                let brk = rest[i..].chars().next().expect("a break");
                let mut next = i + brk.len_utf8();
                if brk == '\r' && rest[next..].starts_with('\n') {
                    next += 1;
                }
                rest = &rest[next..];
            }
        }
    }
}

/// What a block collection is, for telling an indentless sequence (`key:` then `- a` at the
/// key's column) from the mapping that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Seq,
    Map,
    IndentlessSeq,
}

/// One open flow collection.
#[derive(Debug, Clone, Copy)]
struct FlowLevel {
    seq: bool,
    /// A sequence whose current entry is a single-pair mapping (`[a: b]`).
    pair: bool,
    /// The deepest the scan went in the current entry.
    entry_max: usize,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Normal,
    /// Inside a single- or double-quoted scalar that goes on past the line.
    Quoted(char),
    /// Inside a block scalar (`|`, `>`) held by the collection at column `parent` (-1: none);
    /// `indent` is its content's indentation once known.
    BlockScalar {
        parent: isize,
        indent: Option<usize>,
        max_blank: usize,
    },
}

struct YamlScan<'a> {
    max: usize,
    deepest: usize,
    what: &'a str,
    line: usize,
    flow: usize,
    /// The open block collections: column and kind.
    block: Vec<(usize, Kind)>,
    mode: Mode,
    /// In block context, the last line ended inside a plain scalar held by the collection at
    /// this column: a line indented more continues it.
    plain_continues: Option<isize>,
    /// In flow context, inside a plain scalar (they go on across lines).
    in_plain: bool,
    /// The open flow collections, innermost last.
    flow_levels: Vec<FlowLevel>,
    /// How many of them are sequences whose current entry is a single-pair mapping.
    flow_pairs: usize,
    /// Where the outermost flow collection started, while it is on the line it started on (a
    /// flow collection followed by `: ` on that line is a key).
    flow_key: Option<usize>,
}

fn blank(c: Option<&char>) -> bool {
    matches!(c, None | Some(' ') | Some('\t'))
}

impl YamlScan<'_> {
    fn check(&mut self) -> Result<(), DocumentError> {
        // A flow collection in block context may turn out to be a mapping's key (`[a]: b`):
        // counted inside that mapping from the start.
        let depth = self.depth();
        self.deepest = self.deepest.max(depth);
        if let Some(top) = self.flow_levels.last_mut() {
            top.entry_max = top.entry_max.max(depth);
        }
        if depth > self.max {
            return Err(too_deep(self.what, self.line));
        }
        Ok(())
    }

    /// How deep the scan is now: block collections, flow collections, the single-pair mappings
    /// open in flow sequences, and one more while in a flow collection (it may turn out to be
    /// a mapping's key).
    fn depth(&self) -> usize {
        let flow = self.flow_levels.len();
        self.block.len() + flow + self.flow_pairs + usize::from(flow > 0)
    }

    fn open_flow(&mut self, seq: bool) -> Result<(), DocumentError> {
        self.flow_levels.push(FlowLevel { seq, pair: false, entry_max: 0 });
        self.flow = self.flow_levels.len();
        self.check()
    }

    fn close_flow(&mut self) {
        if let Some(level) = self.flow_levels.pop() {
            self.flow_pairs -= usize::from(level.pair);
            if let Some(parent) = self.flow_levels.last_mut() {
                parent.entry_max = parent.entry_max.max(level.entry_max);
            }
        }
        self.flow = self.flow_levels.len();
    }

    /// `,` in a flow collection: the next entry starts.
    fn flow_entry(&mut self) {
        let depth = self.depth();
        if let Some(top) = self.flow_levels.last_mut() {
            let was = usize::from(top.pair);
            self.flow_pairs -= was;
            top.pair = false;
            top.entry_max = depth - was;
        }
    }

    /// `:` or `?` in a flow collection: in a sequence, the entry is a single-pair mapping, one
    /// level deeper than the sequence, and so is its key, already read.
    fn flow_pair(&mut self) -> Result<(), DocumentError> {
        let Some(top) = self.flow_levels.last_mut() else { return Ok(()) };
        if !top.seq || top.pair {
            return Ok(());
        }
        top.pair = true;
        let key = top.entry_max + 1;
        self.flow_pairs += 1;
        self.deepest = self.deepest.max(key);
        if key > self.max {
            return Err(too_deep(self.what, self.line));
        }
        self.check()
    }

    /// The column of the innermost block collection (libyaml's current indentation).
    fn parent(&self) -> isize {
        self.block.last().map_or(-1, |b| b.0 as isize)
    }

    /// A block collection starts at `col` (`- `, `? `, or a key) unless it continues the
    /// innermost one.
    fn open(&mut self, col: usize, kind: Kind) -> Result<(), DocumentError> {
        match self.block.last() {
            Some(&(top, top_kind)) if col < top || (col == top && !(kind == Kind::Seq && top_kind == Kind::Map)) => {
                return Ok(());
            }
            Some(&(top, _)) if col == top => self.block.push((col, Kind::IndentlessSeq)),
            _ => self.block.push((col, kind)),
        }
        self.check()
    }

    fn line(&mut self, l: &[char]) -> Result<(), DocumentError> {
        self.flow_key = None;
        let spaces = l.iter().take_while(|c| **c == ' ').count();
        let only_spaces = spaces == l.len();
        match self.mode {
            Mode::BlockScalar { parent, indent, max_blank } => {
                let min = usize::try_from(parent + 1).unwrap_or(0).max(1);
                match indent {
                    // Content, or an empty line (any spaces, then the break).
                    Some(w) if spaces >= w || only_spaces => return Ok(()),
                    None if only_spaces => {
                        self.mode = Mode::BlockScalar { parent, indent, max_blank: max_blank.max(spaces) };
                        return Ok(());
                    }
                    None if spaces == spaces.max(max_blank).max(min) => {
                        self.mode = Mode::BlockScalar { parent, indent: Some(spaces), max_blank };
                        return Ok(());
                    }
                    _ => self.mode = Mode::Normal,
                }
            }
            Mode::Quoted(q) => {
                return match quoted_end(l, 0, q) {
                    None => Ok(()),
                    Some(end) => {
                        self.mode = Mode::Normal;
                        if self.flow > 0 { self.flow_scan(l, end) } else { self.after_node(l, end, usize::MAX) }
                    }
                };
            }
            Mode::Normal => {}
        }
        // libyaml skips a byte order mark at the start of a line, counting its column.
        let unmarked: Vec<char>;
        let l = if l.first() == Some(&'\u{feff}') {
            unmarked = std::iter::once(' ').chain(l[1..].iter().copied()).collect();
            &unmarked[..]
        } else {
            l
        };
        let spaces = l.iter().take_while(|c| **c == ' ').count();
        if self.flow > 0 {
            return self.flow_scan(l, 0);
        }
        let Some(first) = l.iter().position(|c| *c != ' ' && *c != '\t') else { return Ok(()) };
        if l[first] == '#' {
            self.plain_continues = None;
            return Ok(());
        }
        let marker = |m: &str| l.len() >= 3 && l[..3].iter().copied().eq(m.chars()) && blank(l.get(3));
        if marker("---") || marker("...") {
            self.block.clear();
            self.plain_continues = None;
            return self.node(l, 3);
        }
        if spaces == 0 && l[0] == '%' {
            return Ok(());
        }
        if let Some(p) = self.plain_continues
            && spaces as isize > p
        {
            // The plain scalar goes on (brackets and quotes in it are text) until ` #`.
            if l.windows(2).any(|w| blank(Some(&w[0])) && w[1] == '#') {
                self.plain_continues = None;
            }
            return Ok(());
        }
        self.plain_continues = None;
        let entry = l.get(spaces) == Some(&'-') && blank(l.get(spaces + 1));
        while let Some(&(col, kind)) = self.block.last() {
            if col > spaces || (col == spaces && kind == Kind::IndentlessSeq && !entry) {
                self.block.pop();
            } else {
                break;
            }
        }
        self.node(l, spaces)
    }

    /// Block context, at a token start: a node (or indicators before one) begins here.
    fn node(&mut self, l: &[char], mut i: usize) -> Result<(), DocumentError> {
        let mut start = None;
        loop {
            while blank(l.get(i)) {
                if i >= l.len() {
                    return Ok(());
                }
                i += 1;
            }
            let c = l[i];
            let next_blank = blank(l.get(i + 1));
            match c {
                '#' => return Ok(()),
                '-' if next_blank => {
                    self.open(i, Kind::Seq)?;
                    start = None;
                    i += 1;
                }
                '?' | ':' if next_blank => {
                    // `!tag : v` and `&anchor : v`: an empty key, whose mapping starts at the tag.
                    self.open(start.unwrap_or(i), Kind::Map)?;
                    start = None;
                    i += 1;
                }
                '[' | '{' => {
                    self.in_plain = false;
                    self.flow_key = Some(start.unwrap_or(i));
                    self.open_flow(c == '[')?;
                    return self.flow_scan(l, i + 1);
                }
                '\'' | '"' => {
                    let key = start.unwrap_or(i);
                    return match quoted_end(l, i + 1, c) {
                        Some(end) => self.after_node(l, end, key),
                        None => {
                            self.mode = Mode::Quoted(c);
                            Ok(())
                        }
                    };
                }
                '|' | '>' => {
                    let parent = self.parent();
                    let explicit = l[i + 1..]
                        .iter()
                        .take(2)
                        .find_map(|c| c.to_digit(10).filter(|d| *d > 0))
                        .map(|d| usize::try_from(parent).unwrap_or(0) + d as usize);
                    self.mode = Mode::BlockScalar { parent, indent: explicit, max_blank: 0 };
                    return Ok(());
                }
                '&' | '!' | '*' => {
                    start.get_or_insert(i);
                    while !blank(l.get(i)) {
                        i += 1;
                    }
                    if c == '*' {
                        let key = start.unwrap_or(i);
                        return self.after_node(l, i, key);
                    }
                }
                _ => return self.plain(l, i, start.unwrap_or(i)),
            }
        }
    }

    /// Block context: a plain scalar from `i`; a key when `: ` follows on the line.
    fn plain(&mut self, l: &[char], i: usize, start: usize) -> Result<(), DocumentError> {
        for j in i..l.len() {
            match l[j] {
                ':' if blank(l.get(j + 1)) => {
                    self.open(start, Kind::Map)?;
                    return self.node(l, j + 1);
                }
                '#' if j > i && blank(Some(&l[j - 1])) => return Ok(()),
                _ => {}
            }
        }
        self.plain_continues = Some(self.parent());
        Ok(())
    }

    /// Block context, after a quoted scalar, a flow collection or an alias: a key when `:`
    /// follows.
    fn after_node(&mut self, l: &[char], mut i: usize, start: usize) -> Result<(), DocumentError> {
        while i < l.len() && blank(l.get(i)) {
            i += 1;
        }
        match l.get(i) {
            Some(':') if blank(l.get(i + 1)) => {
                if start != usize::MAX {
                    self.open(start, Kind::Map)?;
                }
                self.node(l, i + 1)
            }
            // A comment, or what the parser refuses.
            _ => Ok(()),
        }
    }

    /// Flow context from `i`: every `[`/`{` outside quoted scalars and comments counts.
    fn flow_scan(&mut self, l: &[char], mut i: usize) -> Result<(), DocumentError> {
        while i < l.len() {
            let c = l[i];
            if c == ' ' || c == '\t' {
                i += 1;
                continue;
            }
            if c == '#' && (!self.in_plain || i == 0 || blank(Some(&l[i - 1]))) {
                self.in_plain = false;
                return Ok(());
            }
            if self.in_plain {
                match c {
                    ':' if blank(l.get(i + 1)) || l.get(i + 1).is_some_and(|n| ",?[]{}".contains(*n)) => {
                        self.in_plain = false;
                        self.flow_pair()?;
                    }
                    ',' | '[' | ']' | '{' | '}' => {
                        // Ends the scalar; read again as a token.
                        self.in_plain = false;
                        continue;
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            match c {
                '[' | '{' => self.open_flow(c == '[')?,
                ']' | '}' => {
                    self.close_flow();
                    if self.flow == 0 {
                        let key = self.flow_key.take().unwrap_or(usize::MAX);
                        return self.after_node(l, i + 1, key);
                    }
                }
                ',' => self.flow_entry(),
                ':' | '?' => self.flow_pair()?,
                '\'' | '"' => match quoted_end(l, i + 1, c) {
                    Some(end) => {
                        i = end;
                        continue;
                    }
                    None => {
                        self.mode = Mode::Quoted(c);
                        return Ok(());
                    }
                },
                '&' | '*' | '!' => {
                    // An anchor, alias or tag: up to a blank or a flow indicator (stopping
                    // early only counts a bracket the parser may take for part of a tag).
                    while i < l.len() && !blank(l.get(i)) && !",[]{}".contains(l[i]) {
                        i += 1;
                    }
                    continue;
                }
                _ => self.in_plain = true,
            }
            i += 1;
        }
        Ok(())
    }
}

/// Where the quoted scalar whose text starts at `i` ends (just past its closing quote), or
/// `None` when it goes on past the line.
fn quoted_end(l: &[char], mut i: usize, quote: char) -> Option<usize> {
    while i < l.len() {
        match l[i] {
            '\\' if quote == '"' => i += 2,
            '\'' if quote == '\'' && l.get(i + 1) == Some(&'\'') => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Why a path in the pull request's files was refused for a symlink on the way.
const SYMLINK_REFUSED: &str = "it is (or lies below) a symlink, which prpod does not follow in the pull request's \
     files; replace the link with the file itself";

/// The contents of `rel` inside the repository checkout `root`, or `None` when it does not
/// exist. The pull request controls every file below `root`, so no symlink is followed on the way
/// (`rel`'s directories included: each is opened with `O_NOFOLLOW` from its parent's handle), the
/// file must be regular (checked on the handle, opened without blocking) and at most `max` bytes.
/// `root` itself is prpod's own directory and trusted.
pub fn read_repository_file(root: &Path, rel: &Path, max: u64, what: &str) -> Result<Option<Vec<u8>>, InputError> {
    let Some((mut file, len)) = open_repository_file(root, rel, max, what)? else { return Ok(None) };
    let shown = root.join(rel);
    let io = |source| InputError::Io { what: what.to_string(), path: shown.clone(), source };
    let mut bytes = Vec::with_capacity(len as usize);
    file.by_ref().take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(InputError::TooLarge { what: what.to_string(), path: shown, max: human(max) });
    }
    Ok(Some(bytes))
}

/// The checks of [`read_repository_file`] alone, reading nothing: for a file a tool reads itself
/// (the builder's Dockerfile, Helm's values). `Ok(false)` when it does not exist.
pub fn check_repository_file(root: &Path, rel: &Path, max: u64, what: &str) -> Result<bool, InputError> {
    Ok(open_repository_file(root, rel, max, what)?.is_some())
}

/// Opens `rel` below `root` as [`read_repository_file`] describes; returns it with its size.
fn open_repository_file(
    root: &Path,
    rel: &Path,
    max: u64,
    what: &str,
) -> Result<Option<(std::fs::File, u64)>, InputError> {
    let shown = root.join(rel);
    let refused = |why: String| InputError::Refused { what: what.to_string(), path: rel.to_path_buf(), why };
    let io = |source| InputError::Io { what: what.to_string(), path: shown.clone(), source };
    let fd = match open_in_repository(root, rel, false) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if is_link_errno(&e) => return Err(refused(SYMLINK_REFUSED.into())),
        Err(e) => return Err(io(e)),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(refused("it is not a regular file (a directory, a FIFO, a device or a socket)".into()));
    }
    if meta.len() > max {
        return Err(InputError::TooLarge { what: what.to_string(), path: shown.clone(), max: human(max) });
    }
    Ok(Some((file, meta.len())))
}

/// Checks that `rel` inside `root` is a directory reached without following a symlink (the
/// build context root).
pub fn check_repository_dir(root: &Path, rel: &Path, what: &str) -> Result<(), InputError> {
    match open_in_repository(root, rel, true) {
        Ok(_) => Ok(()),
        Err(e) if is_link_errno(&e) => {
            Err(InputError::Refused { what: what.to_string(), path: rel.to_path_buf(), why: SYMLINK_REFUSED.into() })
        }
        Err(source) => Err(InputError::Io { what: what.to_string(), path: root.join(rel), source }),
    }
}

/// ELOOP (the last component is a symlink) or ENOTDIR (a directory on the way is one).
fn is_link_errno(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
        || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
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
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
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
        assert!(check_regular_file(&p, 1 << 20, "app spec").is_err());
        check_regular_file(&p, 2 << 20, "app spec").unwrap();
        assert_eq!(read_regular_file(&p, 2 << 20, "app spec").unwrap().len(), 2 << 20);
    }

    fn yaml_ok(text: &str) {
        check_yaml_nesting(text, "test").unwrap_or_else(|e| panic!("{e}:\n{text}"));
    }

    fn yaml_deep(text: &str) {
        let e = check_yaml_nesting(text, "manifests").expect_err(text);
        assert!(e.to_string().contains("more than 100 levels"), "{e}");
    }

    #[test]
    fn deep_yaml_is_refused_in_every_style() {
        let n = MAX_NESTING + 1;
        yaml_deep(&format!("{}{}", "[".repeat(n), "]".repeat(n)));
        yaml_deep(&format!("a: {}x{}", "{k: ".repeat(n), "}".repeat(n)));
        yaml_deep(&"- ".repeat(n));
        yaml_deep(&"? ".repeat(n));
        yaml_deep(&(0..n).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>());
        yaml_deep(&(0..n).map(|i| format!("{}- k{i}:\n", "  ".repeat(i))).collect::<String>());
        // Flow collections as keys, one per indentation level.
        yaml_deep(&(0..n).map(|i| format!("{}[k{i}]:\n", " ".repeat(i))).collect::<String>());
        // Indentless sequences: `key:` then `- ` at the key's column, each one level deeper.
        yaml_deep(&format!("k:\n{}", (0..n / 2 + 1).map(|i| format!("{}- k:\n", "  ".repeat(i))).collect::<String>()));
        // Across lines, with comments and quoted scalars holding closing brackets.
        yaml_deep(&"[ 'a]]', # ]]]\n \"b]]\\\"]\", ".repeat(n));
        // Quotes inside plain scalars are text: they hide nothing.
        yaml_deep(&format!("a: don't\nb: {}\nc: '", "[".repeat(n)));
        yaml_deep(&format!("[a'b, {}'c]", "[".repeat(n)));
        yaml_deep(&format!("{{a:'x', b: {}", "[".repeat(n)));
        // A block scalar ends where its indentation does.
        yaml_deep(&format!("a: |\n  'text\nb: {}\nc: '", "[".repeat(n)));
        yaml_deep(&format!("- k: |\n    text\n  b: {}\n", "[".repeat(n)));
        // A plain scalar ends at a less indented line; a comment ends it too.
        yaml_deep(&format!("a: text\nb: {}", "[".repeat(n)));
        yaml_deep(&format!("a: text # 'x\n  {}", "[".repeat(n)));
        // Every YAML line break counts.
        for brk in ["\r", "\u{85}", "\u{2028}", "\u{2029}"] {
            yaml_deep(&format!("a: |{brk}  'x{brk}b: {}", "[".repeat(n)));
        }
        // A later document starts again at the root, but is checked too.
        yaml_deep(&format!("a: 1\n---\nb: {}", "[".repeat(n)));
    }

    #[test]
    fn brackets_in_text_do_not_count() {
        let n = MAX_NESTING * 3;
        let many = "[".repeat(n);
        yaml_ok(&format!("a: '{many}'\nb: \"{many}\\\"\"\nc: x{many}\n# {many}\n"));
        yaml_ok(&format!("data:\n  config.json: |\n    {many}\n\n    {many}\n  other: |2\n    {many}\nnext: ok\n"));
        yaml_ok(&format!("a: multi\n  line {many}\n  plain\nb: [x, 'y{many}', \"z\", {{k: v}}]\n"));
        yaml_ok(&format!("a: [x, # {many}\n  y]\n"));
        yaml_ok(&format!("- &anchor x\n- *anchor\n- !!str '{many}'\n--- |\n {many}\n...\n"));
        // An ordinary deeply nested manifest: 60 levels of mappings and sequences.
        let mut doc = String::new();
        for i in 0..30 {
            doc.push_str(&format!("{0}m{i}:\n{0}  - ", "    ".repeat(i)));
            doc.push_str("x: 1\n");
        }
        yaml_ok(&doc);
        for text in [&format!("a: '{many}'"), &doc] {
            serde_yaml::from_str::<serde_yaml::Value>(text).unwrap();
        }
    }

    #[test]
    fn deep_json_is_refused_and_strings_do_not_count() {
        let n = MAX_NESTING + 1;
        let e = check_json_nesting(&format!("{}{}", "[".repeat(n), "]".repeat(n)), "PR context ctx.json").unwrap_err();
        assert!(e.to_string().contains("PR context ctx.json"), "{e}");
        assert!(check_json_nesting(&format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)), "x").is_err());
        let text = format!("{{\"a\": \"{}\\\"{}\", \"b\": [[{{}}]]}}", "[".repeat(500), "{".repeat(500));
        check_json_nesting(&text, "x").unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }

    #[test]
    fn a_400_kb_nested_document_is_refused_at_once() {
        for text in [
            "[".repeat(400_000),
            "- ".repeat(200_000),
            (0..890).map(|i| format!("{}k:\n", " ".repeat(i))).collect::<String>(),
        ] {
            let start = std::time::Instant::now();
            assert!(check_yaml_nesting(&text, "manifests").is_err());
            assert!(start.elapsed() < std::time::Duration::from_millis(200), "{:?}", start.elapsed());
        }
    }

    fn value_depth(v: &serde_yaml::Value) -> usize {
        use serde_yaml::Value;
        match v {
            Value::Sequence(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
            Value::Mapping(m) => 1 + m.iter().map(|(k, v)| value_depth(k).max(value_depth(v))).max().unwrap_or(0),
            Value::Tagged(t) => value_depth(&t.value),
            _ => 0,
        }
    }

    /// Random documents from YAML's syntax: whenever the parser accepts one, the scan's depth is
    /// at least the parsed document's.
    #[test]
    fn the_scan_never_sees_less_nesting_than_the_parser() {
        const PIECES: &[&str] = &[
            "[", "]", "{", "}", "- ", "? ", ": ", ":", "a", "b c", "'", "''", "\"", "\\", "#", " #", " ", "\n", "\n  ",
            "\n    ", "|", "|2", ">-", ",", "!t ", "---\n", "\r", "\t", "-", "?", "...\n", "\u{2028}", "\u{feff}",
            "&a ", "[x]: ",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut parsed, mut checked) = (0, 0);
        while checked < 300_000 {
            checked += 1;
            let len = 1 + next() % 24;
            let doc: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            let Ok(docs) = std::panic::catch_unwind(|| {
                serde_yaml::Deserializer::from_str(&doc)
                    .map(<serde_yaml::Value as serde::Deserialize>::deserialize)
                    .collect::<Result<Vec<_>, _>>()
            }) else {
                continue;
            };
            let Ok(docs) = docs else { continue };
            parsed += 1;
            let want = docs.iter().map(value_depth).max().unwrap_or(0);
            let got = yaml_depth(&doc, "test", usize::MAX).unwrap();
            assert!(got >= want, "the scan saw depth {got}, the parser {want}, in {doc:?}");
        }
        assert!(parsed > 10_000, "only {parsed} documents parsed");
    }
}
