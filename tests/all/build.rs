//! `prpod build` as a process on the service world: the example app (`examples/hello-web`) is
//! published to the world's git server, cloned with the token, built with `native` and
//! `buildah`, and pushed to the TLS + htpasswd registry (B) and the token registry (C). The
//! registry is then asked with skopeo, not prpod. Every run's stdout and stderr are checked for
//! the git token and the registry password; one run happens under `strace -f -e trace=execve` to
//! check every child's argv, and the clone cache is searched for the token.
//!
//! docker buildx cannot run here: `buildx_*_test_double` tests put a stand-in `docker` (a test
//! double, `tests/doubles/docker`) on PATH that records its argv and writes a metadata file;
//! `buildx_real_run_where_docker_buildx_works` runs the real thing where it exists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use prpod_test_support::{Registry, TempDir, World, unique_name, world};

use crate::{json, stderr};

/// The example app, copied so a test can change it.
pub(crate) fn app_copy() -> TempDir {
    let dir = TempDir::new("hello-web");
    let src = crate::repo_root().join("examples/hello-web");
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dir.path()).status().unwrap();
    assert!(st.success());
    dir
}

/// Publishes `dir` as a new repository on the world's git server; returns (clone URL, head SHA).
pub(crate) fn publish(w: &World, dir: &Path, name: &str) -> (String, String) {
    let url = w.git.publish(dir, name);
    (url.clone(), head_of(w, &url))
}

fn head_of(w: &World, url: &str) -> String {
    let out = w.git.git_with_token(&w.git.token).args(["ls-remote", url, "refs/heads/main"]).output().unwrap();
    assert!(out.status.success(), "ls-remote: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// One place for a test's prpod runs: a private HOME, clone cache and buildah storage, the
/// world's credentials in the environment (never on argv), and nothing else inherited.
pub(crate) struct Runner {
    home: TempDir,
    envs: Vec<(String, String)>,
    secrets: Vec<String>,
}

impl Runner {
    pub(crate) fn new(w: &World) -> Runner {
        let home = TempDir::new("prpod-home");
        let reg = &w.registry_tls;
        let plugin_cache = crate::repo_root().join("target/test-prpod-cache");
        let mut envs: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), home.path().display().to_string()),
            ("PRPOD_CACHE_DIR".into(), plugin_cache.display().to_string()),
            ("PRPOD_SOURCE_CACHE_DIR".into(), home.path().join("git").display().to_string()),
            ("PRPOD_GIT_USER".into(), w.git.user.clone()),
            ("PRPOD_GIT_TOKEN".into(), w.git.token.expose().to_string()),
            ("PRPOD_REGISTRY_USER".into(), reg.user.clone().unwrap()),
            ("PRPOD_REGISTRY_PASSWORD".into(), reg.password.as_ref().unwrap().expose().to_string()),
            ("PRPOD_REGISTRY_CA".into(), reg.ca.as_ref().unwrap().display().to_string()),
            ("PRPOD_BUILDAH_ROOT".into(), home.path().join("buildah/root").display().to_string()),
            ("PRPOD_BUILDAH_RUNROOT".into(), home.path().join("buildah/runroot").display().to_string()),
            ("PRPOD_BUILDAH_STORAGE_DRIVER".into(), "vfs".into()),
        ];
        if let Ok(tmp) = std::env::var("TMPDIR") {
            envs.push(("TMPDIR".into(), tmp));
        }
        let secrets = vec![w.git.token.expose().to_string(), reg.password.as_ref().unwrap().expose().to_string()];
        Runner { home, envs, secrets }
    }

    pub(crate) fn set(&mut self, k: &str, v: &str) {
        self.envs.retain(|(n, _)| n != k);
        self.envs.push((k.into(), v.into()));
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env_clear().envs(self.envs.iter().map(|(k, v)| (k, v))).current_dir(self.home.path());
        c
    }

    /// `prpod --output json build ARGS`, checked for leaked secrets.
    pub(crate) fn build(&self, args: &[&str]) -> Output {
        let out = self
            .command(Path::new(env!("CARGO_BIN_EXE_prpod")))
            .args(["--output", "json", "build"])
            .args(args)
            .output()
            .expect("run prpod");
        self.assert_no_secret(&out);
        out
    }

    fn assert_no_secret(&self, out: &Output) {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for s in &self.secrets {
            assert!(!text.contains(s.as_str()), "prpod printed a secret:\n{text}");
        }
    }
}

pub(crate) fn ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "prpod failed ({:?}):\n{}\n{}",
        out.status,
        stderr(out),
        String::from_utf8_lossy(&out.stdout)
    );
    json(out)
}

