//! The Dockerfile subset the native backend builds: parsing (continuations, comments, the
//! JSON and shell forms), and variable expansion (`$V`, `${V}`, `${V:-x}`, `${V:+x}`).

use std::collections::BTreeMap;

use super::NativeBuildError;

/// One instruction, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Line of the keyword.
    pub line: usize,
    /// Keyword, uppercased (`COPY`).
    pub keyword: String,
    /// Everything after the keyword, continuations joined.
    pub args: String,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The instructions in order.
    pub instructions: Vec<Instruction>,
}

/// What the native backend builds; everything else is an error naming the line.
pub const SUPPORTED: &[&str] =
    &["FROM", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "LABEL", "ENTRYPOINT", "CMD"];

impl Dockerfile {
    /// Parses `text` (`name` is used in errors, e.g. `Dockerfile`).
    pub fn parse(name: &str, text: &str) -> Result<Dockerfile, NativeBuildError> {
        let mut instructions = Vec::new();
        let mut lines = text.lines().enumerate().peekable();
        let mut in_directives = true;
        while let Some((i, raw)) = lines.next() {
            let line = raw.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if in_directives && let Some((k, v)) = comment.split_once('=') {
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                    if k == "escape" && v != "\\" {
                        return Err(NativeBuildError::dockerfile(
                            name,
                            i + 1,
                            "the native backend supports only the default escape character `\\`",
                        ));
                    }
                    continue;
                }
                in_directives = false;
                continue;
            }
            in_directives = false;
            if line.is_empty() {
                continue;
            }
            let start = i + 1;
            let mut joined = String::new();
            let mut current = line.to_string();
            loop {
                if let Some(stripped) = current.strip_suffix('\\') {
                    joined.push_str(stripped);
                    joined.push(' ');
                    // Comment and empty lines inside a continuation are dropped (as docker does).
                    let mut next = None;
                    for (_, l) in lines.by_ref() {
                        let t = l.trim();
                        if t.starts_with('#') || t.is_empty() {
                            continue;
                        }
                        next = Some(t.to_string());
                        break;
                    }
                    match next {
                        Some(n) => current = n,
                        None => break,
                    }
                } else {
                    joined.push_str(&current);
                    break;
                }
            }
            let (keyword, args) = joined.trim().split_once(char::is_whitespace).unwrap_or((joined.trim(), ""));
            instructions.push(Instruction {
                line: start,
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_string(),
            });
        }
        Ok(Dockerfile { instructions })
    }

    /// The first instruction the native backend cannot build (a `RUN`, a second `FROM`, ...),
    /// as the error the build would fail with; `None` when it can build the whole file. This is
    /// what `--backend auto` asks.
    pub fn native_blocker(&self, name: &str) -> Option<NativeBuildError> {
        let mut froms = 0;
        for ins in &self.instructions {
            match ins.keyword.as_str() {
                "RUN" => {
                    return Some(NativeBuildError::dockerfile(
                        name,
                        ins.line,
                        "RUN is not supported by the native backend (it builds without running anything: no daemon, \
                         no privileges); build this Dockerfile with `--backend buildah` or `--backend buildx`",
                    ));
                }
                "FROM" => {
                    froms += 1;
                    if froms > 1 {
                        return Some(NativeBuildError::dockerfile(
                            name,
                            ins.line,
                            "multi-stage builds (a second FROM) are not supported by the native backend; use \
                             `--backend buildah` or `--backend buildx`",
                        ));
                    }
                }
                k if SUPPORTED.contains(&k) => {}
                k => {
                    return Some(NativeBuildError::dockerfile(
                        name,
                        ins.line,
                        &format!(
                            "{k} is not supported by the native backend (it supports {}); use `--backend buildah` or \
                             `--backend buildx`",
                            SUPPORTED.join(", ")
                        ),
                    ));
                }
            }
        }
        if froms == 0 {
            return Some(NativeBuildError::dockerfile(name, 1, "no FROM instruction"));
        }
        None
    }
}

