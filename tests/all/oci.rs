//! Plugins from OCI registries, against the world's TLS registry and its token registry (GHCR's
//! flow): push, pull, `plugin check oci://`, prpod.lock through `prpod plan`, `--locked`, a moved
//! tag, a tampered cache, offline runs, and `[plugins.trust]` signatures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prpod_test_support::{Registry, TempDir, unique_name, world};
use sha2::Digest;

use crate::run::{Preview, explain, publish_example};
use crate::{json, stderr};

/// `prpod ARGS` in `dir` with `reg`'s credentials bound to `reg` (and no docker config of the
/// machine's), a cache under `dir/cache`.
fn prpod(dir: &Path, reg: &Registry, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prpod"));
    c.args(args)
        .current_dir(dir)
        .env_remove("PRPOD_CONFIG")
        .env("PRPOD_CACHE_DIR", dir.join("cache"))
        .env("DOCKER_CONFIG", dir)
        .env("PRPOD_REGISTRY_HOST", &reg.host)
        .env("PRPOD_REGISTRY_CA", reg.ca.as_ref().unwrap());
    if let (Some(u), Some(p)) = (&reg.user, &reg.password) {
        c.env("PRPOD_REGISTRY_USER", u).env("PRPOD_REGISTRY_PASSWORD", p.expose());
    }
    let out = c.output().expect("run prpod");
    if let Some(p) = &reg.password {
        assert!(!String::from_utf8_lossy(&out.stderr).contains(p.expose()), "the password leaked to stderr");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(p.expose()), "the password leaked to stdout");
    }
    out
}

/// A builtin written out as a component file in `dir`.
fn builtin_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, prpod::plugins::reference::builtin(name).unwrap()).unwrap();
    path
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Pushes builtin `name` to `target` (with `--force` when asked) and returns the push report.
fn push(dir: &Path, reg: &Registry, name: &str, target: &str, force: bool) -> serde_json::Value {
    let file = builtin_file(dir, name);
    let mut args = vec!["--output", "json", "plugin", "push", file.to_str().unwrap(), target];
    if force {
        args.push("--force");
    }
    let out = prpod(dir, reg, &args);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    json(&out)
}