/// skopeo (not prpod) on registry `r`: the digest of `image`, or its error.
fn skopeo_digest(r: &Registry, image: &str) -> Result<String, String> {
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--raw"]);
    if !r.is_tls() {
        c.arg("--tls-verify=false");
    }
    if let Some(d) = &r.cert_dir {
        c.arg("--cert-dir").arg(d);
    }
    if let Some(a) = &r.authfile {
        c.arg("--authfile").arg(a);
    }
    let out = c.arg(format!("docker://{image}")).output().expect("run skopeo");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(prpod::clients::registry::sha256_digest(&out.stdout))
}

/// The tags of `repo` on `r` per skopeo; empty when the repository does not exist.
fn skopeo_tags(r: &Registry, repo: &str) -> Vec<String> {
    let mut c = Command::new("skopeo");
    c.arg("list-tags");
    if let Some(d) = &r.cert_dir {
        c.arg("--cert-dir").arg(d);
    }
    if let Some(a) = &r.authfile {
        c.arg("--authfile").arg(a);
    }
    let out = c.arg(format!("docker://{repo}")).output().expect("run skopeo");
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Tags"].as_array().map(|t| t.iter().map(|x| x.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// Checks a successful build's JSON against the registry: every PR tag at the printed digest.
fn assert_pushed(r: &Registry, v: &Value, image: &str, pr: u64, branch_tag: &str, sha: &str) -> String {
    assert_eq!(v["image"]["repository"], image, "{v:#}");
    let digest = v["image"]["digest"].as_str().unwrap().to_string();
    let tags = [format!("pr-{pr}"), branch_tag.to_string(), format!("sha-{}", &sha[..12])];
    assert_eq!(v["tags"]["primary"], tags[0]);
    for t in &tags {
        assert_eq!(skopeo_digest(r, &format!("{image}:{t}")).unwrap(), digest, "tag {t}");
    }
    let names: Vec<&str> = v["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["context", "tags", "source", "build", "push"]);
    assert!(v["phases"].as_array().unwrap().iter().all(|p| p["status"] == "ok" && p["duration_ms"].is_u64()));
    assert_eq!(v["context"]["sha"], sha);
    digest
}

#[test]
fn native_build_of_the_example_pushes_pr_tags_to_the_tls_registry() {
    let w = world();
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("native")));
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    let run = Runner::new(w);
    let base = format!("BASE={}", w.web_image_tls);
    let args = ["--repo-url", &url, "--pr", "7", "--branch", "feature/login", "--sha", &sha, "--image", &image];
    let out = run.build(&[&args[..], &["--build-arg", &base]].concat());
    let v = ok(&out);
    assert_eq!(v["backend"], "native", "auto picks native for a Dockerfile without RUN");
    assert!(stderr(&out).contains("backend native"), "it says which backend and why: {}", stderr(&out));
    let digest = assert_pushed(&w.registry_tls, &v, &image, 7, "br-feature-login", &sha);
    assert_eq!(v["layers"]["mounted"], 1, "the base layer is mounted, never downloaded: {v:#}");

    // The same commit again: nothing fetched, the same digest, no layer bytes uploaded.
    let again = ok(&run.build(&[&args[..], &["--build-arg", &base]].concat()));
    assert_eq!(again["image"]["digest"], digest.as_str());
    assert_eq!(again["layers"]["bytes_uploaded"], 0, "{again:#}");
    assert_eq!(again["layers"]["pushed"], 0);
}

/// Fork and Dependabot runs get empty secrets: an empty `PRPOD_REGISTRY_PASSWORD` (and user)
/// counts as unset, so a push to a registry that needs no credentials works as without them.
#[test]
fn an_empty_registry_password_counts_as_unset() {
    let w = world();
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("emptypw")));
    let image = w.registry_plain.image(&format!("acme/{}", unique_name("web")));
    let mut run = Runner::new(w);
    run.set("PRPOD_REGISTRY_PASSWORD", "");
    run.set("PRPOD_REGISTRY_USER", "");
    run.set("PRPOD_REGISTRY_PLAIN_HTTP", &w.registry_plain.host);
    let base = format!("BASE={}", w.web_image_plain);
    let args = ["--repo-url", &url, "--pr", "11", "--branch", "main", "--sha", &sha, "--image", &image];
    let v = ok(&run.build(&[&args[..], &["--build-arg", &base, "--backend", "native"]].concat()));
    assert_pushed(&w.registry_plain, &v, &image, 11, "br-main", &sha);
}

