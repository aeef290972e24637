//! How a failed command maps to an exit code, so CI can tell "fix your invocation" from "fix
//! your plugin" from "the registry is down".
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a verifier reported an `error` finding (nothing deployed, or deployed and rolled back) |
//! | 2 | bad input: arguments, config, JSON files, plugin references, files that are not components |
//! | 3 | a plugin failed: limit, crash, `err` result, invalid output |
//! | 4 | an external system failed: git, a registry, a builder, Helm, the cluster |
//! | 5 | the deploy failed and Helm rolled it back |
//! | 6 | superseded: a newer commit of the PR (a descendant of this one) is already deployed |
//! | 7 | gc refused: more than `[lifecycle] max_share` of the previews would go at once |
//! | 70 | prpod itself failed (the WebAssembly engine, a bug): not the input's or the plugin's fault |
//! | 130, 143 | SIGINT, SIGTERM stopped the run (the message says the state the release was left in) |

use crate::plugins::PluginError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: a verifier reported an `error` finding.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: bad input (arguments, config, files, plugin references).
pub const EXIT_INPUT: u8 = 2;
/// Exit code: a plugin failed (limit, crash, error result, invalid output).
pub const EXIT_PLUGIN: u8 = 3;
/// Exit code: an external system (git, registry, builder, Helm, cluster) failed.
pub const EXIT_EXTERNAL: u8 = 4;
/// Exit code: the deploy failed and was rolled back.
pub const EXIT_ROLLED_BACK: u8 = 5;
/// Exit code: a newer commit of the PR (a descendant of this run's) is already deployed.
pub const EXIT_SUPERSEDED: u8 = 6;
/// Exit code: gc refused to act (more than `[lifecycle] max_share` would go at once).
pub const EXIT_GC_REFUSED: u8 = 7;
/// Exit code: prpod itself failed (the engine, a bug); `EX_SOFTWARE` of sysexits.h.
pub const EXIT_INTERNAL: u8 = 70;

/// What kind of failure an error is, for its exit code. Errors that are not bad input carry one
/// of these in their chain (as the error itself or a cause); anything without one is bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FailureKind {
    /// An external system failed (exit 4).
    #[error("an external system failed")]
    External,
    /// The deploy failed and Helm rolled it back (exit 5).
    #[error("the deploy failed and was rolled back")]
    RolledBack,
    /// A newer commit is deployed already (exit 6).
    #[error("superseded")]
    Superseded,
    /// gc refused to act (exit 7).
    #[error("gc refused")]
    GcRefused,
    /// prpod itself failed (exit 70).
    #[error("internal error")]
    Internal,
    /// A signal stopped the run (exit 130 for SIGINT, 143 for SIGTERM).
    #[error("interrupted by {0}")]
    Interrupted(crate::shutdown::Signal),
}

impl FailureKind {
    /// The exit code of this kind of failure.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::External => EXIT_EXTERNAL,
            FailureKind::RolledBack => EXIT_ROLLED_BACK,
            FailureKind::Superseded => EXIT_SUPERSEDED,
            FailureKind::GcRefused => EXIT_GC_REFUSED,
            FailureKind::Internal => EXIT_INTERNAL,
            FailureKind::Interrupted(s) => s.exit_code(),
        }
    }
}

/// Errors of external-system clients implement this to say what kind of failure they are: a
/// wrong token is the user's to fix (bad input, exit 2) even though the registry reported it; a
/// registry answering 503 after every retry is an external failure (exit 4). Each client's error
/// type must also be listed in [`classify`], since a trait cannot be found by downcasting.
pub trait Classify {
    /// The kind of failure, or `None` for bad input.
    fn failure_kind(&self) -> Option<FailureKind>;
}

/// The kind of one error in a chain, when it is a type that knows it.
fn classify(cause: &(dyn std::error::Error + 'static)) -> Option<Option<FailureKind>> {
    if let Some(k) = cause.downcast_ref::<FailureKind>() {
        return Some(Some(*k));
    }
    if let Some(i) = cause.downcast_ref::<crate::shutdown::Interrupted>() {
        return Some(Some(FailureKind::Interrupted(i.signal)));
    }
    // Client error types, each implementing `Classify`, go here.
    if let Some(e) = cause.downcast_ref::<crate::clients::registry::RegistryError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::native_build::NativeBuildError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::clients::helm::HelmError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::clients::kube::KubeError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::phases::deploy::DeployError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::phases::chart::ChartError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::clients::git::GitError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::clients::buildah::BuildahError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::clients::buildx::BuildxError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::clients::github::GithubError>() {
        return Some(e.failure_kind());
    }
    if let Some(e) = cause.downcast_ref::<crate::ops::dispatch::DispatchError>() {
        return Some(e.failure_kind());
    }
    None
}

/// The exit code for a failure: the first cause in the chain that knows its kind decides.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        // A plugin error may arrive wrapped (transparently) in a phase's error.
        let plugin = cause.downcast_ref::<PluginError>().or_else(|| match cause.downcast_ref() {
            Some(crate::phases::chart::ChartError::Plugin(p)) => Some(p),
            _ => None,
        });
        if let Some(p) = plugin {
            return match p {
                PluginError::Limit { .. }
                | PluginError::Trap { .. }
                | PluginError::Returned { .. }
                | PluginError::InvalidOutput { .. } => EXIT_PLUGIN,
                PluginError::Engine(_) => EXIT_INTERNAL,
                _ => EXIT_INPUT,
            };
        }
        if let Some(kind) = classify(cause) {
            return kind.map_or(EXIT_INPUT, FailureKind::exit_code);
        }
    }
    EXIT_INPUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_own_code() {
        let plugin = |e: PluginError| exit_code_for(&anyhow::Error::new(e));
        assert_eq!(plugin(PluginError::Engine("no fibers".into())), EXIT_INTERNAL);
        let trap = PluginError::Trap { plugin: "p".into(), hook: "release", message: "unreachable".into() };
        assert_eq!(plugin(trap), EXIT_PLUGIN);
        let bad = PluginError::BadReference { reference: "x".into(), why: "y".into() };
        assert_eq!(plugin(bad), EXIT_INPUT);
        let wrapped = anyhow::Error::new(FailureKind::External).context("failed to push");
        assert_eq!(exit_code_for(&wrapped), EXIT_EXTERNAL);
        assert_eq!(exit_code_for(&anyhow::anyhow!("plain")), EXIT_INPUT);
    }
}
