//! prpod's default verifier.
//!
//! `check-manifests` (before deploy), on every pod template (Pod, Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, ReplicationController, Job, CronJob):
//!
//! | rule | what it wants |
//! | --- | --- |
//! | `image-registry` | every image comes from the run's registry (when the target is known) |
//! | `image-pinned` | no `:latest`, no untagged image; a tag-policy tag or an `@sha256:` digest |
//! | `resources` | cpu and memory requests and limits on every container |
//! | `privileged` | no privileged container |
//! | `host-path` | no hostPath volume |
//! | `host-network` | no hostNetwork, hostPID or hostIPC |
//! | `run-as-non-root` | runAsNonRoot true on the pod or on each container |
//! | `manifest-yaml` | the manifest's text parses as YAML, and its merge keys and lists resolve |
//!
//! YAML merge keys (`<<`) are resolved before the rules run, as Kubernetes' reader does, and
//! lists (`kind: List`, or any object with top-level `items`) are checked item by item.
//!
//! `check-release` (after deploy): `rollout-available` (available == desired),
//! `container-waiting` (CrashLoopBackOff, ImagePullBackOff, ErrImagePull) and `warning-event`
//! (each Warning event, as a warning).
//!
//! Every finding of the rules above is an `error`, except `warning-event`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "verifier",
});

use prpod::plugin::logging::{Level, log};

pub mod manifests;
pub mod release;

struct VerifyBaseline;

impl Guest for VerifyBaseline {
    fn check_manifests(ctx: PrContext, manifests: Vec<Manifest>) -> Result<Vec<Finding>, String> {
        let findings = manifests::check(&ctx, &manifests);
        log(Level::Debug, &format!("checked {} manifests: {} findings", manifests.len(), findings.len()));
        Ok(findings)
    }

    fn check_release(ctx: PrContext, status: ReleaseStatus) -> Result<Vec<Finding>, String> {
        let _ = ctx;
        let findings = release::check(&status);
        log(
            Level::Debug,
            &format!(
                "checked release {}/{} ({} workloads): {} findings",
                status.release.namespace,
                status.release.name,
                status.workloads.len(),
                findings.len()
            ),
        );
        Ok(findings)
    }
}

export!(VerifyBaseline);