#[test]
fn buildah_build_uses_and_fills_the_registry_layer_cache() {
    let w = world();
    let app = app_copy();
    let repo_name = format!("build-test/{}", unique_name("buildah"));
    let (url, sha) = publish(w, app.path(), &repo_name);
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    let base = format!("BASE={}", w.web_image_tls);
    let build = |run: &Runner, sha: &str| {
        let args = ["--repo-url", &url, "--pr", "8", "--branch", "main", "--sha", sha, "--image", &image];
        run.build(&[&args[..], &["--build-arg", &base, "--backend", "buildah"]].concat())
    };
    let v = ok(&build(&Runner::new(w), &sha));
    assert_eq!(v["backend"], "buildah");
    assert_pushed(&w.registry_tls, &v, &image, 8, "br-main", &sha);
    // buildah keeps the PR's own cache (`cache-pr-8`) in its own repository, one tag per step.
    let cache_repo = format!("{image}/cache/cache-pr-8");
    assert!(!skopeo_tags(&w.registry_tls, &cache_repo).is_empty(), "no cache in {cache_repo}");

    // One file changes; a fresh machine (new buildah storage) builds the next commit.
    std::fs::write(app.path().join("www/index.html"), "<p>changed @GIT_SHA@</p>\n").unwrap();
    let (_, sha2) = publish(w, app.path(), &repo_name);
    assert_ne!(sha, sha2);
    let out = build(&Runner::new(w), &sha2);
    let v2 = ok(&out);
    assert!(stderr(&out).contains(&format!("layer cache from {cache_repo}")), "{}", stderr(&out));
    let line = stderr(&out).lines().find(|l| l.contains("buildah built")).unwrap_or_default().to_string();
    let cached: u32 =
        line.split(", ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(cached >= 3, "the unchanged steps come from the cache: {line}");
    assert_pushed(&w.registry_tls, &v2, &image, 8, "br-main", &sha2);
    assert_ne!(v2["image"]["digest"], v["image"]["digest"]);

    // The same machine again: its local layers serve, and the registry cache is not written (a
    // write pushes every step again, about doubling a warm build); `always` writes it anyway.
    let cached_tags = skopeo_tags(&w.registry_tls, &cache_repo).len();
    let mut warm_runner = Runner::new(w);
    std::fs::write(app.path().join("www/index.html"), "<p>warm @GIT_SHA@</p>\n").unwrap();
    let (_, sha3) = publish(w, app.path(), &repo_name);
    ok(&build(&warm_runner, &sha3));
    std::fs::write(app.path().join("www/index.html"), "<p>warm again @GIT_SHA@</p>\n").unwrap();
    let (_, sha4) = publish(w, app.path(), &repo_name);
    let out = build(&warm_runner, &sha4);
    ok(&out);
    assert!(stderr(&out).contains("the registry cache is not written"), "{}", stderr(&out));
    let after_warm = skopeo_tags(&w.registry_tls, &cache_repo).len();
    warm_runner.set("PRPOD_BUILDAH_CACHE_TO", "always");
    std::fs::write(app.path().join("www/index.html"), "<p>always @GIT_SHA@</p>\n").unwrap();
    let (_, sha5) = publish(w, app.path(), &repo_name);
    let out = build(&warm_runner, &sha5);
    ok(&out);
    assert!(!stderr(&out).contains("the registry cache is not written"), "{}", stderr(&out));
    assert!(skopeo_tags(&w.registry_tls, &cache_repo).len() > after_warm, "`always` wrote new cache steps");
    assert!(after_warm >= cached_tags);
}

#[test]
fn native_build_through_the_token_registry() {
    let w = world();
    let c = w.registry_token.clone();
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("token")));
    let image = c.image(&format!("acme/{}", unique_name("web")));
    let mut run = Runner::new(w);
    run.set("PRPOD_REGISTRY_USER", c.user.as_deref().unwrap());
    run.set("PRPOD_REGISTRY_PASSWORD", c.password.as_ref().unwrap().expose());
    run.secrets.push(c.password.as_ref().unwrap().expose().to_string());
    let base = format!("BASE={}", w.var("PRPOD_WEB_IMAGE_TOKEN").expect("the world's web image on C"));
    let args = ["--repo-url", &url, "--pr", "9", "--branch", "Feature/X", "--sha", &sha, "--image", &image];
    let v = ok(&run.build(&[&args[..], &["--build-arg", &base]].concat()));
    assert_pushed(&c, &v, &image, 9, "br-feature-x", &sha);
}

#[test]
fn odd_branches_give_valid_tags_and_an_uppercase_repository_is_normalised() {
    let w = world();
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("odd")));
    let run = Runner::new(w);
    let base = format!("BASE={}", w.web_image_tls);
    let name = unique_name("web");
    let upper = w.registry_tls.image(&format!("Acme/{}", name.to_uppercase()));
    let lower = upper.to_lowercase();
    let long = "x".repeat(300);
    for branch in [long.as_str(), "Feature/ÜBER--long/../x"] {
        let args = ["--repo-url", &url, "--pr", "10", "--branch", branch, "--sha", &sha, "--image", &upper];
        let out = run.build(&[&args[..], &["--build-arg", &base]].concat());
        let v = ok(&out);
        assert!(stderr(&out).contains("normalised to"), "{}", stderr(&out));
        assert_eq!(v["image"]["repository"], lower.as_str());
        let tag = v["tags"]["extra"][0].as_str().unwrap().to_string();
        assert!(tag.len() <= 128 && tag.starts_with("br-"), "{tag}");
        assert!(tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "{tag}");
        assert_eq!(
            skopeo_digest(&w.registry_tls, &format!("{lower}:{tag}")).unwrap(),
            v["image"]["digest"].as_str().unwrap()
        );
    }
}