/// Expands `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:+alternative}`; `\$` is a literal `$`.
/// Unknown variables expand to nothing, as in docker.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' => {
                if chars.peek() == Some(&'{') {
                    chars.next();
                    let mut inner = String::new();
                    let mut depth = 1;
                    for c in chars.by_ref() {
                        match c {
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        inner.push(c);
                    }
                    if depth != 0 {
                        return Err(format!("unterminated `${{` in `{s}`"));
                    }
                    if let Some((name, word)) = inner.split_once(":-") {
                        match vars.get(name).filter(|v| !v.is_empty()) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&expand(word, vars)?),
                        }
                    } else if let Some((name, word)) = inner.split_once(":+") {
                        if vars.get(name).is_some_and(|v| !v.is_empty()) {
                            out.push_str(&expand(word, vars)?);
                        }
                    } else if inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !inner.is_empty() {
                        out.push_str(vars.get(&inner).map_or("", String::as_str));
                    } else {
                        return Err(format!("unsupported substitution `${{{inner}}}`"));
                    }
                } else {
                    let mut name = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            name.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    if name.is_empty() {
                        out.push('$');
                    } else {
                        out.push_str(vars.get(&name).map_or("", String::as_str));
                    }
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// Splits shell-like words: whitespace separates, double and single quotes group (and are
/// removed), a backslash escapes the next character outside single quotes.
pub fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                has = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                // Keep `\$` for the expander; other escapes resolve here.
                match chars.next() {
                    Some('$') => cur.push_str("\\$"),
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                }
                has = true;
            }
            (_, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in `{s}`"));
    }
    if has {
        out.push(cur);
    }
    Ok(out)
}

/// `["a", "b"]` (the exec form) when `s` is a JSON array of strings.
pub fn json_array(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

/// `KEY=VALUE ...` pairs (ENV, LABEL, ARG), or the legacy `KEY VALUE` form when `legacy`.
pub fn pairs(s: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let first = s.split_whitespace().next().unwrap_or("");
    if legacy && !first.contains('=') {
        let (k, v) = s.trim().split_once(char::is_whitespace).ok_or_else(|| format!("expected KEY=VALUE in `{s}`"))?;
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    words(s)?
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("expected KEY=VALUE, got `{w}`"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_continuations_comments_and_names_lines() {
        let d = Dockerfile::parse(
            "Dockerfile",
            "# syntax=docker/dockerfile:1\nFROM scratch\n\n# a comment\nCOPY a \\\n  # dropped\n  b /x/\nrun echo hi\n",
        )
        .unwrap();
        let kw: Vec<_> = d.instructions.iter().map(|i| (i.line, i.keyword.as_str(), i.args.as_str())).collect();
        assert_eq!(kw, vec![(2, "FROM", "scratch"), (5, "COPY", "a  b /x/"), (8, "RUN", "echo hi")]);
        let e = d.native_blocker("Dockerfile").unwrap().to_string();
        assert!(
            e.contains("Dockerfile:8") && e.contains("RUN") && e.contains("buildah") && e.contains("buildx"),
            "{e}"
        );
    }

    #[test]
    fn expands_variables() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string()), ("E".to_string(), String::new())]);
        assert_eq!(expand("$A-${A}-${B:-d}-${A:+x}-${E:-e}-\\$A", &vars).unwrap(), "1-1-d-x-e-$A");
        assert_eq!(words(r#"a "b c" 'd $e' f\ g"#).unwrap(), vec!["a", "b c", "d $e", "f g"]);
        assert_eq!(pairs(r#"A=1 B="two words""#, true).unwrap()[1], ("B".into(), "two words".into()));
        assert_eq!(pairs("A one two", true).unwrap(), vec![("A".into(), "one two".into())]);
        assert_eq!(json_array(r#"["/bin/httpd", "-f"]"#).unwrap(), vec!["/bin/httpd", "-f"]);
    }
}
