//! The push phase: the built image under every tag ([`PushedImage`]).

use crate::model::{BuiltImage, PushedImage, TagSet};
use crate::phases::Inputs;
use crate::report::PhaseHandle;

/// Pushes `built` under every tag of `tags`.
pub async fn push(
    built: &BuiltImage,
    tags: &TagSet,
    inputs: &Inputs<'_>,
    phase: &PhaseHandle,
) -> anyhow::Result<PushedImage> {
    let _ = (built, tags, inputs, phase);
    anyhow::bail!("the push phase is not implemented yet")
}

/// One line for people.
pub fn summary(p: &PushedImage) -> String {
    format!("{}@{} ({} tags)", p.repository, p.digest, p.tags.len())
}
