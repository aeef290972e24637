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
//! | 8 | gc could not tell some PRs' state (the closed-PR source failed for them) |
//! | 70 | prpod itself failed (the WebAssembly engine, a bug): not the input's or the plugin's fault |
//! | 130, 143 | SIGINT, SIGTERM stopped the run (the message says the state the release was left in) |
//!
//! The code comes from the error's kind ([`FailureKind`]), set where a client error crosses into
//! a phase: [`ResultExt::at`] wraps it in a [`PhaseError`], and takes only errors that implement
//! [`Classify`], so an error type that does not say its kind cannot cross. [`exit_code_for`]
//! reads [`PhaseError`], [`PluginError`], [`FailureKind`] and [`Interrupted`], and nothing else:
//! there is no list of client error types to keep in step.

use crate::model::Phase;
use crate::plugins::PluginError;
use crate::shutdown::Interrupted;

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
/// Exit code: gc could not tell some PRs' state (the closed-PR source failed for them); those
/// were not collected as closed, the rest was done.
pub const EXIT_GC_UNKNOWN: u8 = 8;
/// Exit code: prpod itself failed (the engine, a bug); `EX_SOFTWARE` of sysexits.h.
pub const EXIT_INTERNAL: u8 = 70;

/// What kind of failure an error is, for its exit code. Bad input has no kind (exit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FailureKind {
    /// A plugin failed: limit, crash, `err` result, invalid output (exit 3).
    #[error("a plugin failed")]
    Plugin,
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
    /// gc could not tell some PRs' state (exit 8).
    #[error("gc could not tell some pull requests' state")]
    GcUnknown,
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
            FailureKind::Plugin => EXIT_PLUGIN,
            FailureKind::External => EXIT_EXTERNAL,
            FailureKind::RolledBack => EXIT_ROLLED_BACK,
            FailureKind::Superseded => EXIT_SUPERSEDED,
            FailureKind::GcRefused => EXIT_GC_REFUSED,
            FailureKind::GcUnknown => EXIT_GC_UNKNOWN,
            FailureKind::Internal => EXIT_INTERNAL,
            FailureKind::Interrupted(s) => s.exit_code(),
        }
    }

    /// The exit code of a failure of kind `kind` (`None`: bad input, exit 2).
    pub fn exit_code_of(kind: Option<FailureKind>) -> u8 {
        kind.map_or(EXIT_INPUT, FailureKind::exit_code)
    }
}

/// Errors of external-system clients (and the phase errors that carry them) implement this to
/// say what kind of failure they are: a wrong token is the user's to fix (bad input, exit 2)
/// even though the registry reported it; a registry answering 503 after every retry is an
/// external failure (exit 4). Implementing it is all a new error type needs: [`ResultExt::at`]
/// reads it when the error crosses into a phase.
pub trait Classify {
    /// The kind of failure, or `None` for bad input.
    fn failure_kind(&self) -> Option<FailureKind>;
}

impl Classify for FailureKind {
    fn failure_kind(&self) -> Option<FailureKind> {
        Some(*self)
    }
}

impl Classify for PluginError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            PluginError::Limit { .. }
            | PluginError::Trap { .. }
            | PluginError::Returned { .. }
            | PluginError::InvalidOutput { .. } => Some(FailureKind::Plugin),
            PluginError::Engine(_) => Some(FailureKind::Internal),
            _ => None,
        }
    }
}

impl Classify for Interrupted {
    fn failure_kind(&self) -> Option<FailureKind> {
        Some(FailureKind::Interrupted(self.signal))
    }
}

/// A failure as it crossed into a phase: the phase, the kind read from the error then, and the
/// error. It reads exactly as the error it wraps (its message, then the error's causes), so the
/// messages and the report's `causes` are the error's own; the phase is the report's failed one.
#[derive(Debug)]
pub struct PhaseError {
    phase: Option<Phase>,
    kind: Option<FailureKind>,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl PhaseError {
    /// Wraps `error`, reading its kind now.
    pub fn new<E>(phase: Phase, error: E) -> PhaseError
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        PhaseError { phase: Some(phase), kind: error.failure_kind(), source: Box::new(error) }
    }

