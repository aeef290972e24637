//! Image names as registries want them.
//!
//! The grammar and the Docker Hub defaults (`nginx` → `docker.io/library/nginx`, API host
//! `index.docker.io`) are distribution's, as oci-client's [`Reference`] implements them; what
//! prpod adds is normalisation: GHCR and most registries refuse uppercase repository names, while
//! people write `ghcr.io/Acme/Web` because that is their GitHub organisation's spelling. The
//! repository part (and the host) is lowercased and the caller is told once, so it can say so in
//! the log; tags keep their case.
//!
//! The grammar is checked here by hand rather than through [`Reference`]'s parser: that one
//! compiles a regular expression whose tag part is a Unicode `\w{0,127}`, which took ~50 ms
//! of CPU in every process that parsed a reference (a third of a 20 MB plugin pull; see
//! oci-spec-rs#322, which removes it upstream). A test checks this parser against oci-client's on
//! a corpus of valid and invalid references. The one deliberate difference: a tag is ASCII
//! (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`), as distribution defines it (Go's `\w`), where
//! oci-client's Unicode `\w` also accepted tags no registry stores.

use std::fmt;

pub use oci_client::Reference;

use super::RegistryError;

/// A repository on a registry, without tag or digest: `127.0.0.1:5443/acme/web`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    registry: String,
    repository: String,
}

/// The result of normalising a name: the name, and what it was before if that differed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<T> {
    /// The normalised value.
    pub value: T,
    /// The input, when normalisation changed it (say so once in the log).
    pub changed_from: Option<String>,
}

impl ImageName {
    /// Parses and normalises a repository reference (`ghcr.io/Acme/Web` → `ghcr.io/acme/web`,
    /// `nginx` → `docker.io/library/nginx`). A tag or digest is an error: a repository is wanted.
    pub fn parse(input: &str) -> Result<Normalized<ImageName>, RegistryError> {
        let trimmed = input.trim();
        let (name, rest) = split_name(trimmed);
        let lowered = name.to_ascii_lowercase();
        let reference = parse_reference(&lowered, input)?;
        if !rest.is_empty() {
            return Err(RegistryError::InvalidReference {
                input: input.to_string(),
                reason: "expected a repository without a tag or digest (tags come from the tag policy)".into(),
            });
        }
        let value = ImageName { registry: reference.registry, repository: reference.repository };
        let changed_from = (lowered != name).then(|| input.to_string());
        Ok(Normalized { value, changed_from })
    }

    /// A name from its parts (already normalised: used for names read back from a registry).
    pub fn new(registry: impl Into<String>, repository: impl Into<String>) -> ImageName {
        ImageName { registry: registry.into(), repository: repository.into() }
    }

    /// The registry as written (`docker.io`, `ghcr.io`, `127.0.0.1:5443`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host the API is served from (`index.docker.io` for `docker.io`), for URLs and credentials.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// The repository path (`acme/web`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// `self:tag`.
    pub fn with_tag(&self, tag: &str) -> String {
        format!("{self}:{tag}")
    }

