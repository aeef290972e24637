//! HTTP to registries: TLS and plain-HTTP hosts, the auth challenge (basic or Bearer token with
//! pull/push/mount scopes), and retries with backoff that honours `Retry-After`.
//!
//! Written here rather than taken from oci-client because its token request covers one
//! repository and one operation (a cross-repository mount needs `pull` on the source too), it
//! drops token-service errors (a wrong password surfaces as a bare 401 later), and its errors
//! drop the `Retry-After` header. Every operation is a closure the retry loop can replay whole:
//! a blob upload that loses its connection half-way starts a fresh upload session.
//!
//! Where credentials go (as docker and containerd do it):
//! - `Authorization` is attached only to requests for the origin (scheme, host and port) of the
//!   registry that challenged. An upload `Location`, a redirect or a blob URL on another origin
//!   (a storage bucket, a CDN, a hostile registry) gets none; reqwest drops the header on a
//!   redirect to another origin, and [`Transport::send`] adds none to a URL on another origin.
//! - A Bearer realm on another host gets the registry's basic credentials: that is the token
//!   flow (Docker Hub's realm is `auth.docker.io`), but only over HTTPS or to a host listed in
//!   `plain_http`.
//! - Nothing is sent over plain HTTP to a host that is not in `plain_http`: not a request, a
//!   `Location`, a redirect nor a realm.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};

use super::credentials::{Access, CredentialResolver, Credentials, Resolved};
use super::{RegistryError, RegistryOptions};
use crate::secret::Secret;

/// The outcome of one attempt at an operation.
pub(crate) enum Attempt {
    /// A transient failure (5xx, 429, a refused or dropped connection): try again after
    /// `after` (the server's `Retry-After`) or the policy's backoff.
    Retry { detail: String, after: Option<Duration> },
    /// The auth challenge changed (first contact, an expired token): replay at once; does not
    /// count against the retry budget.
    Reauth,
    /// A failure retrying cannot fix.
    Fail(RegistryError),
}

impl From<RegistryError> for Attempt {
    fn from(e: RegistryError) -> Attempt {
        Attempt::Fail(e)
    }
}

/// A retry that is about to happen, for progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryNotice {
    /// The operation (`upload blob sha256:...`).
    pub what: String,
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// How long prpod waits before the next one.
    pub wait: Duration,
    /// Why (`503 Service Unavailable`, `connection reset`).
    pub reason: String,
}

#[derive(Debug, Clone)]
enum Challenge {
    /// No request made yet.
    Unknown,
    /// The registry answered without asking for credentials.
    Open,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Default)]
struct HostState {
    challenge: Option<Challenge>,
    /// Resolved once per kind of access (pull credentials may differ from push ones).
    credentials: HashMap<Access, Resolved>,
    /// Bearer tokens by scope set.
    tokens: HashMap<String, (Secret, Instant)>,
}

/// The HTTP side of [`super::RegistryClient`].
pub(crate) struct Transport {
    pub(crate) http: reqwest::Client,
    pub(crate) opts: RegistryOptions,
    creds: CredentialResolver,
    hosts: Mutex<HashMap<String, HostState>>,
}

/// `repository:NAME:pull` — reading a repository.
pub(crate) fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// `repository:NAME:pull,push` — writing a repository (reads come with it: HEAD before push).
pub(crate) fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// Whether a request needing `scopes` writes (any `push` action) or only reads.
fn access_of(scopes: &[String]) -> Access {
    let writes =
        scopes.iter().any(|s| s.rsplit(':').next().is_some_and(|actions| actions.split(',').any(|a| a == "push")));
    if writes { Access::Push } else { Access::Pull }
}

impl Transport {
    pub(crate) fn new(opts: RegistryOptions, creds: CredentialResolver) -> Result<Transport, RegistryError> {
        // One HTTP client per distinct set of options in a process: building one loads the
        // system's root certificates (hundreds of files, tens of ms), and a run makes several
        // registry clients (push, pull, the deploy's digest lookup). Credentials are per request,
        // so clients with other credentials share the connection pool safely.
        static CLIENTS: std::sync::OnceLock<Mutex<HashMap<String, reqwest::Client>>> = std::sync::OnceLock::new();
        let key =
            format!("{:?}|{:?}|{:?}|{:?}", opts.connect_timeout, opts.read_timeout, opts.ca_file, opts.plain_http);
        let clients = CLIENTS.get_or_init(Default::default);
        if let Some(http) = clients.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned() {
            return Ok(Transport { http, opts, creds, hosts: Mutex::new(HashMap::new()) });
        }
        let http = Self::http_client(&opts)?;
        clients.lock().unwrap_or_else(|p| p.into_inner()).insert(key, http.clone());
        Ok(Transport { http, opts, creds, hosts: Mutex::new(HashMap::new()) })
    }