    /// Wraps `error` where it crosses into a command outside the line (teardown, gc, status,
    /// the plugin commands), reading its kind now.
    pub fn outside_line<E>(error: E) -> PhaseError
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        PhaseError { phase: None, kind: error.failure_kind(), source: Box::new(error) }
    }

    /// The phase of the line the error crossed into (`None`: a command outside the line).
    pub fn phase(&self) -> Option<Phase> {
        self.phase
    }

    /// The kind of failure (`None`: bad input).
    pub fn kind(&self) -> Option<FailureKind> {
        self.kind
    }

    /// The exit code the failure means.
    pub fn exit_code(&self) -> u8 {
        FailureKind::exit_code_of(self.kind)
    }

    /// The wrapped error (to downcast it).
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl std::fmt::Display for PhaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for PhaseError {
    // Transparent: the chain goes on with the wrapped error's causes, not the error again.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

/// [`PhaseError`] at a phase boundary: `client_call().await.at(Phase::Push)?`.
pub trait ResultExt<T> {
    /// Wraps the error in a [`PhaseError`] for `phase`, its kind read now.
    fn at(self, phase: Phase) -> Result<T, PhaseError>;
    /// Wraps the error in a [`PhaseError`] of a command outside the line, its kind read now.
    fn outside_line(self) -> Result<T, PhaseError>;
}

impl<T, E> ResultExt<T> for Result<T, E>
where
    E: Classify + std::error::Error + Send + Sync + 'static,
{
    fn at(self, phase: Phase) -> Result<T, PhaseError> {
        self.map_err(|e| PhaseError::new(phase, e))
    }

    fn outside_line(self) -> Result<T, PhaseError> {
        self.map_err(PhaseError::outside_line)
    }
}

/// The exit code for a failure: the first cause in the chain that knows its kind decides (a
/// [`PhaseError`], a [`PluginError`], a [`FailureKind`] or an [`Interrupted`]); anything else
/// is bad input.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        let kind = if let Some(e) = cause.downcast_ref::<PhaseError>() {
            e.kind()
        } else if let Some(e) = cause.downcast_ref::<PluginError>() {
            e.failure_kind()
        } else if let Some(e) = cause.downcast_ref::<FailureKind>() {
            e.failure_kind()
        } else if let Some(e) = cause.downcast_ref::<Interrupted>() {
            e.failure_kind()
        } else {
            continue;
        };
        return FailureKind::exit_code_of(kind);
    }
    EXIT_INPUT
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::clients::buildah::BuildahError;
    use crate::clients::buildx::BuildxError;
    use crate::clients::git::GitError;
    use crate::clients::github::GithubError;
    use crate::clients::helm::HelmError;
    use crate::clients::kube::KubeError;
    use crate::clients::registry::RegistryError;
    use crate::phases::build::native::NativeBuildError;
    use crate::phases::chart::ChartError;
    use crate::phases::deploy::{DeployError, LockLost};
    use crate::shutdown::Signal;

    /// The exit code `error` ends the command with once it crossed into a phase (under context,
    /// as the phases add it).
    fn code_at<E: Classify + std::error::Error + Send + Sync + 'static>(error: E) -> u8 {
        let err: anyhow::Error = Err::<(), E>(error).at(Phase::Deploy).unwrap_err().into();
        exit_code_for(&err.context("failed to deploy"))
    }

    fn io() -> std::io::Error {
        std::io::Error::other("disk full")
    }

    fn s(text: &str) -> String {
        text.to_string()
    }

    /// Every client error type, representative variants of each kind, and the exit code the
    /// README's table gives them: 2 bad input, 3 plugin, 4 external, 5 rolled back, 70 prpod.
    /// A type whose kind mapping changes fails here; a new type needs only `impl Classify`
    /// (and a line here).
    #[test]
    fn every_client_error_has_the_readme_exit_code_at_a_phase_boundary() {
        // registry
        let unauthorized = || RegistryError::Unauthorized { host: s("r"), source_desc: s("env"), detail: s("401") };
        assert_eq!(code_at(unauthorized()), 2);
        let unavailable = RegistryError::Unavailable {
            host: s("r"),
            what: s("HEAD"),
            detail: s("503"),
            attempts: 4,
            elapsed: Duration::from_secs(3),
        };
        assert_eq!(code_at(unavailable), 4);
        assert_eq!(code_at(RegistryError::Io { action: "write", path: PathBuf::from("/x"), source: io() }), 70);
        // native build
        assert_eq!(code_at(NativeBuildError::Dockerfile { file: s("Dockerfile"), line: 1, message: s("RUN") }), 2);
        assert_eq!(code_at(NativeBuildError::Write { path: PathBuf::from("/x"), source: io() }), 70);
        assert_eq!(code_at(NativeBuildError::Base { image: s("alpine"), source: Box::new(unauthorized()) }), 2);
        // helm
        assert_eq!(code_at(HelmError::Render { chart: s("web"), stderr: s("parse error") }), 2);
        let rolled = HelmError::RolledBack { release: s("pr-1"), namespace: s("pr-1"), stderr: s("timed out") };
        assert_eq!(code_at(rolled), 5);
        assert_eq!(code_at(HelmError::Failed { command: "upgrade", release: s("pr-1"), stderr: s("boom") }), 4);
        let auth = HelmError::Failed { command: "upgrade", release: s("pr-1"), stderr: s("Unauthorized") };
        assert_eq!(code_at(auth), 2);
        assert_eq!(code_at(HelmError::Io { what: s("helm"), source: io() }), 70);
        let output = || HelmError::Output { command: "history", source: serde_json::from_str::<u8>("x").unwrap_err() };
        assert_eq!(code_at(output()), 70);
        // The parse error stays a cause of its own (it was flattened into the message before).
        let err: anyhow::Error = PhaseError::new(Phase::Deploy, output()).into();
        assert!(err.chain().nth(1).is_some_and(|c| c.to_string().contains("expected value")), "{err:#}");
        // kube
        assert_eq!(code_at(KubeError::Forbidden { what: s("get pods"), message: s("no") }), 2);
        assert_eq!(code_at(KubeError::Config { why: s("no kubeconfig") }), 2);
        assert_eq!(code_at(KubeError::Api { what: s("get"), code: 422, message: s("invalid") }), 2);
        assert_eq!(code_at(KubeError::Api { what: s("get"), code: 409, message: s("conflict") }), 4);
        assert_eq!(code_at(KubeError::Api { what: s("get"), code: 503, message: s("down") }), 4);
        // git
        assert_eq!(code_at(GitError::Auth { url: s("https://g/r"), username: s("x-access-token") }), 2);
        assert_eq!(code_at(GitError::Unreachable { url: s("https://g/r"), why: s("refused"), attempts: 3 }), 4);
        assert_eq!(code_at(GitError::Mismatch { want: s("a"), got: s("b"), cache: s("/c") }), 70);
        // buildah, buildx
        assert_eq!(code_at(BuildahError::Missing(s("buildah"))), 2);
        assert_eq!(code_at(BuildahError::Command { what: s("push"), tail: s("crashed") }), 4);
        assert_eq!(code_at(BuildxError::Missing(s("docker"))), 2);
        assert_eq!(code_at(BuildxError::Builder { name: s("b"), tail: s("crashed") }), 4);
        // github
        assert_eq!(code_at(GithubError::Unauthorized { what: s("GET /user"), detail: s("401") }), 2);
        let limited = GithubError::RateLimited { what: s("GET /user"), reset: s("12:00"), wait_secs: 3600 };
        assert_eq!(code_at(limited), 4);
        // deploy (the phase's own error, carrying Helm's and the cluster's)
        let rolled = DeployError::RolledBack {
            release: s("pr-1"),
            namespace: s("pr-1"),
            reason: s("crash"),
            failures: Vec::new(),
            restored: Some(1),
            warnings: Vec::new(),
        };
        assert_eq!(code_at(rolled), 5);
        let lost = LockLost { lease: s("l"), namespace: s("pr-1"), why: s("taken") };
        assert_eq!(code_at(DeployError::LockLost { lost, state: s("unchanged") }), 4);
        let interrupted = crate::shutdown::Interrupted { signal: Signal::Term, state: s("unchanged") };
        assert_eq!(code_at(DeployError::Interrupted(interrupted)), 143);
        assert_eq!(code_at(DeployError::Helm(HelmError::Render { chart: s("web"), stderr: s("x") })), 2);
        // chart (carrying plugin failures)
        let trap = PluginError::Trap { plugin: s("p"), hook: "generate", message: s("unreachable") };
        assert_eq!(code_at(ChartError::Plugin(trap)), 3);
        assert_eq!(code_at(ChartError::Plugin(PluginError::Engine(s("no fibers")))), 70);
        assert_eq!(code_at(ChartError::Write { path: PathBuf::from("/x"), source: io() }), 70);
        assert_eq!(code_at(ChartError::NoChart { path: PathBuf::from("/c"), why: s("no Chart.yaml") }), 2);
    }

    #[test]
    fn a_phase_error_reads_as_the_error_it_wraps() {
        let e = GitError::Unreachable { url: s("https://g/r"), why: s("refused"), attempts: 3 };
        let message = e.to_string();
        let wrapped: anyhow::Error = PhaseError::new(Phase::Source, e).into();
        assert_eq!(wrapped.to_string(), message);
        assert_eq!(wrapped.chain().count(), 1, "the error is not repeated as its own cause");
        let p = wrapped.downcast_ref::<PhaseError>().unwrap();
        assert_eq!((p.phase(), p.kind()), (Some(Phase::Source), Some(FailureKind::External)));
        assert!(p.inner().downcast_ref::<GitError>().is_some());
        let with_cause: anyhow::Error =
            PhaseError::outside_line(RegistryError::Io { action: "write", path: PathBuf::from("/x"), source: io() })
                .into();
        assert_eq!(with_cause.chain().nth(1).map(|c| c.to_string()).as_deref(), Some("disk full"));
    }

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
        let interrupted = crate::shutdown::Interrupted { signal: Signal::Int, state: s("unchanged") };
        assert_eq!(exit_code_for(&anyhow::Error::new(interrupted)), 130);
        assert_eq!(FailureKind::GcRefused.exit_code(), 7);
        assert_eq!(FailureKind::GcUnknown.exit_code(), 8);
        // A client error that never crossed a phase boundary is not read: bad input.
        let raw = GitError::Unreachable { url: s("https://g/r"), why: s("refused"), attempts: 3 };
        assert_eq!(exit_code_for(&anyhow::Error::new(raw)), EXIT_INPUT);
    }

    /// The codes of a markdown table whose rows start with `| <code> |` (`| 130, 143 |` too).
    fn table_codes(text: &str) -> Vec<u8> {
        let mut codes: Vec<u8> = text
            .lines()
            .map(|l| l.trim_start_matches("//!").trim())
            .filter_map(|l| l.strip_prefix('|')?.split('|').next())
            .flat_map(|cell| cell.split(',').map(|c| c.trim().parse::<u8>()).collect::<Vec<_>>())
            .filter_map(Result::ok)
            .collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    #[test]
    fn the_readme_and_this_module_list_the_same_exit_codes() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let section = &readme[readme.find("### Report and exit codes").expect("the README's exit-code section")..];
        let ours = table_codes(include_str!("error.rs").split("\nuse ").next().unwrap());
        assert_eq!(table_codes(section.split("\n### ").next().unwrap()), ours);
        let constants = [
            EXIT_OK,
            EXIT_FINDINGS,
            EXIT_INPUT,
            EXIT_PLUGIN,
            EXIT_EXTERNAL,
            EXIT_ROLLED_BACK,
            EXIT_SUPERSEDED,
            EXIT_GC_REFUSED,
            EXIT_GC_UNKNOWN,
            EXIT_INTERNAL,
            Signal::Int.exit_code(),
            Signal::Term.exit_code(),
        ];
        let mut constants = constants.to_vec();
        constants.sort_unstable();
        assert_eq!(constants, ours);
    }
}
