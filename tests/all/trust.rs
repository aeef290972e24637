//! The pull request is untrusted input (issue 12): what a PR's own files may and may not decide.
//! A repository `prpod.toml` that names a program, a credential source, a cluster or a policy is
//! refused; a working-directory `prpod.toml` in GitHub Actions is the repository's; a fork PR with
//! secrets is refused; a Dockerfile symlinked to a file of the runner is not read; and a buildah
//! `RUN` step cannot see the runner's processes.

use std::path::Path;
use std::process::{Command, Output};

use prpod_test_support::{TempDir, unique_name, world};

use crate::build::{Runner, app_copy, ok, publish};
use crate::stderr;

/// A context file for the CLI tests that need no world.
fn context_file(dir: &Path) -> String {
    let p = dir.join("ctx.json");
    std::fs::write(&p, serde_json::to_vec(&crate::context(Some(42), "feature/login")).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

/// The app in `app` published as a new repository, and a new image repository for it.
struct Published {
    url: String,
    sha: String,
    image: String,
}

impl Published {
    fn new(app: &Path, name: &str) -> Published {
        let w = world();
        let (url, sha) = publish(w, app, &format!("trust/{}", unique_name(name)));
        Published { url, sha, image: w.registry_tls.image(&format!("acme/{}", unique_name("web"))) }
    }

    /// `prpod build` of PR `pr` (branch `x`) by `runner`, `extra` appended.
    fn build(&self, runner: &Runner, pr: &str, extra: &[&str]) -> std::process::Output {
        let args = ["--repo-url", &self.url, "--pr", pr, "--branch", "x", "--sha", &self.sha, "--image", &self.image];
        runner.build(&[&args[..], extra].concat())
    }
}

/// `prpod ARGS` in `dir` with exactly `envs` (and PATH).
fn prpod_in(dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PRPOD_CACHE_DIR", crate::repo_root().join("target/test-prpod-cache"))
        .envs(envs.iter().copied())
        .output()
        .expect("run prpod")
}

#[test]
fn repository_prpod_toml_may_not_set_operator_keys() {
    let w = world();
    let base = format!("BASE={}", w.web_image_tls);
    for (toml, key) in [
        ("[deploy]\nhelm = \"./evil.sh\"\n", "deploy.helm"),
        ("[registry]\npassword_file = \"/proc/self/environ\"\n", "registry"),
        ("[registry]\npassword_env = \"PRPOD_GIT_TOKEN\"\n", "registry"),
        ("[registry]\ndocker_config = \"evil.json\"\n", "registry"),
        ("[deploy]\nkubeconfig = \"evil-kubeconfig\"\n", "deploy.kubeconfig"),
        ("[plugins.verifier]\nref = \"noop.wasm\"\n", "plugins"),
    ] {
        let app = app_copy();
        let marker = app.path().join("ran");
        std::fs::write(app.path().join("prpod.toml"), toml).unwrap();
        std::fs::write(app.path().join("evil.sh"), format!("#!/bin/sh\nenv > {}\n", marker.display())).unwrap();
        let out = Published::new(app.path(), "opkey").build(&Runner::new(w), "5", &["--build-arg", &base]);
        assert_eq!(out.status.code(), Some(2), "{key}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("`{key}")) && err.contains("operator"), "{key}: {err}");
        assert!(err.contains("--config"), "it says where the key belongs: {err}");
        assert!(!marker.exists(), "the PR's script ran");
        assert!(err.contains("✓ source") || err.contains("source"), "refused once the commit's file is read: {err}");
    }
}

#[test]
fn repository_prpod_toml_describes_the_app() {
    let w = world();
    let app = app_copy();
    // The repository moves its Dockerfile: its prpod.toml says so, and the build finds it.
    std::fs::create_dir_all(app.path().join("docker")).unwrap();
    std::fs::rename(app.path().join("Dockerfile"), app.path().join("docker/Web.Dockerfile")).unwrap();
    std::fs::write(
        app.path().join("prpod.toml"),
        "[image]\ndockerfile = \"docker/Web.Dockerfile\"\n[app]\nport = 8080\n",
    )
    .unwrap();
    let base = format!("BASE={}", w.web_image_tls);
    let out = Published::new(app.path(), "appkeys").build(&Runner::new(w), "6", &["--build-arg", &base]);
    let v = ok(&out);
    assert_eq!(v["backend"], "native");
    let err = stderr(&out);
    assert!(err.contains("the commit's prpod.toml sets app.port, image.dockerfile"), "{err}");
}

#[test]
fn github_actions_reads_the_working_directory_prpod_toml_as_the_repositorys() {
    let dir = TempDir::new("actions-cwd");
    let ctx = context_file(dir.path());
    std::fs::write(dir.path().join("prpod.toml"), "[deploy]\nhelm = \"./evil.sh\"\n").unwrap();
    let args =
        ["plugin", "call", "tag-policy", "builtin:tag-default", "--context", &ctx, "--image", "r.example/acme/web"];
    let out = prpod_in(dir.path(), &[("GITHUB_ACTIONS", "true")], &args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`deploy.helm`") && stderr(&out).contains("--config"), "{}", stderr(&out));
    // Outside GitHub Actions the working directory's file is the operator's own.
    let out = prpod_in(dir.path(), &[], &args);
    assert!(out.status.success(), "{}", stderr(&out));
    // An operator config named with --config may set it in Actions too.
    let out = prpod_in(dir.path(), &[("GITHUB_ACTIONS", "true"), ("PRPOD_CONFIG", "prpod.toml")], &args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn fork_under_pull_request_target_with_secrets_is_refused_unless_allowed() {
    let dir = TempDir::new("fork");
    let payload = crate::repo_root().join("tests/fixtures/github/pull_request.fork.json");
    let payload = payload.to_str().unwrap();
    let actions = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_EVENT_NAME", "pull_request_target"),
        ("GITHUB_EVENT_PATH", payload),
        ("GITHUB_REPOSITORY", "acme/web"),
        ("GITHUB_HEAD_REF", "feature/login"),
        ("GITHUB_BASE_REF", "main"),
        ("PRPOD_GIT_TOKEN", "fork-test-token-123456"),
    ];
    // A closed port on this machine: a run that gets past the context fails at once at the clone.
    let args = [
        "--output",
        "json",
        "build",
        "--repo-url",
        "http://127.0.0.1:9/acme/web.git",
        "--image",
        "127.0.0.1:9/acme/web",
    ];
    let out = prpod_in(dir.path(), &actions, &args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("fork") && err.contains("allow_forks") && err.contains("a git token"), "{err}");
    assert!(!err.contains("fork-test-token-123456"));
    assert!(err.contains("✗ context"), "refused in the context phase, before anything is cloned: {err}");
    assert!(crate::json(&out)["error"].as_str().unwrap().contains("fork"));

    // Allowed by the operator: the context passes, and the run goes on to the clone (which fails
    // here, at a closed port).
    let allowed: Vec<(&str, &str)> = actions.iter().copied().chain([("PRPOD_ALLOW_FORKS", "true")]).collect();
    let out = prpod_in(dir.path(), &allowed, &args);
    let err = stderr(&out);
    assert!(err.contains("✓ context") && err.contains("from a fork"), "{err}");
    assert!(!crate::json(&out)["error"].as_str().unwrap().contains("allow_forks"), "{err}");
}

#[test]
fn a_dockerfile_symlinked_out_of_the_repository_is_not_read() {
    let w = world();
    let secret_dir = TempDir::new("runner-file");
    let secret = secret_dir.path().join("cache-key");
    std::fs::write(&secret, "RUNNER-SECRET-CONTENT-1234\n").unwrap();
    let app = app_copy();
    std::fs::remove_file(app.path().join("Dockerfile")).unwrap();
    std::os::unix::fs::symlink(&secret, app.path().join("Dockerfile")).unwrap();
    let published = Published::new(app.path(), "dflink");
    for backend in ["native", "buildah"] {
        let out = published.build(&Runner::new(w), "5", &["--backend", backend]);
        assert_eq!(out.status.code(), Some(2), "{backend}: {}", stderr(&out));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(all.contains("symlink") && all.contains("Dockerfile"), "{backend}: {all}");
        assert!(!all.contains("RUNNER-SECRET-CONTENT"), "{backend} read the runner's file: {all}");
    }
}

#[test]
fn a_buildah_run_step_sees_neither_the_runners_processes_nor_its_network() {
    let w = world();
    let app = app_copy();
    // The step fails the build when it can see the runner's processes (prpod, the registries,
    // the kubelet: dozens) or reach a service on the runner's loopback (the plain registry).
    let registry = &w.registry_plain.host;
    std::fs::write(
        app.path().join("Dockerfile"),
        format!(
            "ARG BASE\nFROM ${{BASE}}\nUSER 0\n\
             RUN n=$(ls -d /proc/[0-9]* | wc -l); if [ \"$n\" -gt 10 ]; then echo \"LEAK: sees $n processes\"; exit 7; fi; \
             if wget -q -T 3 -O /dev/null http://{registry}/v2/; then echo \"LEAK: reached {registry}\"; exit 8; fi\n\
             COPY www /www\n"
        ),
    )
    .unwrap();
    let published = Published::new(app.path(), "procrun");
    let base = format!("BASE={}", w.web_image_tls);
    let build = |pr: &str, isolation: Option<&str>| {
        let mut run = Runner::new(w);
        if let Some(i) = isolation {
            run.set("PRPOD_BUILDAH_ISOLATION", i);
        }
        published.build(&run, pr, &["--backend", "buildah", "--build-arg", &base])
    };
    ok(&build("5", None));
    // The same step under the operator's `chroot` opt-in (a fresh machine and another PR's cache,
    // so the step runs again) sees the runner: the checks above are real.
    let out = build("6", Some("chroot"));
    assert!(!out.status.success(), "under chroot isolation the RUN step sees the runner");
}
