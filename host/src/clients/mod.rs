//! One module per external system prpod talks to (git, OCI registries, buildah, docker buildx,
//! Helm, Kubernetes, GitHub). Clients return `Result`s with typed errors, take credentials as
//! [`crate::secret::Secret`], and never call phases. Test support reuses them instead of keeping
//! its own copies.

pub mod buildah;
pub mod buildx;
pub mod child_env;
pub mod git;
pub mod github;
pub mod helm;
pub mod kube;
pub mod registry;
