//! Commit ancestry, for superseding by ancestry rather than arrival order.

use std::path::Path;

use super::{Repo, Timeouts};

/// Whether commit `older` is an ancestor of `newer` in the repository at `dir` (a work tree
/// or the clone cache), from the objects it holds: `Some(true)` when git proves it, `Some(false)`
/// when `newer`'s whole history is present and `older` is not in it, `None` when git cannot
/// tell (`newer` is missing, or its history is cut by a shallow boundary). Never fetches.
pub async fn is_ancestor(dir: &Path, older: &str, newer: &str) -> Option<bool> {
    let repo = Repo::new(
        dir,
        None,
        Timeouts { connect: std::time::Duration::from_secs(60), stall: std::time::Duration::from_secs(60) },
    );
    let out = repo.git(&["merge-base", "--is-ancestor", older, newer], false, "compare commits", "").await.ok()?;
    if out.success {
        return Some(true);
    }
    let shallow = repo.is_shallow().await.unwrap_or(true);
    (!shallow && repo.has_commit(newer).await && repo.has_commit(older).await).then_some(false)
}
