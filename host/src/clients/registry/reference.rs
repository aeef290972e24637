//! Image names as registries want them.
//!
//! Parsing and the Docker Hub defaults (`nginx` → `docker.io/library/nginx`, API host
//! `index.docker.io`) are oci-client's [`Reference`]; what prpod adds is normalisation: GHCR and
//! most registries refuse uppercase repository names, while people write `ghcr.io/Acme/Web`
//! because that is their GitHub organisation's spelling. The repository part (and the host) is
//! lowercased and the caller is told once, so it can say so in the log; tags keep their case.

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
        let value =
            ImageName { registry: reference.registry().to_string(), repository: reference.repository().to_string() };
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
            name: ImageName {
                registry: reference.registry().to_string(),
                repository: reference.repository().to_string(),
            },
            tag: reference.tag().map(str::to_string),
            digest: reference.digest().map(str::to_string),
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

fn parse_reference(normalized: &str, input: &str) -> Result<Reference, RegistryError> {
    normalized
        .parse::<Reference>()
        .map_err(|e| RegistryError::InvalidReference { input: input.to_string(), reason: e.to_string() })
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
}