    fn http_client(opts: &RegistryOptions) -> Result<reqwest::Client, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("prpod/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(ca) = &opts.ca_file {
            let pem = crate::input::read_regular_file(ca, crate::input::MAX_CONFIG_BYTES, "registry CA file")
                .map_err(|e| RegistryError::io("read the registry CA file", ca, e.into_io()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Config(format!("{} is not a PEM certificate bundle: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(RegistryError::Config(format!("{} holds no PEM certificate", ca.display())));
            }
            builder = builder.tls_certs_merge(certs);
        }
        // Redirects: at most 10, never down to plain HTTP on a host not in `plain_http`.
        // reqwest itself drops `Authorization` when a redirect leaves the origin.
        let plain = opts.plain_http.clone();
        builder = builder.redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else if let Some(refused) = insecure(&plain, attempt.url()) {
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        }));
        builder.build().map_err(|e| RegistryError::Config(format!("cannot set up HTTPS: {e}")))
    }

    pub(crate) fn credentials_resolver(&self) -> &CredentialResolver {
        &self.creds
    }

    /// `https://HOST` or, for hosts configured as plain HTTP, `http://HOST`.
    pub(crate) fn base_url(&self, host: &str) -> String {
        let plain = self.opts.plain_http.iter().any(|h| h == host);
        format!("{}://{host}", if plain { "http" } else { "https" })
    }

    /// Whether `url` is on the origin prpod speaks to for `host` ([`Transport::base_url`]): the
    /// only origin that gets `host`'s credentials.
    fn same_origin(&self, host: &str, url: &Url) -> bool {
        Url::parse(&self.base_url(host)).is_ok_and(|base| {
            base.scheme() == url.scheme()
                && base.host_str() == url.host_str()
                && base.port_or_known_default() == url.port_or_known_default()
        })
    }

    /// Refuses `url` when it is plain HTTP to a host not in `plain_http`.
    fn check_secure(&self, host: &str, what: &str, url: &Url) -> Result<(), Attempt> {
        match insecure(&self.opts.plain_http, url) {
            None => Ok(()),
            Some(detail) => Err(Attempt::Fail(RegistryError::Insecure {
                host: host.to_string(),
                what: what.to_string(),
                origin: origin(url),
                detail,
            })),
        }
    }

    async fn credentials(&self, host: &str, access: Access) -> Result<Resolved, RegistryError> {
        if let Some(c) = self.state(host, |s| s.credentials.get(&access).cloned()) {
            return Ok(c);
        }
        let resolved = self.creds.resolve_for(host, access).await?;
        self.state(host, |s| s.credentials.insert(access, resolved.clone()));
        Ok(resolved)
    }

    fn state<T>(&self, host: &str, f: impl FnOnce(&mut HostState) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        f(hosts.entry(host.to_string()).or_default())
    }

    /// The secrets to scrub from server text for `host`.
    fn scrub(&self, host: &str, text: &str) -> String {
        let mut out = text.to_string();
        for resolved in self.state(host, |s| s.credentials.values().cloned().collect::<Vec<_>>()) {
            if let Credentials::Basic { password, .. } = &resolved.credentials {
                out = password.scrub(&out);
            }
        }
        out.chars().take(300).collect()
    }

    /// The `Authorization` header value for a request to `host` needing `scopes`, fetching a
    /// Bearer token if the registry asked for one and none is cached; `true` when the token was
    /// cached (so a 401 may just mean it expired).
    async fn authorization(&self, host: &str, scopes: &[String]) -> Result<(Option<Secret>, bool), Attempt> {
        let challenge = self.state(host, |s| s.challenge.clone()).unwrap_or(Challenge::Unknown);
        match challenge {
            Challenge::Unknown | Challenge::Open => Ok((None, false)),
            Challenge::Basic => match self.credentials(host, access_of(scopes)).await?.credentials {
                Credentials::Basic { username, password } => Ok((Some(basic(&username, &password)), false)),
                Credentials::Anonymous => Ok((None, false)),
            },
            Challenge::Bearer { realm, service } => {
                let key = scopes.join(" ");
                let cached = self.state(host, |s| s.tokens.get(&key).filter(|(_, exp)| *exp > Instant::now()).cloned());
                if let Some((token, _)) = cached {
                    return Ok((Some(Secret::new(format!("Bearer {}", token.expose()))), true));
                }
                let (token, ttl) = self.fetch_token(host, &realm, service.as_deref(), scopes).await?;
                // Renew a little early so a token does not expire between check and use.
                let expiry = Instant::now() + ttl.saturating_sub(Duration::from_secs(10)).max(Duration::from_secs(5));
                self.state(host, |s| s.tokens.insert(key, (token.clone(), expiry)));
                Ok((Some(Secret::new(format!("Bearer {}", token.expose()))), false))
            }
        }
    }