/// Runs a build that must fail: exit `code`, an error naming `needle`, nothing in `image`.
fn assert_fails(run: &Runner, args: &[&str], image: &str, code: i32, needle: &str) -> Duration {
    let start = Instant::now();
    let out = run.build(args);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(code), "{}\n{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    let v = json(&out);
    let msg = v["error"].as_str().unwrap().to_string();
    assert!(msg.contains(needle), "error `{msg}` does not say `{needle}`");
    assert!(skopeo_tags(&world().registry_tls, image).is_empty(), "something was pushed to {image}");
    took
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn bad_input_is_a_clear_error_and_nothing_is_pushed() {
    let w = world();
    let app = app_copy();
    let repo_name = format!("build-test/{}", unique_name("bad"));
    let (url, sha) = publish(w, app.path(), &repo_name);
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    let base = format!("BASE={}", w.web_image_tls);
    let with = |sha: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--repo-url",
            &url,
            "--pr",
            "3",
            "--branch",
            "main",
            "--sha",
            sha,
            "--image",
            &image,
            "--build-arg",
            &base,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    let mut wrong = Runner::new(w);
    wrong.set("PRPOD_GIT_TOKEN", "wrong-token-123456");
    wrong.secrets.push("wrong-token-123456".into());
    let t = assert_fails(&wrong, &refs(&with(&sha, &[])), &image, 2, "refused the credentials");
    assert!(t < Duration::from_secs(10), "took {t:?}");

    let run = Runner::new(w);
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let t = assert_fails(&run, &refs(&with(unknown, &[])), &image, 2, "no such commit");
    assert!(t < Duration::from_secs(10), "took {t:?}");
    assert_fails(
        &run,
        &refs(&with(&sha, &["--dockerfile", "Containerfile"])),
        &image,
        2,
        "no Dockerfile at Containerfile",
    );

    // RUN under native names the line and the backends that build it.
    std::fs::write(app.path().join("Dockerfile.run"), "FROM scratch\nRUN true\n").unwrap();
    let (_, sha2) = publish(w, app.path(), &repo_name);
    assert_fails(
        &run,
        &refs(&with(&sha2, &["--dockerfile", "Dockerfile.run", "--backend", "native"])),
        &image,
        2,
        "Dockerfile.run:2",
    );

    // A token in the URL is refused without being repeated.
    let with_token = url.replacen("http://", &format!("http://{}:{}@", w.git.user, w.git.token), 1);
    let out = run.build(&["--repo-url", &with_token, "--branch", "main", "--sha", &sha, "--image", &image]);
    assert_eq!(out.status.code(), Some(2));
    assert!(json(&out)["error"].as_str().unwrap().contains("PRPOD_GIT_TOKEN"));
}

#[test]
fn unreachable_git_servers_fail_fast_and_name_the_server() {
    let w = world();
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    let mut run = Runner::new(w);
    run.set("PRPOD_SOURCE_CONNECT_TIMEOUT_SECS", "2");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    // A port nobody listens on: refused at once.
    let t = assert_fails(
        &run,
        &["--repo-url", "http://127.0.0.1:9/x.git", "--branch", "b", "--sha", sha, "--image", &image],
        &image,
        4,
        "127.0.0.1:9",
    );
    assert!(t < Duration::from_secs(10), "took {t:?}");
    // A server that accepts and never answers: the connect timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/x.git");
    let t = assert_fails(
        &run,
        &["--repo-url", &url, "--branch", "b", "--sha", sha, "--image", &image],
        &image,
        4,
        "no answer",
    );
    assert!(t < Duration::from_secs(10), "took {t:?}");
    drop(listener);
}

/// A git server that answers 503 twice (restarting behind a load balancer) is fetched from
/// on the third attempt; one that stays down fails with exit 4 after three attempts, naming
/// the server and pushing nothing. The 503s come from the fault proxy in front of the world's
/// real git server.
#[test]
fn a_git_server_answering_503_is_tried_again_then_given_up_on() {
    use crate::fault_proxy::{FaultProxy, Faults};
    let w = world();
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("retry")));
    let (upstream, path) = url.strip_prefix("http://").unwrap().split_once('/').unwrap();
    let run = Runner::new(w);
    let base = format!("BASE={}", w.web_image_tls);

    let flaky = FaultProxy::start(upstream, Faults { unavailable: 2, ..Default::default() });
    let via = format!("http://{}/{path}", flaky.addr);
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    let out = run.build(&[
        "--repo-url",
        &via,
        "--pr",
        "13",
        "--branch",
        "main",
        "--sha",
        &sha,
        "--image",
        &image,
        "--build-arg",
        &base,
    ]);
    let v = ok(&out);
    assert_eq!(v["context"]["sha"], sha);
    let log = flaky.log.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|l| l.ends_with("-> 503")).count(), 2, "{log:#?}");
    assert!(
        log.iter().any(|l| l.starts_with("POST") && l.contains("git-upload-pack") && l.ends_with("200")),
        "{log:#?}"
    );

    let down = FaultProxy::start(upstream, Faults { always_unavailable: true, ..Default::default() });
    let via = format!("http://{}/{path}", down.addr);
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    assert_fails(
        &run,
        &["--repo-url", &via, "--branch", "main", "--sha", &sha, "--image", &image],
        &image,
        4,
        &format!("{via} after 3 attempts"),
    );
    let log = down.log.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "one request per attempt (the first, info/refs, fails each time): {log:#?}");
}