    /// `self@digest`.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{self}@{digest}")
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// Serialised as its [`Display`](fmt::Display) string (`registry/repository`), the shape the JSON
/// report has always had for a repository.
impl serde::Serialize for ImageName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A reference to one image: a repository with a tag and/or a digest (a `FROM` line, a retag
/// source). The repository is normalised like [`ImageName::parse`]; the tag keeps its case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// The repository.
    pub name: ImageName,
    /// Tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// Digest, when pinned.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses `nginx`, `nginx:1.27`, `ghcr.io/Acme/Web@sha256:...`.
    pub fn parse(input: &str) -> Result<Normalized<ImageReference>, RegistryError> {
        let (name, rest) = split_name(input.trim());
        let normalized = format!("{}{rest}", name.to_ascii_lowercase());
        let reference = parse_reference(&normalized, input)?;
        let value = ImageReference {
            name: ImageName { registry: reference.registry, repository: reference.repository },
            tag: reference.tag,
            digest: reference.digest,
        };
        let value = if value.tag.is_none() && value.digest.is_none() {
            ImageReference { tag: Some("latest".into()), ..value }
        } else {
            value
        };
        let changed_from = (name != name.to_ascii_lowercase()).then(|| input.to_string());
        Ok(Normalized { value, changed_from })
    }

    /// What to put in a manifest URL: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The API host of a registry name (Docker Hub's API lives on `index.docker.io`).
pub fn api_host(registry: &str) -> &str {
    if registry == "docker.io" { "index.docker.io" } else { registry }
}

fn parse_reference(normalized: &str, input: &str) -> Result<grammar::Parts, RegistryError> {
    grammar::parse(normalized)
        .map_err(|e| RegistryError::InvalidReference { input: input.to_string(), reason: e.to_string() })
}

/// distribution's reference grammar (`reference/regexp.go`) and its Docker Hub defaults
/// (`normalize.go`), with oci-client's errors.
mod grammar {
    use oci_client::ParseError;

    /// A parsed reference: what [`oci_client::Reference`]'s accessors return for the same input.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct Parts {
        /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
        pub(super) registry: String,
        /// `library/nginx`, `acme/web`.
        pub(super) repository: String,
        /// The tag; `latest` when neither a tag nor a digest was given.
        pub(super) tag: Option<String>,
        /// `sha256:<hex>`.
        pub(super) digest: Option<String>,
    }

    /// `[domain/]path[:tag][@digest]`.
    pub(super) fn parse(s: &str) -> Result<Parts, ParseError> {
        if s.is_empty() {
            return Err(ParseError::NameEmpty);
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        // A `:` after the last `/` starts the tag; one before it is the registry's port.
        let (name, tag) = match name_tag.rfind(':') {
            Some(c) if !name_tag[c..].contains('/') => (&name_tag[..c], Some(&name_tag[c + 1..])),
            _ => (name_tag, None),
        };
        if !name_valid(name) || !tag.is_none_or(tag_valid) || !digest.is_none_or(digest_valid) {
            return Err(ParseError::ReferenceInvalidFormat);
        }
        let (registry, repository) = split_domain(name);
        if repository.len() > 255 {
            return Err(ParseError::NameTooLong);
        }
        if let Some(d) = digest {
            let (alg, hex) = d.split_once(':').ok_or(ParseError::DigestInvalidFormat)?;
            let want = match alg {
                "sha256" => 64,
                "sha384" => 96,
                "sha512" => 128,
                _ => return Err(ParseError::DigestUnsupported),
            };
            if hex.len() != want {
                return Err(ParseError::DigestInvalidLength);
            }
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Parts { registry, repository, tag, digest: digest.map(str::to_string) })
    }

    /// The name is path components, the first of which may instead be a registry host (when
    /// another component follows).
    fn name_valid(name: &str) -> bool {
        let parts: Vec<&str> = name.split('/').collect();
        parts[1..].iter().all(|p| path_component(p))
            && (path_component(parts[0]) || (parts.len() > 1 && domain(parts[0])))
    }

    /// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
    fn path_component(c: &str) -> bool {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = c.as_bytes();
        let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else { return false };
        if !alnum(first) || !alnum(last) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &c[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
                return false;
            }
        }
        true
    }

    /// Host labels (`[A-Za-z0-9]`, inner `-`) joined by `.`, then an optional `:port`.
    fn domain(c: &str) -> bool {
        let (host, port) = match c.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (c, None),
        };
        let label = |l: &str| {
            let b = l.as_bytes();
            b.first().is_some_and(u8::is_ascii_alphanumeric)
                && b.last().is_some_and(u8::is_ascii_alphanumeric)
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        };
        port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) && host.split('.').all(label)
    }

    /// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    fn tag_valid(t: &str) -> bool {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let b = t.as_bytes();
        (1..=128).contains(&b.len()) && word(b[0]) && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
    }

    /// `ALGORITHM:HEX`, the algorithm `[A-Za-z][A-Za-z0-9]*` parts joined by `-_+.`, at least 32
    /// hex digits.
    fn digest_valid(d: &str) -> bool {
        let Some((alg, hex)) = d.split_once(':') else { return false };
        let part = |p: &str| {
            let b = p.as_bytes();
            b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
        };
        alg.split(['-', '_', '+', '.']).all(part) && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    }

    /// Docker Hub's defaults: no registry host means `docker.io`, and a one-part name there is
    /// under `library/`.
    fn split_domain(name: &str) -> (String, String) {
        let (mut domain, mut rest) = match name.split_once('/') {
            Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
                (left.to_string(), right.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        if domain == "index.docker.io" {
            domain = "docker.io".into();
        }
        if domain == "docker.io" && !rest.contains('/') {
            rest = format!("library/{rest}");
        }
        (domain, rest)
    }
}

/// Splits `host:port/repo:tag@digest` into the name (`host:port/repo`) and the rest
/// (`:tag@digest`): only the name is lowercased, tags are case-sensitive.
fn split_name(s: &str) -> (&str, &str) {
    let name_end = s.find('@').unwrap_or(s.len());
    let name_part = &s[..name_end];
    let tag_start = match (name_part.rfind(':'), name_part.rfind('/')) {
        (Some(c), Some(slash)) if c > slash => c,
        (Some(c), None) => c,
        _ => name_end,
    };
    s.split_at(tag_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercases_repository_and_says_so() {
        let n = ImageName::parse("ghcr.io/Acme/Web").unwrap();
        assert_eq!(n.value.to_string(), "ghcr.io/acme/web");
        assert_eq!(n.changed_from.as_deref(), Some("ghcr.io/Acme/Web"));
        let n = ImageName::parse("127.0.0.1:5443/acme/web").unwrap();
        assert_eq!(n.value.registry(), "127.0.0.1:5443");
        assert_eq!(n.changed_from, None);
        assert!(ImageName::parse("ghcr.io/acme/web:v1").is_err());
        assert!(ImageName::parse("ghcr.io/acme web").is_err());
    }

    #[test]
    fn docker_hub_defaults() {
        let r = ImageReference::parse("busybox").unwrap().value;
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.name.api_host(), "index.docker.io");
        let r = ImageReference::parse("127.0.0.1:5000/Acme/App:Feature-X").unwrap();
        assert_eq!(r.value.to_string(), "127.0.0.1:5000/acme/app:Feature-X");
        assert!(r.changed_from.is_some());
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageReference::parse(&format!("127.0.0.1:5000/app@{d}")).unwrap().value;
        assert_eq!(r.manifest_ref(), d);
    }

    #[test]
    fn the_grammar_is_oci_clients_without_its_regex() {
        let hex = "0123456789abcdef".repeat(4);
        let long = format!("acme/{}", "a".repeat(260));
        let inputs = [
            "nginx",
            "nginx:1.27",
            "library/nginx",
            "docker.io/nginx",
            "index.docker.io/nginx",
            "index.docker.io/acme/web:v1",
            "localhost/app",
            "localhost:5000/app:v1",
            "localhost:5000",
            "127.0.0.1:5000/acme/web:Feature-X",
            "ghcr.io/acme/web",
            "ghcr.io/acme/web:_v1.2-rc",
            "ghcr.io/acme/my_app/sub__x/a-b--c/d.e",
            "registry-1.example.com:443/a/b/c:tag",
            "acme/web",
            "a",
            "a/b",
            "a.b/c",
            "a:b/c",
            "a:1",
            "a:b:c",
            "a/b:c:d",
            "ghcr.io/acme/web@sha256:HEX",
            "ghcr.io/acme/web:1.0@sha256:HEX",
            "ghcr.io/acme/web@sha256:abc",
            "ghcr.io/acme/web@sha512:HEX",
            "ghcr.io/acme/web@md5:HEX",
            "ghcr.io/acme/web@sha256HEX",
            "ghcr.io/acme/web@sha256+x.y:HEX",
            "ghcr.io/acme/web@1sha:HEX",
            "ghcr.io/acme/web@",
            "ghcr.io/acme/web@sha256:HEX@x",
            "LONG",
            "",
            ":tag",
            "@sha256:HEX",
            "ghcr.io/",
            "/acme",
            "acme//web",
            "acme/web/",
            "acme/Web",
            "Acme.io/web",
            "ACME/web",
            "-acme.io/web",
            "acme-.io/web",
            "acme..io/web",
            "acme.io:/web",
            "acme.io:12a/web",
            "acme/.web",
            "acme/web.",
            "acme/we..b",
            "acme/we._b",
            "acme/we___b",
            "acme/we-_b",
            "acme/we---b",
            "acme/web:",
            "acme/web:.x",
            "acme/web:-x",
            "acme/web:x y",
            "acme web",
            "acme/web:TAGMAX",
            "acme/web:TAGOVER",
            "[::1]:5000/web",
        ];
        for raw in inputs {
            let input = raw
                .replace("HEX", &hex)
                .replace("LONG", &long)
                .replace("TAGMAX", &"t".repeat(128))
                .replace("TAGOVER", &"t".repeat(129));
            let ours = grammar::parse(&input);
            let theirs = input.parse::<Reference>().map(|r| grammar::Parts {
                registry: r.registry().to_string(),
                repository: r.repository().to_string(),
                tag: r.tag().map(str::to_string),
                digest: r.digest().map(str::to_string),
            });
            assert_eq!(ours, theirs, "{input}");
        }
        // The deliberate difference: distribution's tags are ASCII.
        assert!("acme/web:café".parse::<Reference>().is_ok());
        assert!(grammar::parse("acme/web:café").is_err());
    }
}
