//! The push phase: the built image under every tag the tag-policy chose ([`PushedImage`]), by
//! prpod's own registry client (blobs HEAD-checked, mounted or streamed from disk, the manifest
//! put under each tag and its digest checked against the registry's). Images a backend pushed
//! itself (buildx) are not pushed again: the phase is skipped and reports buildx's digest.

use crate::clients::registry::{ImageName, OciImage, PushEvent};
use crate::error::ResultExt;
use crate::model::Phase;
use crate::model::{BuiltImage, PushedImage, TagSet};
use crate::phases::registry::Registry;
use crate::report::PhaseHandle;

/// The tags an image is pushed under: primary, then the extras (cache tags are the builders').
pub fn image_tags(tags: &TagSet) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in std::iter::once(&tags.primary).chain(&tags.extra) {
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

/// Pushes `built` to `image` under every tag of `tags`. Returns `(pushed, skipped)`: skipped is
/// true when the backend had pushed already.
pub async fn push(
    built: &BuiltImage,
    image: &ImageName,
    tags: &TagSet,
    registry: &Registry,
    phase: &PhaseHandle,
) -> anyhow::Result<(PushedImage, bool)> {
    let tags = image_tags(tags);
    let Some(layout) = &built.layout else {
        // buildx pushed with every tag and told us the digest.
        let pushed =
            PushedImage { repository: image.clone(), digest: built.digest.clone(), tags, layers: Default::default() };
        return Ok((pushed, true));
    };
    let oci = OciImage::open(layout).at(Phase::Push)?;
    let transfer = phase.transfer();
    let progress = |e: &PushEvent| match e {
        PushEvent::Started { total_bytes, .. } => transfer.add_total(*total_bytes),
        PushEvent::Bytes { sent, .. } => transfer.advance(*sent),
        PushEvent::Restarted { discarded, .. } => transfer.retreat(*discarded),
        PushEvent::Blob { outcome, size, .. } => {
            // A blob that was not uploaded still counts as done for the bar.
            if *outcome != crate::clients::registry::BlobOutcome::Pushed {
                transfer.advance(*size);
            }
        }
        PushEvent::Retrying(n) => phase.note(format!(
            "{} failed ({}), attempt {}: retrying in {:.1}s",
            n.what,
            n.reason,
            n.attempt,
            n.wait.as_secs_f64()
        )),
        PushEvent::Tagged { .. } => {}
    };
    let pushed = registry.client.push(&oci, image, &tags, &progress).await.at(Phase::Push)?;
    Ok((pushed, false))
}

/// One line for people.
pub fn summary(p: &PushedImage) -> String {
    let l = &p.layers;
    format!(
        "{}@{} as {} ({} layers pushed, {} already there, {} mounted, {})",
        p.repository,
        p.digest,
        p.tags.join(", "),
        l.pushed,
        l.skipped,
        l.mounted,
        crate::report::human_bytes(l.bytes_uploaded)
    )
}