#[test]
fn secrets_stay_out_of_child_argv_logs_and_the_clone_cache() {
    let w = world();
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("strace")));
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    let mut run = Runner::new(w);
    run.set("PRPOD_LOG", "prpod=debug");
    let trace = run.home.path().join("execve.trace");
    let base = format!("BASE={}", w.web_image_tls);
    let out = run
        .command(Path::new("strace"))
        .args(["-f", "-qq", "-s", "65536", "-e", "trace=execve", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_prpod"))
        .args(["--output", "json", "build", "--repo-url", &url, "--pr", "11", "--branch", "main", "--sha", &sha])
        .args(["--image", &image, "--build-arg", &base, "--backend", "buildah"])
        .output()
        .expect("strace is installed (Debian: apt-get install strace)");
    run.assert_no_secret(&out);
    ok(&out);
    let trace = std::fs::read_to_string(&trace).unwrap();
    let execs: Vec<&str> = trace.lines().filter(|l| l.contains("execve(")).collect();
    for program in ["\"git\"", "/git\"", "buildah"] {
        assert!(execs.iter().any(|l| l.contains(program)), "no {program} in the trace:\n{}", execs.join("\n"));
    }
    for s in &run.secrets {
        assert!(!trace.contains(s.as_str()), "a child's argv holds a secret:\n{trace}");
    }
    // Nothing in the clone cache (its .git config included) holds the token.
    let cache = run.home.path().join("git");
    let out = Command::new("grep").args(["-rlF", w.git.token.expose()]).arg(&cache).output().unwrap();
    assert!(out.stdout.is_empty(), "the clone cache holds the token: {}", String::from_utf8_lossy(&out.stdout));
    let configs = Command::new("sh").arg("-c").arg(format!("cat {}/*.git/config", cache.display())).output().unwrap();
    let configs = String::from_utf8_lossy(&configs.stdout);
    assert!(configs.contains("[core]") && !configs.contains(w.git.token.expose()), "{configs}");
}

/// The `docker` test double: records its argv, answers `buildx version/inspect/create`, writes
/// a metadata file for `buildx build/bake`.
fn docker_double(run: &mut Runner) -> PathBuf {
    let bin = run.home.path().join("double-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let src = crate::repo_root().join("tests/doubles/docker");
    std::fs::copy(&src, bin.join("docker")).unwrap();
    let log = run.home.path().join("docker-argv.log");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    run.set("PATH", &path);
    run.set("DOCKER_DOUBLE_LOG", &log.display().to_string());
    run.set("DOCKER_DOUBLE_STATE", &run.home.path().join("double-state").display().to_string());
    log
}

#[test]
fn buildx_backend_with_a_docker_test_double() {
    let w = world();
    let app = app_copy();
    std::fs::write(app.path().join("Dockerfile"), "FROM scratch\nCOPY www /www\nRUN [\"/www\"]\n").unwrap();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("buildx")));
    let image = "ghcr.io/acme/web";
    let mut run = Runner::new(w);
    let log = docker_double(&mut run);
    // auto: the Dockerfile has RUN and `docker buildx version` works, so buildx.
    let out =
        run.build(&["--repo-url", &url, "--pr", "12", "--branch", "feature/login", "--sha", &sha, "--image", image]);
    let v = ok(&out);
    assert_eq!(v["backend"], "buildx");
    assert!(stderr(&out).contains("Dockerfile:3 needs a builder; docker buildx is available"), "{}", stderr(&out));
    assert_eq!(v["image"]["digest"], "sha256:3f5b8e2c1a9d7b6e4f0c2a8d9e1b7c6a5f4e3d2c1b0a9f8e7d6c5b4a39281706");
    assert!(v["layers"].is_null(), "buildx pushes itself: {v:#}");
    let push = &v["phases"].as_array().unwrap()[4];
    assert_eq!((push["name"].as_str(), push["status"].as_str()), (Some("push"), Some("skipped")));
    let argv = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = argv.lines().collect();
    assert_eq!(calls[0], "buildx version");
    assert_eq!(calls[1], "buildx inspect prpod");
    assert_eq!(calls[2], "buildx create --name prpod --driver docker-container --bootstrap");
    let build = calls[3];
    for part in [
        "buildx build --builder prpod",
        "--cache-from type=registry,ref=ghcr.io/acme/web:cache-pr-12",
        "--cache-from type=registry,ref=ghcr.io/acme/web:cache-br-main",
        "--cache-to type=registry,ref=ghcr.io/acme/web:cache-pr-12,mode=max",
        "--tag ghcr.io/acme/web:pr-12 --tag ghcr.io/acme/web:br-feature-login",
        &format!("--tag ghcr.io/acme/web:sha-{}", &sha[..12]),
        "--push --provenance=false --metadata-file",
        &format!("--build-arg PRPOD_GIT_SHA={sha}"),
    ] {
        assert!(build.contains(part), "`{part}` missing from: {build}");
    }
    // The builder now exists: it is reused, not created again.
    let _ = std::fs::remove_file(&log);
    ok(&run.build(&["--repo-url", &url, "--pr", "12", "--branch", "feature/login", "--sha", &sha, "--image", image]));
    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(!argv.contains("buildx create"), "{argv}");
}

