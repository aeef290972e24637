//! The environment a child process starts with: nothing but an allow-list.
//!
//! Every program prpod runs (git, helm, buildah, docker, docker credential helpers) starts
//! from an empty environment ([`std::process::Command::env_clear`]) and gets back only the
//! variables on this page: the ones every program needs to run ([`COMMON`]) and the tool's own
//! ([`Tool`]). prpod's secrets (`PRPOD_REGISTRY_PASSWORD`, `GITHUB_TOKEN`, `PRPOD_GIT_TOKEN`,
//! `PRPOD_CACHE_KEY`, a CI runner's tokens) are on no list, so no child sees them, and a
//! chart that reads Helm's `/proc/self/environ` finds none of them; [`WITHHELD`] is checked
//! after the lists as a second lock. A client that must hand a child a secret passes it the
//! way that child's protocol expects (git's credential helper, an authfile), set explicitly on
//! top of this.
//!
//! One place for the lists, so what a child sees is read in one file: clients call
//! [`allowed`] with their [`Tool`] when they build a command; they never read the environment
//! or prpod's configuration themselves.

use std::ffi::{OsStr, OsString};

/// The first line a tool prints (its stdout, else its stderr) within 10 s, or why it did not
/// run: what `prpod doctor` and a backend's checks show of `git --version`, `buildah --version`,
/// `docker buildx version`. `command` already carries the tool's allow-listed environment.
pub async fn first_line(mut command: tokio::process::Command) -> Result<String, String> {
    let run = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .map_err(|_| "did not answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout }).to_string();
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if out.status.success() { Ok(line) } else { Err(line) }
}

/// A program prpod runs, which decides the variables it gets besides [`COMMON`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `git`: its TLS and SSH settings (`GIT_SSL_CAINFO`, `GIT_SSH_COMMAND`, `SSH_AUTH_SOCK`).
    Git,
    /// `helm`: `KUBECONFIG`, `HELM_*`, the in-cluster `KUBERNETES_SERVICE_*`, and the cloud
    /// variables a kubeconfig's `exec:` plugin (`aws eks get-token`, `gke-gcloud-auth-plugin`,
    /// `kubelogin`) needs to log in.
    Helm,
    /// `buildah`: containers' configuration and storage (`CONTAINERS_*`, `STORAGE_*`).
    Buildah,
    /// `docker` (buildx): the daemon and builder (`DOCKER_HOST`, `DOCKER_CONTEXT`, `BUILDX_*`,
    /// `BUILDKIT_*`).
    Docker,
    /// `docker-credential-NAME`: the cloud variables helpers log in with (`AWS_*` for
    /// ecr-login, `GOOGLE_*`/`CLOUDSDK_*` for gcr, the D-Bus and GnuPG sockets for the desktop
    /// stores).
    CredentialHelper,
}

