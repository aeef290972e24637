//! What can go wrong talking to a registry, and whose problem it is.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Classify, FailureKind};

/// A registry operation failed. Messages say what failed and what to do; none contains a
/// credential (server bodies are scrubbed of the secrets prpod sent).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// An image reference could not be parsed.
    #[error("invalid image reference `{input}`: {reason}")]
    InvalidReference {
        /// What the user wrote.
        input: String,
        /// Why it is not a reference.
        reason: String,
    },
    /// The registry (or its token service) rejected the credentials.
    #[error(
        "failed to authenticate to {host}: the registry rejected the credentials {source_desc} ({detail}); check \
         the username and the password or token"
    )]
    Unauthorized {
        /// Registry host.
        host: String,
        /// Where the credentials came from (`from PRPOD_REGISTRY_PASSWORD`, `from ~/.docker/config.json`),
        /// or `(none were given)`.
        source_desc: String,
        /// What the registry said, scrubbed.
        detail: String,
    },
    /// Authenticated, but not allowed to do this (e.g. push to a repository the token cannot write).
    #[error(
        "failed to {action} {repository} on {host}: access denied ({detail}); the credentials lack that permission"
    )]
    Denied {
        /// Registry host.
        host: String,
        /// Repository.
        repository: String,
        /// `pull` or `push`.
        action: String,
        /// What the registry said, scrubbed.
        detail: String,
    },
    /// Something that should exist does not (a base image, a tag).
    #[error("failed to find {what} on {host}: {detail}")]
    NotFound {
        /// Registry host.
        host: String,
        /// What was looked for (`manifest acme/web:latest`).
        what: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry's certificate is not trusted (or the host speaks plain HTTP).
    #[error(
        "failed to connect to {host} over TLS: {detail}; if the registry uses its own CA set PRPOD_REGISTRY_CA \
         (or `registry.ca_file`) to its PEM file; if it speaks plain HTTP list it in `registry.plain_http`"
    )]
    Tls {
        /// Registry host.
        host: String,
        /// The TLS error.
        detail: String,
    },
    /// A request (an upload `Location`, a redirect, a token realm) would have gone over plain
    /// HTTP to a host not in `registry.plain_http`.
    #[error(
        "refused to {what} for {host} at {origin}: {detail}; if that host is yours and speaks plain HTTP, list it \
         in `registry.plain_http` (PRPOD_REGISTRY_PLAIN_HTTP), otherwise the registry is misconfigured or hostile"
    )]
    Insecure {
        /// Registry host.
        host: String,
        /// The operation.
        what: String,
        /// `scheme://host:port` of the refused URL.
        origin: String,
        /// Why.
        detail: String,
    },
    /// The registry could not be reached, or kept failing (5xx, 429, dropped connections), after
    /// every retry.
    #[error(
        "failed to {what} on {host}: {detail} (gave up after {attempts} attempts in {elapsed:.1?}); is the registry up?"
    )]
    Unavailable {
        /// Registry host.
        host: String,
        /// The operation (`upload blob sha256:...`).
        what: String,
        /// The last error.
        detail: String,
        /// How many attempts were made.
        attempts: u32,
        /// How long they took in total.
        elapsed: Duration,
    },
    /// The registry answered something that breaks the distribution protocol.
    #[error("failed to {what} on {host}: unexpected answer: {detail}")]
    Protocol {
        /// Registry host.
        host: String,
        /// The operation.
        what: String,
        /// What was unexpected.
        detail: String,
    },
    /// The registry stored the manifest under a different digest than prpod computed.
    #[error("the registry {host} reports digest {registry} for {repository}:{tag}, but prpod pushed {ours}")]
    DigestMismatch {
        /// Registry host.
        host: String,
        /// Repository.
        repository: String,
        /// Tag.
        tag: String,
        /// Our digest.
        ours: String,
        /// The registry's digest.
        registry: String,
    },
    /// Credentials could not be read (an env var, a file, stdin, docker config, a helper).
    #[error("failed to read registry credentials from {source_desc}: {detail}")]
    Credentials {
        /// Where they were read from.
        source_desc: String,
        /// What went wrong.
        detail: String,
    },
    /// Bad client configuration (a CA file that is not PEM, ...).
    #[error("invalid registry configuration: {0}")]
    Config(String),
    /// A file of an image layout could not be read or written.
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        /// `read`, `write`, ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An OCI image layout on disk is not usable.
    #[error("invalid OCI image layout {}: {detail}", path.display())]
    Layout {
        /// The layout directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl RegistryError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RegistryError::Io { action, path: path.into(), source }
    }
}

impl Classify for RegistryError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            // The user's to fix: references, credentials, permissions, trust, config, missing images.
            RegistryError::InvalidReference { .. }
            | RegistryError::Unauthorized { .. }
            | RegistryError::Denied { .. }
            | RegistryError::NotFound { .. }
            | RegistryError::Tls { .. }
            | RegistryError::Insecure { .. }
            | RegistryError::Credentials { .. }
            | RegistryError::Config(_)
            | RegistryError::Layout { .. } => None,
            RegistryError::Unavailable { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::DigestMismatch { .. } => Some(FailureKind::External),
            RegistryError::Io { .. } => Some(FailureKind::Internal),
        }
    }
}