#[test]
fn buildx_real_run_where_docker_buildx_works() {
    let works = Command::new("docker").args(["buildx", "version"]).output().is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("docker buildx is not available here: the real buildx run is skipped (see the test double tests)");
        return;
    }
    let w = world();
    let app = app_copy();
    std::fs::write(
        app.path().join("Dockerfile"),
        format!("FROM {}\nRUN [\"/bin/true\"]\nCOPY www /www\n", w.web_image_tls),
    )
    .unwrap();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("buildx-real")));
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("web")));
    let run = Runner::new(w);
    let v = ok(&run.build(&[
        "--repo-url",
        &url,
        "--pr",
        "13",
        "--branch",
        "main",
        "--sha",
        &sha,
        "--image",
        &image,
        "--backend",
        "buildx",
    ]));
    assert_pushed(&w.registry_tls, &v, &image, 13, "br-main", &sha);
}

// --- Credentials go only where they belong (issue 12, section 3) -------------------------------

use prpod_test_support::http_double::{Answer, HttpDouble};

/// A git server that redirects the clone URL to another port (at once, or after it asked for
/// and got the token), where a server asks for credentials too: the token must never reach it.
#[test]
fn a_redirecting_git_server_never_passes_the_token_on() {
    use prpod::clients::git::{Credentials, GitError, Repo, Timeouts};
    let token = prpod::secret::Secret::new(format!("tok-{}", unique_name("git")));
    let other = HttpDouble::start(|r| match r.header("authorization") {
        None => Answer::status(401).header("WWW-Authenticate", "Basic realm=\"other\""),
        Some(_) => Answer::status(404),
    });
    let other_url = other.url();
    for (status, ask_first) in [(301, false), (302, false), (302, true)] {
        let target = other_url.clone();
        let origin = HttpDouble::start(move |r| match r.header("authorization") {
            None if ask_first => Answer::status(401).header("WWW-Authenticate", "Basic realm=\"origin\""),
            _ => Answer::status(status).header("Location", format!("{target}{}", r.path)),
        });
        let url = format!("{}/acme/web.git", origin.url());
        let dir = TempDir::new("redirected-clone");
        let creds = Credentials { username: "x-access-token".into(), token: token.clone() };
        let timeouts = Timeouts { connect: Duration::from_secs(10), stall: Duration::from_secs(10) };
        let repo = Repo::new(&dir.path().join("cache.git"), Some(creds), timeouts);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt
            .block_on(async {
                repo.init_bare().await?;
                repo.fetch_commit(&url, &"a".repeat(40), 1, &["refs/heads/main".into()]).await
            })
            .unwrap_err();
        // The other port never got the token, in any header...
        for s in other.seen() {
            assert!(s.header("authorization").is_none(), "{status}: the token went to the other origin: {s:?}");
        }
        // ...the origin got it when it asked (the helper answers for the clone URL)...
        if ask_first {
            let seen = origin.seen();
            assert!(seen.iter().any(|s| s.header("authorization").is_some()), "{status}: {seen:?}");
        }
        // ...and the redirect is an error that says what to do.
        assert!(matches!(err, GitError::Redirected { .. }), "{status}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains("redirect") && !msg.contains(token.expose()), "{msg}");
    }
}

/// `git http-backend` as a CGI behind an [`HttpDouble`], with the client's `Git-Protocol` header
/// dropped: the server speaks protocol v0, which refuses a `want` of a commit no ref advertises
/// (as many self-hosted forges do), so prpod must fall back to fetching the branch.
fn protocol_v0_git_server(root: PathBuf) -> HttpDouble {
    HttpDouble::start(move |r| {
        use std::io::Write;
        let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
        let mut cgi = Command::new("git");
        cgi.arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", &r.method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("CONTENT_TYPE", r.header("content-type").unwrap_or(""))
            .env("CONTENT_LENGTH", r.body.len().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(e) = r.header("content-encoding") {
            cgi.env("HTTP_CONTENT_ENCODING", e);
        }
        let mut child = cgi.spawn().expect("start git http-backend");
        child.stdin.take().unwrap().write_all(&r.body).unwrap();
        let out = child.wait_with_output().unwrap();
        let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").expect("CGI headers");
        let mut answer = Answer::status(200).body(out.stdout[split + 4..].to_vec());
        for line in String::from_utf8_lossy(&out.stdout[..split]).split("\r\n") {
            let Some((k, v)) = line.split_once(':') else { continue };
            match k.trim() {
                "Status" => answer.status = v.trim()[..3].parse().unwrap(),
                k => answer = answer.header(k, v.trim()),
            }
        }
        answer
    })
}

/// A commit more than `depth` + 100 commits behind the branch tip, on a server that refuses
/// fetches by SHA: the branch is fetched at depth 1, deepened by 100, then unshallowed — the
/// last step used to be skipped (it looked for `.git/shallow` in the bare clone cache), so the
/// commit was reported unknown.
#[test]
fn an_old_commit_is_fetched_whole_when_the_server_refuses_fetch_by_sha() {
    use prpod::clients::git::{GitError, Repo, Timeouts};
    let served = TempDir::new("git-v0");
    let bare = served.path().join("acme/deep.git");
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}: {}", prpod_test_support::describe(c), stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(&bare));
    // 130 commits on main, written in one go
    let mut stream = String::new();
    for i in 1..=130 {
        let msg = format!("commit {i}\n");
        let content = format!("{i}\n");
        stream.push_str(&format!(
            "commit refs/heads/main\ncommitter t <t@prpod.invalid> {} +0000\ndata {}\n{msg}M 644 inline f\ndata {}\n{content}\n",
            1_700_000_000 + i,
            msg.len(),
            content.len()
        ));
    }
    let mut fi = Command::new("git");
    fi.arg("--git-dir").arg(&bare).args(["fast-import", "--quiet"]);
    let out = prpod_test_support::run_with_stdin(&mut fi, stream.as_bytes());
    assert!(out.status.success(), "fast-import: {}", stderr(&out));
    let old = ok(Command::new("git").arg("--git-dir").arg(&bare).args(["rev-parse", "main~125"]));

    let server = protocol_v0_git_server(served.path().to_path_buf());
    let url = format!("{}/acme/deep.git", server.url());
    let dir = TempDir::new("deep-clone");
    let timeouts = Timeouts { connect: Duration::from_secs(20), stall: Duration::from_secs(20) };
    let repo = Repo::new(&dir.path().join("cache.git"), None, timeouts);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    rt.block_on(async {
        repo.init_bare().await?;
        repo.fetch_commit(&url, &old, 1, &["refs/heads/main".into()]).await?;
        assert!(!repo.is_shallow().await?, "the cache is still shallow after --unshallow");
        repo.checkout_into(&work, &old).await
    })
    .unwrap_or_else(|e: GitError| panic!("fetching {old} (125 commits behind main) failed: {e}"));
    assert_eq!(std::fs::read_to_string(work.join("f")).unwrap(), "5\n");
    // Four fetches (each starts with the ref advertisement): by SHA (refused), the branch at depth
    // 1, --deepen=100, --unshallow.
    let fetches = server.seen().iter().filter(|r| r.method == "GET" && r.path.contains("/info/refs")).count();
    assert_eq!(
        fetches,
        4,
        "{:?}",
        server.seen().iter().map(|r| format!("{} {}", r.method, r.path)).collect::<Vec<_>>()
    );
}

/// A fake `helm` (named by PRPOD_HELM) that writes its environment to `dump` and answers
/// `version` and `template` like Helm 3 (an empty chart's output); everything else fails as if
/// the cluster were unreachable.
fn env_dumping_helm(dir: &Path, dump: &Path) -> PathBuf {
    let helm = dir.join("helm");
    std::fs::write(
        &helm,
        format!(
            "#!/bin/sh\nenv >> '{}'\necho '--- helm' \"$1\" >> '{}'\ncase \"$1\" in\n  version) echo v3.18.0 ;;\n  \
             template) echo '# Source: x/templates/cm.yaml'; printf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  \
             name: env-probe\\n' ;;\n  *) echo 'Error: Kubernetes cluster unreachable' >&2; exit 1 ;;\nesac\n",
            dump.display(),
            dump.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    helm
}

#[test]
fn children_get_none_of_prpods_secrets_in_their_environment() {
    let w = world();
    let mut run = Runner::new(w);
    let dump = run.home.path().join("helm-env.txt");
    let helm = env_dumping_helm(run.home.path(), &dump);
    // The world's git token (the clone needs it), and made-up values for the rest.
    let secrets = [
        ("PRPOD_REGISTRY_PASSWORD", format!("regpw-{}", unique_name("s"))),
        ("PRPOD_GIT_TOKEN", w.git.token.expose().to_string()),
        ("GITHUB_TOKEN", format!("ghs_{}", unique_name("s"))),
        ("PRPOD_CACHE_KEY", format!("cachekey-{}", unique_name("s"))),
    ];
    for (k, v) in &secrets {
        run.set(k, v);
    }
    // Its own plugin cache: entries MACed with this cache key must not meet other tests' key.
    run.set("PRPOD_CACHE_DIR", &run.home.path().join("plugin-cache").display().to_string());
    run.set("PRPOD_HELM", &helm.display().to_string());
    run.set("KUBECONFIG", &w.kubeconfig.display().to_string());
    run.set("LANG", "C.UTF-8");
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("envprobe")));
    // A plan reads the PR's commit: a real one on the world's git server.
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("envprobe")));
    let out = run
        .command(Path::new(env!("CARGO_BIN_EXE_prpod")))
        .args(["plan", "--repo-url", &url, "--pr", "12", "--branch", "main"])
        .args(["--sha", &sha, "--image", &image])
        .output()
        .unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let dumped = std::fs::read_to_string(&dump).unwrap_or_default();
    assert!(dumped.contains("--- helm template"), "the fake helm rendered nothing:\n{printed}\n{dumped}");
    for (name, value) in &secrets {
        assert!(!dumped.contains(value.as_str()), "helm saw {name}:\n{dumped}");
        assert!(!dumped.contains(&format!("{name}=")), "helm saw {name}:\n{dumped}");
        assert!(!printed.contains(value.as_str()), "prpod printed {name}");
    }
    // What it needs is there: where programs are, its kubeconfig, the locale.
    for needed in ["PATH=", "HOME=", "LANG=C.UTF-8", &format!("KUBECONFIG={}", w.kubeconfig.display())] {
        assert!(dumped.lines().any(|l| l.starts_with(needed)), "helm lacks {needed}:\n{dumped}");
    }
}