#[test]
fn push_pull_and_check_through_the_tls_registry() {
    let w = world();
    let reg = &w.registry_tls;
    let dir = TempDir::new("oci-push");
    let repo = unique_name("prpod-test/oci-verifier");
    let target = format!("oci://{}/{repo}:1.0.0", reg.host);
    let pushed = push(dir.path(), reg, "verify-baseline", &target, false);
    let component = prpod::plugins::reference::builtin("verify-baseline").unwrap();
    let digest = pushed["digest"].as_str().unwrap().to_string();
    assert_eq!(pushed["layer_digest"], sha256(component));
    assert_eq!(pushed["target"], "prpod:plugin/verifier@0.2.0");
    assert_eq!(pushed["wit_version"], "0.2.0");
    assert_eq!(pushed["pinned"], format!("oci://{}/{repo}@{digest}", reg.host));

    // A version tag is not overwritten without --force.
    let file = builtin_file(dir.path(), "tag-default");
    let out = prpod(dir.path(), reg, &["plugin", "push", file.to_str().unwrap(), &target]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(stderr(&out).contains("refusing to overwrite") && stderr(&out).contains(&digest), "{}", explain(&out));
    // Nor is a file that is no plugin pushed at all.
    std::fs::write(dir.path().join("core.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
    let out = prpod(dir.path(), reg, &["plugin", "push", "core.wasm", &format!("oci://{}/{repo}:core", reg.host)]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(stderr(&out).contains("core WebAssembly module"), "{}", explain(&out));

    // The layout as the registry stores it.
    let manifest = skopeo_raw(reg, &format!("{repo}:1.0.0"));
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.version"], "1.0.0");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.title"], "verify-baseline.wasm");

    // Pull by tag and by digest: the same component, cached under its digest. The first pull
    // (into a fresh cache) says what the component is without compiling it: no compiled
    // artifact lands in the compile cache.
    let fresh = TempDir::new("oci-pull-fresh");
    let out = prpod(fresh.path(), reg, &["--output", "json", "plugin", "pull", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let compiled = std::fs::read_dir(fresh.path().join("cache/components")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(compiled, 0, "plugin pull compiled the component");
    let pulled = json(&out);
    assert_eq!(pulled["digest"], digest.as_str());
    assert_eq!(pulled["worlds"], serde_json::json!(["verifier"]));
    assert_eq!(pulled["wit_version"], "0.2.0");
    assert_eq!(std::fs::read(pulled["path"].as_str().unwrap()).unwrap(), component);
    let out = prpod(dir.path(), reg, &["--output", "json", "plugin", "pull", pushed["pinned"].as_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    // A component built against prpod:plugin@0.1.0 is pushed, pulled and checked as such.
    let old = crate::repo_root().join("tests/fixtures/wit-0.1.0/verify-baseline.wasm");
    let old_target = format!("oci://{}/{repo}:0.1-built", reg.host);
    let out = prpod(dir.path(), reg, &["--output", "json", "plugin", "push", old.to_str().unwrap(), &old_target]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(json(&out)["wit_version"], "0.1.0");
    assert_eq!(json(&out)["target"], "prpod:plugin/verifier@0.1.0");
    for cmd in ["pull", "check"] {
        let out = prpod(dir.path(), reg, &["--output", "json", "plugin", cmd, &old_target]);
        assert_eq!(out.status.code(), Some(0), "{cmd}: {}", explain(&out));
        assert_eq!(json(&out)["wit_version"], "0.1.0", "{cmd}");
        assert_eq!(json(&out)["worlds"], serde_json::json!(["verifier"]), "{cmd}");
    }

    // check and call accept oci:// references.
    let out = prpod(dir.path(), reg, &["--output", "json", "plugin", "check", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(json(&out)["worlds"], serde_json::json!(["verifier"]));
    assert_eq!(json(&out)["wit_version"], "0.2.0");
    let ctx = dir.path().join("ctx.json");
    std::fs::write(&ctx, serde_json::to_vec(&crate::context(Some(7), "feature/x")).unwrap()).unwrap();
    let manifests = dir.path().join("m.yaml");
    std::fs::write(&manifests, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n").unwrap();
    let (c, m) = (ctx.to_str().unwrap(), manifests.to_str().unwrap());
    let out = prpod(
        dir.path(),
        reg,
        &["--output", "json", "plugin", "call", "verifier", &target, "--context", c, "--manifests", m],
    );
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", explain(&out));
    assert_eq!(json(&out)["hook"], "check-manifests");

    // An image is not a plugin: refused, naming the media type.
    let image = w.web_image_tls.clone();
    let out = prpod(dir.path(), reg, &["plugin", "pull", &format!("oci://{image}")]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(stderr(&out).contains("media type"), "{}", explain(&out));
}

fn skopeo_raw(reg: &Registry, repo_tag: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--authfile"])
        .arg(reg.authfile.as_ref().unwrap())
        .arg("--cert-dir")
        .arg(reg.cert_dir.as_ref().unwrap())
        .arg(format!("docker://{}", reg.image(repo_tag)))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn push_and_pull_through_the_token_registry() {
    let w = world();
    let reg = &w.registry_token;
    let dir = TempDir::new("oci-token");
    let repo = unique_name("prpod-test/oci-tags");
    let target = format!("oci://{}/{repo}:0.1.0", reg.host);
    let pushed = push(dir.path(), reg, "tag-default", &target, false);
    let out = prpod(dir.path(), reg, &["--output", "json", "plugin", "pull", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(json(&out)["digest"], pushed["digest"]);
    assert_eq!(json(&out)["worlds"], serde_json::json!(["tag-policy"]));
}

/// A run's plugins through prpod.lock: `prpod plan` locks a tag; a tag moved since is reported
/// and the locked digest kept; `--locked` refuses a ref the lock lacks; a tampered cache file is
/// refetched, or refused under `--locked`.
///
/// Offline: the shared world's registries are not stopped (other tests use them). Instead, once
/// the lock and cache are filled, prpod.toml and prpod.lock are rewritten to name a registry at
/// a loopback port nothing listens on (connections are refused): a plan that still works there
/// needed no registry for its plugins.
#[test]
fn a_plan_locks_the_tag_keeps_the_locked_digest_and_runs_offline() {
    let w = world();
    let reg = &w.registry_tls;
    // The preview's registry address (the one its credentials are bound to).
    let host = &reg.host_pod;
    let repo = unique_name("prpod-test/oci-locked");
    let reference = format!("oci://{host}/{repo}:1");
    let (name, head) = publish_example(w);
    let p = Preview::new(
        false,
        &unique_name("prpod-test/oci-app"),
        &format!("\n[[plugins.verifier]]\nref = \"{reference}\"\n"),
    )
    .of_repository(&name);
    let pod_reg = Registry { host: host.clone(), ..reg.clone() };
    let pushed = push(p.dir.path(), &pod_reg, "verify-baseline", &reference, false);
    let cache = p.dir.path().join("cache");
    let plan = |extra: &[&str]| -> Output {
        let mut args: Vec<String> = vec!["--output".into(), "json".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("plan".into());
        args.extend(p.context(&head));
        let mut c = p.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        c.env("PRPOD_CACHE_DIR", &cache).env("DOCKER_CONFIG", p.dir.path());
        c.output().unwrap()
    };

    let out = plan(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let lock_path = p.dir.path().join("prpod.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    let component = prpod::plugins::reference::builtin("verify-baseline").unwrap();
    assert!(lock.contains(&reference) && lock.contains(pushed["digest"].as_str().unwrap()), "{lock}");
    assert!(lock.contains(&sha256(component)) && lock.contains("resolved_at"), "{lock}");

    // The tag moves to a component that is no verifier: the locked one still runs.
    push(p.dir.path(), &pod_reg, "tag-default", &reference, true);
    let out = plan(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock, "the lock kept its digest");
    // With a cold cache prpod asks the registry, and says the tag moved.
    std::fs::remove_dir_all(&cache).unwrap();
    let out = plan(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stderr(&out).contains("moved") && stderr(&out).contains(pushed["digest"].as_str().unwrap()),
        "{}",
        explain(&out)
    );
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);

    // --locked with a reference the lock lacks: refused, naming it.
    let toml_path = p.dir.path().join("prpod.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let second = format!("oci://{host}/{repo}:2");
    push(p.dir.path(), &pod_reg, "verify-baseline", &second, false);
    std::fs::write(&toml_path, format!("{toml}\n[[plugins.verifier]]\nref = \"{second}\"\n")).unwrap();
    let out = plan(&["--locked"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(stderr(&out).contains(&second) && stderr(&out).contains("--locked"), "{}", explain(&out));
    std::fs::write(&toml_path, &toml).unwrap();

    // A tampered cache file is detected and refetched.
    let layer = cache.join("oci/blobs/sha256").join(sha256(component).trim_start_matches("sha256:"));
    std::fs::write(&layer, b"\0asm tampered").unwrap();
    let out = plan(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(stderr(&out).contains("refetching"), "{}", explain(&out));
    assert_eq!(std::fs::read(&layer).unwrap(), component);

    // Offline: the same lock and cache, the registry at an address that refuses connections.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let offline_ref = reference.replace(host.as_str(), &dead);
    std::fs::write(&toml_path, toml.replace(&reference, &offline_ref)).unwrap();
    std::fs::write(&lock_path, lock.replace(&reference, &offline_ref)).unwrap();
    let out = plan(&["--locked"]);
    assert_eq!(out.status.code(), Some(0), "a cached, locked plan needs no registry: {}", explain(&out));
    // ...and a tampered file there is refused, naming the plugin and both digests.
    std::fs::write(&layer, b"\0asm tampered").unwrap();
    let out = plan(&["--locked"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    let e = stderr(&out);
    assert!(
        e.contains(&offline_ref) && e.contains(&sha256(component)) && e.contains(&sha256(b"\0asm tampered")),
        "{e}"
    );
}

/// Writes an ECDSA P-256 key pair (PKCS#8 private, SPKI public) named `name` into `dir`.
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let ok = |c: &mut Command| assert!(c.status().unwrap().success());
    ok(Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
        .arg(&key));
    ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public));
    (key, public)
}

#[test]
fn under_trust_only_a_plugin_signed_by_a_trusted_key_runs() {
    let w = world();
    let reg = &w.registry_tls;
    let dir = TempDir::new("oci-trust");
    let (org_key, org_pub) = keypair(dir.path(), "org");
    let (stranger_key, _) = keypair(dir.path(), "stranger");
    std::fs::write(dir.path().join("prpod.toml"), "[plugins.trust]\nkeys = [\"org.pub\"]\n").unwrap();
    assert!(org_pub.is_file());
    let repo = unique_name("prpod-test/oci-signed");
    let target = format!("oci://{}/{repo}:1", reg.host);
    let pushed = push(dir.path(), reg, "verify-baseline", &target, false);
    let digest = pushed["digest"].as_str().unwrap();
    let check = || prpod(dir.path(), reg, &["--config", "prpod.toml", "--output", "json", "plugin", "check", &target]);

    // Unsigned: refused, naming the signature tag looked for.
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(
        stderr(&out).contains(&digest.replace(':', "-")) && stderr(&out).contains("[plugins.trust]"),
        "{}",
        explain(&out)
    );

    // Signed by a key not in the trust set: refused.
    let sign = |key: &Path| {
        let out =
            prpod(dir.path(), reg, &["--output", "json", "plugin", "sign", &target, "--key", key.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        json(&out)
    };
    sign(&stranger_key);
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(stderr(&out).contains("not from a trusted key"), "{}", explain(&out));

    // Signed by the org's key: it runs; the signature is then checked from the cache.
    let signed = sign(&org_key);
    assert_eq!(signed["signature_tag"], format!("{}.sig", digest.replace(':', "-")));
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(json(&out)["worlds"], serde_json::json!(["verifier"]));
    let out = prpod(dir.path(), reg, &["--config", "prpod.toml", "--output", "json", "plugin", "pull", &target]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(json(&out)["signed_by"], "org.pub");
    assert!(dir.path().join("cache/oci/signatures").join(format!("{}.sig", digest.replace(':', "-"))).is_file());
}