/// What every child gets: where programs are, the user's home, locale, time zone, temporary
/// directory, proxies and the system's CA overrides.
pub const COMMON: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Cloud identities a kubeconfig `exec:` plugin or a credential helper logs in with. The
/// operator's, not the PR's: a run that deploys to EKS or pushes to ECR cannot work without them.
const CLOUD: &[&str] =
    &["AWS_*", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_*", "AZURE_*", "AAD_*"];

/// Never passed on, whatever a list says: prpod's own secrets and the CI runner's tokens.
pub const WITHHELD: &[&str] = &[
    "PRPOD_*",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
];

impl Tool {
    /// The tool's own variables (besides [`COMMON`]); a trailing `*` matches a prefix.
    pub fn variables(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Tool::Git => &["GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSH", "GIT_SSH_COMMAND", "SSH_AUTH_SOCK"],
            Tool::Helm => &["KUBECONFIG", "HELM_*", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"],
            Tool::Buildah => &[
                "CONTAINERS_CONF",
                "CONTAINERS_STORAGE_CONF",
                "CONTAINERS_REGISTRIES_CONF",
                "STORAGE_DRIVER",
                "STORAGE_OPTS",
            ],
            Tool::Docker => &[
                "DOCKER_HOST",
                "DOCKER_CONTEXT",
                "DOCKER_CONFIG",
                "DOCKER_CERT_PATH",
                "DOCKER_TLS_VERIFY",
                "DOCKER_TLS",
                "DOCKER_API_VERSION",
                "DOCKER_BUILDKIT",
                "BUILDX_*",
                "BUILDKIT_*",
            ],
            Tool::CredentialHelper => {
                &["DOCKER_CONFIG", "DBUS_SESSION_BUS_ADDRESS", "GNUPGHOME", "GPG_AGENT_INFO", "PASSWORD_STORE_DIR"]
            }
        };
        let cloud = matches!(self, Tool::Helm | Tool::CredentialHelper).then_some(CLOUD).unwrap_or(&[]);
        COMMON.iter().chain(own).chain(cloud).copied().collect()
    }
}

fn matches(pattern: &str, name: &OsStr) -> bool {
    let Some(name) = name.to_str() else { return false };
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Whether `name` may be passed to `tool`.
pub fn is_allowed(tool: Tool, name: &OsStr) -> bool {
    !WITHHELD.iter().any(|p| matches(p, name)) && tool.variables().iter().any(|p| matches(p, name))
}

/// The variables of `vars` (the process's environment, in production) that `tool` may see.
pub fn filter(tool: Tool, vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.into_iter().filter(|(k, _)| is_allowed(tool, k)).collect()
}

/// The variables of prpod's environment that `tool` may see. Use as
/// `cmd.env_clear().envs(child_env::allowed(Tool::Helm))`, then set the tool's own settings.
pub fn allowed(tool: Tool) -> Vec<(OsString, OsString)> {
    filter(tool, std::env::vars_os())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tool: Tool, vars: &[(&str, &str)]) -> Vec<String> {
        let vars = vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
        filter(tool, vars).into_iter().map(|(k, _)| k.into_string().unwrap()).collect()
    }

    #[test]
    fn secrets_reach_no_tool_and_each_tool_gets_its_own() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/ci"),
            ("LC_ALL", "C.UTF-8"),
            ("PRPOD_REGISTRY_PASSWORD", "s"),
            ("PRPOD_GIT_TOKEN", "s"),
            ("PRPOD_CACHE_KEY", "s"),
            ("GITHUB_TOKEN", "s"),
            ("ACTIONS_RUNTIME_TOKEN", "s"),
            ("KUBECONFIG", "/k"),
            ("HELM_DRIVER", "secret"),
            ("AWS_PROFILE", "ci"),
            ("DOCKER_HOST", "unix:///d"),
            ("CONTAINERS_CONF", "/c"),
            ("GIT_SSL_CAINFO", "/ca"),
            ("SOME_OTHER_SECRET", "s"),
        ];
        for tool in [Tool::Git, Tool::Helm, Tool::Buildah, Tool::Docker, Tool::CredentialHelper] {
            let got = names(tool, &vars);
            for common in ["PATH", "HOME", "LC_ALL"] {
                assert!(got.contains(&common.to_string()), "{tool:?} lacks {common}: {got:?}");
            }
            assert!(
                !got.iter().any(|n| n.contains("TOKEN")
                    || n.contains("PASSWORD")
                    || n.contains("KEY")
                    || n.contains("SECRET")),
                "{tool:?} got a secret: {got:?}"
            );
        }
        assert_eq!(names(Tool::Helm, &vars), ["PATH", "HOME", "LC_ALL", "KUBECONFIG", "HELM_DRIVER", "AWS_PROFILE"]);
        assert_eq!(names(Tool::Git, &vars), ["PATH", "HOME", "LC_ALL", "GIT_SSL_CAINFO"]);
        assert_eq!(names(Tool::Docker, &vars), ["PATH", "HOME", "LC_ALL", "DOCKER_HOST"]);
        assert_eq!(names(Tool::Buildah, &vars), ["PATH", "HOME", "LC_ALL", "CONTAINERS_CONF"]);
        // A prefix a tool may read cannot be used to smuggle a withheld name.
        assert!(!is_allowed(Tool::Helm, OsStr::new("PRPOD_HELM")));
    }
}