    /// The Bearer token flow: GET REALM?service=...&scope=... with the basic credentials (or
    /// anonymously), answer `{"token"|"access_token", "expires_in"}`.
    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(Secret, Duration), Attempt> {
        let realm_url = Url::parse(realm).map_err(|e| {
            Attempt::Fail(RegistryError::Protocol {
                host: host.to_string(),
                what: "get a token".into(),
                detail: format!("the challenge names a realm that is not a URL ({e})"),
            })
        })?;
        // The basic credentials go to the realm (the token flow), so the realm must be as safe
        // as the registry: HTTPS, or a host the operator listed as plain HTTP.
        self.check_secure(host, "get a token from the realm the registry named", &realm_url)?;
        let resolved = self.credentials(host, access_of(scopes)).await?;
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut req = self.http.get(realm_url).query(&query);
        if let Credentials::Basic { username, password } = &resolved.credentials {
            req = req.header(AUTHORIZATION, basic(username, password).expose());
        }
        let resp = req.send().await.map_err(|e| self.send_error(host, e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let body = resp.text().await.unwrap_or_default();
            return Err(Attempt::Fail(RegistryError::Unauthorized {
                host: host.to_string(),
                source_desc: resolved.source.clone(),
                detail: format!("token service {status}: {}", self.scrub(host, body.trim())),
            }));
        }
        if let Some(retry) = retryable(&resp) {
            return Err(retry);
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(Attempt::Fail(RegistryError::Protocol {
                host: host.to_string(),
                what: "get a token".into(),
                detail: format!("token service {status}: {}", self.scrub(host, body.trim())),
            }));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer =
            resp.json().await.map_err(|e| Attempt::Retry { detail: e.to_string(), after: None })?;
        let token = answer.token.or(answer.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
            Attempt::Fail(RegistryError::Protocol {
                host: host.to_string(),
                what: "get a token".into(),
                detail: "the token service answered without a token".into(),
            })
        })?;
        // The distribution spec's default lifetime when the service does not say.
        Ok((Secret::new(token), Duration::from_secs(answer.expires_in.unwrap_or(60))))
    }

    /// Sends one request to `host` with the credentials `scopes` need. A 401 teaches the
    /// challenge and asks for a replay ([`Attempt::Reauth`]) unless the same kind of
    /// credentials were just refused; 5xx and 429 become [`Attempt::Retry`]. Any other status is
    /// returned for the caller to judge.
    ///
    /// Only a request for `host`'s own origin carries credentials; one for another origin (an
    /// upload `Location` pointing elsewhere) is sent without, and its 401 teaches nothing. Plain
    /// HTTP to a host not in `plain_http` is refused before anything is sent.
    pub(crate) async fn send(&self, host: &str, scopes: &[String], req: RequestBuilder) -> Result<Response, Attempt> {
        let (client, req) = req.build_split();
        let mut req = req.map_err(|e| {
            Attempt::Fail(RegistryError::Protocol {
                host: host.to_string(),
                what: "build a request".into(),
                detail: error_chain(&e),
            })
        })?;
        self.check_secure(host, "send a request", req.url())?;
        if !self.same_origin(host, req.url()) {
            let resp = client.execute(req).await.map_err(|e| self.send_error(host, e))?;
            if let Some(retry) = retryable(&resp) {
                return Err(retry);
            }
            return Ok(resp);
        }
        let (auth, cached) = self.authorization(host, scopes).await?;
        if let Some(value) = &auth {
            let mut header = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
                Attempt::Fail(RegistryError::Credentials {
                    source_desc: format!("the credentials for {host}"),
                    detail: "they hold a character an HTTP header cannot carry".into(),
                })
            })?;
            header.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, header);
        }
        let resp = client.execute(req).await.map_err(|e| self.send_error(host, e))?;
        let known = self.state(host, |s| s.challenge.clone()).unwrap_or(Challenge::Unknown);
        if resp.status() != StatusCode::UNAUTHORIZED {
            if matches!(known, Challenge::Unknown) {
                self.state(host, |s| s.challenge = Some(Challenge::Open));
            }
            if let Some(retry) = retryable(&resp) {
                return Err(retry);
            }
            return Ok(resp);
        }
        let header = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = resp.text().await.unwrap_or_default();
        let resolved = self.credentials(host, access_of(scopes)).await?;
        let anonymous = resolved.credentials == Credentials::Anonymous;
        if let Some(c) = parse_challenge(&header) {
            let kind = |c: &Challenge| std::mem::discriminant(c);
            if kind(&c) != kind(&known) || auth.is_none() {
                // First contact (this request's or a concurrent one's), or the registry switched
                // schemes: learn, and replay if that can help (basic without credentials cannot).
                let can_help = !(matches!(c, Challenge::Basic) && anonymous);
                self.state(host, |s| {
                    s.challenge = Some(c);
                    s.tokens.clear();
                });
                if can_help {
                    // The 401's body is read, so its connection goes back to the pool, but from
                    // the connection's own task: without a yield the replay often finds no idle
                    // connection and opens (and pays the TLS handshake of) a second one.
                    tokio::task::yield_now().await;
                    return Err(Attempt::Reauth);
                }
            } else if cached {
                // A cached token may have expired: fetch a fresh one once.
                self.state(host, |s| s.tokens.clear());
                return Err(Attempt::Reauth);
            }
        }
        let detail = match self.scrub(host, body.trim()) {
            d if d.is_empty() => "Unauthorized".to_string(),
            d => d,
        };
        if anonymous {
            return Err(Attempt::Fail(RegistryError::Unauthorized {
                host: host.to_string(),
                source_desc: "(none were given: set the registry password or token, or a docker config)".into(),
                detail: format!("401 {detail}"),
            }));
        }
        if header.contains("insufficient_scope") {
            return Err(Attempt::Fail(RegistryError::Denied {
                host: host.to_string(),
                repository: scopes.join(" "),
                action: "access".into(),
                detail,
            }));
        }
        Err(Attempt::Fail(RegistryError::Unauthorized {
            host: host.to_string(),
            source_desc: resolved.source.clone(),
            detail: format!("401 {detail}"),
        }))
    }

    /// Forgets cached tokens for `host` (after an unexpected 401 mid-operation).
    #[allow(dead_code)]
    pub(crate) fn forget_tokens(&self, host: &str) {
        self.state(host, |s| s.tokens.clear());
    }

    /// What a failed `send` means: an untrusted certificate is the user's to fix; anything
    /// else on the wire (refused, reset, timed out) is worth another try.
    pub(crate) fn send_error(&self, host: &str, e: reqwest::Error) -> Attempt {
        let detail = error_chain(&e);
        if e.is_redirect() {
            // A redirect refused by the policy (plain HTTP, a loop): another try ends the same.
            return Attempt::Fail(RegistryError::Protocol {
                host: host.to_string(),
                what: "follow a redirect".into(),
                detail,
            });
        }
        let lower = detail.to_ascii_lowercase();
        if lower.contains("certificate") || lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
            return Attempt::Fail(RegistryError::Tls { host: host.to_string(), detail });
        }
        Attempt::Retry { detail, after: None }
    }

    /// Runs `op` until it succeeds, fails for good, or the retry budget is spent; waits between
    /// attempts by the server's `Retry-After` or exponential backoff.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        host: &str,
        what: &str,
        notify: &(dyn Fn(RetryNotice) + Send + Sync),
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let policy = &self.opts.retry;
        let start = Instant::now();
        let mut attempt = 0;
        let mut reauths = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Reauth) if reauths < 3 => reauths += 1,
                Err(Attempt::Reauth) => {
                    return Err(RegistryError::Protocol {
                        host: host.to_string(),
                        what: what.to_string(),
                        detail: "the registry keeps changing its authentication challenge".into(),
                    });
                }
                Err(Attempt::Retry { detail, after }) => {
                    attempt += 1;
                    if attempt >= policy.attempts {
                        return Err(RegistryError::Unavailable {
                            host: host.to_string(),
                            what: what.to_string(),
                            detail,
                            attempts: attempt,
                            elapsed: start.elapsed(),
                        });
                    }
                    let backoff =
                        policy.initial_backoff.saturating_mul(1 << (attempt - 1).min(16)).min(policy.max_backoff);
                    let wait = after.map_or(backoff, |a| a.min(policy.max_retry_after));
                    notify(RetryNotice { what: what.to_string(), attempt, wait, reason: detail.clone() });
                    tracing::debug!(host, what, attempt, ?wait, reason = detail, "retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// A non-success answer the caller did not expect, as an error (403 is a denial, 404 a
    /// missing thing, the rest a protocol error).
    pub(crate) async fn unexpected(&self, host: &str, what: &str, repository: &str, resp: Response) -> Attempt {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let detail = format!("{status}: {}", self.scrub(host, body.trim()));
        Attempt::Fail(match status {
            StatusCode::FORBIDDEN => RegistryError::Denied {
                host: host.to_string(),
                repository: repository.to_string(),
                action: what.to_string(),
                detail,
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound { host: host.to_string(), what: what.to_string(), detail },
            _ => RegistryError::Protocol { host: host.to_string(), what: what.to_string(), detail },
        })
    }
}

/// Why `url` may not be used: plain HTTP to a host (`host:port`) not in `plain_http`, or a
/// scheme other than HTTP(S). `None` when it may.
pub(crate) fn insecure(plain_http: &[String], url: &Url) -> Option<String> {
    match url.scheme() {
        "https" => None,
        "http" => {
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(80);
            // `url` drops a default port (`:80`), so a bare host matches only that one.
            let listed =
                plain_http.iter().any(|h| *h == format!("{host}:{port}") || (url.port().is_none() && h == host));
            (!listed).then(|| {
                format!(
                    "plain HTTP to {host}:{port}, which is not in `registry.plain_http` (only HTTPS, or the hosts \
                     listed there, are spoken to)"
                )
            })
        }
        other => Some(format!("the `{other}` scheme (only HTTPS, or plain HTTP to `registry.plain_http` hosts)")),
    }
}

/// `scheme://host:port` of `url`: what a message may say of a URL (its path and query may hold
/// an upload session's state).
fn origin(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{}://{host}:{p}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

fn basic(username: &str, password: &Secret) -> Secret {
    let raw = format!("{username}:{}", password.expose());
    Secret::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw)))
}

