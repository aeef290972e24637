//! The GitHub-backed implementations of the lifecycle's seams: gc's closed-PR source
//! ([`GithubClosedPrs`]) and teardown's tag deleter for GHCR ([`GhcrTags`]), which has no OCI
//! delete and needs GitHub Packages' REST API. Every call goes through
//! [`crate::clients::github`].

use std::collections::BTreeMap;

use crate::clients::github::{GithubClient, GithubError, PackageOwner, PullState};
use crate::error::ResultExt;
use crate::ops::gc::{ClosedPrs, PrState};
use crate::ops::teardown::TagDeleter;

/// Which PRs are closed, asked of the GitHub API one PR at a time. Any error (a non-2xx, a
/// truncated or malformed answer, a rate limit) is [`PrState::Unknown`]: gc acts only on PRs
/// GitHub positively said are closed or merged.
pub struct GithubClosedPrs {
    /// The client (its [`GithubClient::api_calls`] counts the sweep's calls).
    pub client: GithubClient,
}

#[async_trait::async_trait]
impl ClosedPrs for GithubClosedPrs {
    async fn states(&self, prs: &[(String, u64)]) -> BTreeMap<(String, u64), PrState> {
        let mut out = BTreeMap::new();
        for (repo, n) in prs {
            let state = match self.client.pull_state(repo, *n).await {
                Ok(PullState::Open) => PrState::Open,
                Ok(PullState::Closed | PullState::Merged) => PrState::Closed,
                Err(e) => PrState::Unknown(e.to_string()),
            };
            out.insert((repo.clone(), *n), state);
        }
        out
    }
}

/// A GHCR repository `ghcr.io/OWNER/PACKAGE`, whose tags are GitHub Packages versions: listing
/// reads the versions with their tags, deleting a digest deletes its version (and every tag on
/// it, as on any registry).
pub struct GhcrTags {
    /// The client, with a token that may delete package versions.
    pub client: GithubClient,
    /// The package's owner (an organization or a user).
    pub owner: PackageOwner,
    /// The package (`web`, or `team/web` for `ghcr.io/acme/team/web`).
    pub package: String,
}

impl GhcrTags {
    /// The deleter for `ghcr.io/OWNER/PACKAGE`; `None` when `repository` is not on ghcr.io.
    /// Whether OWNER is an organization or a user is asked of the API (organizations first).
    pub async fn for_repository(client: GithubClient, repository: &str) -> Result<Option<GhcrTags>, GithubError> {
        let Some(path) = repository.strip_prefix("ghcr.io/") else { return Ok(None) };
        let Some((owner, package)) = path.split_once('/') else { return Ok(None) };
        let org = PackageOwner::Org(owner.to_string());
        let owner = match client.list_package_versions(&org, package).await {
            Ok(_) => org,
            Err(GithubError::NotFound { .. }) => PackageOwner::User(owner.to_string()),
            Err(e) => return Err(e),
        };
        Ok(Some(GhcrTags { client, owner, package: package.to_string() }))
    }
}

#[async_trait::async_trait]
impl TagDeleter for GhcrTags {
    fn repository(&self) -> String {
        let owner = match &self.owner {
            PackageOwner::Org(o) | PackageOwner::User(o) => o,
        };
        format!("ghcr.io/{owner}/{}", self.package)
    }

    async fn tag_digests(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let versions = self.client.list_package_versions(&self.owner, &self.package).await.outside_line()?;
        Ok(versions.into_iter().flat_map(|v| v.tags.into_iter().map(move |t| (t, v.digest.clone()))).collect())
    }

    async fn delete_digest(&self, digest: &str, _tags: &[String]) -> anyhow::Result<bool> {
        let versions = self.client.list_package_versions(&self.owner, &self.package).await.outside_line()?;
        let Some(v) = versions.iter().find(|v| v.digest == digest) else { return Ok(false) };
        self.client.delete_package_version(&self.owner, &self.package, v.id).await.outside_line()?;
        Ok(true)
    }
}