/// `prpod plan` (with the env-dumping fake helm): a pull Secret only from pull credentials or
/// the operator's explicit `pull_with_push_credentials`, and a warning when its credential is a
/// `ghs_` token that dies with the job.
#[test]
fn the_pull_secret_comes_from_pull_credentials_only_and_short_lived_ones_warn() {
    let w = world();
    let image = w.registry_tls.image(&format!("acme/{}", unique_name("pullsecret")));
    let app = app_copy();
    let (url, sha) = publish(w, app.path(), &format!("build-test/{}", unique_name("pullsecret")));
    let plan = |extra: &[(&str, &str)]| {
        let mut run = Runner::new(w);
        let helm = env_dumping_helm(run.home.path(), &run.home.path().join("helm-env.txt"));
        run.set("PRPOD_HELM", &helm.display().to_string());
        run.set("KUBECONFIG", &w.kubeconfig.display().to_string());
        for (k, v) in extra {
            run.set(k, v);
            run.secrets.push(v.to_string());
        }
        let out = run
            .command(Path::new(env!("CARGO_BIN_EXE_prpod")))
            .args(["plan", "--repo-url", &url, "--pr", "12", "--branch", "main"])
            .args(["--sha", &sha, "--image", &image])
            .output()
            .unwrap();
        run.assert_no_secret(&out);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(text.contains("would wait up to"), "the plan did not get to the deploy:\n{text}");
        text
    };
    let writes = |t: &str| t.contains("would write the pull Secret");
    // The push credentials alone: no pull Secret.
    let t = plan(&[]);
    assert!(!writes(&t), "{t}");
    // Pull credentials: a pull Secret, no warning.
    let t = plan(&[("PRPOD_REGISTRY_PULL_USER", "reader"), ("PRPOD_REGISTRY_PULL_PASSWORD", "read-only-pw")]);
    assert!(writes(&t) && !t.contains("short-lived"), "{t}");
    // The push credentials by the operator's choice, a ghs_ token: a pull Secret and a warning.
    let t = plan(&[("PRPOD_REGISTRY_PULL_WITH_PUSH_CREDENTIALS", "true"), ("PRPOD_REGISTRY_PASSWORD", "ghs_job0nly")]);
    assert!(writes(&t), "{t}");
    assert!(t.contains("short-lived") && t.contains("ghs_") && t.contains("pull_username"), "{t}");
}