/// 5xx and 429 are worth retrying; `Retry-After` (seconds) says when.
fn retryable(resp: &Response) -> Option<Attempt> {
    let status = resp.status();
    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
        return None;
    }
    let after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some(Attempt::Retry { detail: status.to_string(), after })
}

/// `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            let realm = params.get("realm")?.clone();
            Some(Challenge::Bearer { realm, service: params.get("service").cloned() })
        }
        _ => None,
    }
}

/// `k="v",k2=v2` (quoted values may hold commas).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start_matches(',').trim();
    }
    out
}

/// An error and its causes on one line (`error sending request: connection refused`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_listed_hosts() {
        let plain = vec!["127.0.0.1:5000".to_string(), "localhost".to_string()];
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(insecure(&plain, &u("https://ghcr.io/v2/")), None);
        assert_eq!(insecure(&plain, &u("http://127.0.0.1:5000/v2/")), None);
        assert_eq!(insecure(&plain, &u("http://localhost/v2/")), None);
        let refused = insecure(&plain, &u("http://127.0.0.1:5001/v2/x?_state=abc")).unwrap();
        assert!(refused.contains("127.0.0.1:5001") && refused.contains("registry.plain_http"), "{refused}");
        assert!(insecure(&plain, &u("http://ghcr.io/token")).is_some());
        assert!(insecure(&plain, &u("ftp://127.0.0.1:5000/")).is_some());
        assert_eq!(origin(&u("http://127.0.0.1:5001/v2/x?_state=abc")), "http://127.0.0.1:5001");
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        match c {
            Some(Challenge::Bearer { realm, service }) => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_challenge(r#"Basic realm="test-registry""#), Some(Challenge::Basic)));
        assert!(parse_challenge("Negotiate").is_none());
        let p = parse_params(r#"realm="r",error="insufficient_scope",scope="repository:x:pull,push""#);
        assert_eq!(p["scope"], "repository:x:pull,push");
        assert_eq!(p["error"], "insufficient_scope");
    }
}
