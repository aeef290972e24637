//! prpod's registry client and the native backend against the service world: native builds
//! pushed to the TLS + htpasswd registry (B) and the token registry (C), checked with skopeo;
//! reproducible digests; no-op re-pushes; wrong credentials; faults injected by a proxy; a
//! registry that stays down. Every error and event is checked for the password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prpod::clients::registry::{
    CredentialResolver, ImageName, OciDescriptor, OciImage, PushEvent, RegistryClient, RegistryError, RegistryOptions,
};
use prpod::phases::build::native::{self as native_build, LayerEntry, LayerKind, NativeBuildRequest};
use prpod::secret::Secret;
use prpod_test_support::{Registry, TempDir, unique_name, world};

use crate::fault_proxy::{FaultProxy, Faults};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn fixture() -> PathBuf {
    crate::repo_root().join("tests/fixtures/native-app")
}

/// A client for world registry `r`, with its CA, its credentials (or `password` instead), and
/// the plain-HTTP registry A listed as such.
fn client_for(r: &Registry, password: Option<&str>) -> RegistryClient {
    let w = world();
    let mut creds = CredentialResolver::anonymous();
    if let (Some(user), Some(pw)) = (&r.user, password.or(r.password.as_ref().map(Secret::expose))) {
        creds = creds.with_secret(&r.host, user, Secret::new(pw), "the test's password");
    }
    let opts = RegistryOptions {
        ca_file: w.registry_tls.ca.clone(),
        plain_http: vec![w.registry_plain.host.clone()],
        ..Default::default()
    };
    RegistryClient::new(opts, creds).unwrap()
}

/// The digest skopeo (not prpod) sees for `image` on `r`, or its error.
fn skopeo_digest(r: &Registry, authfile: Option<&Path>, image: &str) -> Result<String, String> {
    let mut c = Command::new("skopeo");
    c.arg("inspect").arg("--raw");
    match &r.cert_dir {
        Some(d) => c.arg("--cert-dir").arg(d),
        None => c.arg("--tls-verify=false"),
    };
    if let Some(a) = authfile.or(r.authfile.as_deref()) {
        c.arg("--authfile").arg(a);
    }
    let out = c.arg(format!("docker://{image}")).output().expect("run skopeo");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(prpod::clients::registry::sha256_digest(&out.stdout))
}

/// Copies the fixture app to a fresh directory, with every file's mtime set to `mtime_offset`
/// seconds ago and group-write on (as another umask would leave it).
fn app_copy(mtime_offset: u64) -> TempDir {
    let dir = TempDir::new("native-app");
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", fixture().display())).arg(dir.path()).status().unwrap();
    assert!(st.success());
    let when = std::time::SystemTime::now() - Duration::from_secs(mtime_offset);
    for entry in walk(dir.path()) {
        if entry.is_file() {
            let f = std::fs::File::options().write(true).open(&entry).unwrap();
            f.set_modified(when).unwrap();
            if mtime_offset > 0 {
                Command::new("chmod").arg("g+w").arg(&entry).status().unwrap();
            }
        }
    }
    dir
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn request(context: &Path, out: &Path, base: &str) -> NativeBuildRequest {
    NativeBuildRequest {
        context_dir: context.to_path_buf(),
        dockerfile: "Dockerfile".into(),
        build_args: BTreeMap::from([("BASE".into(), base.into()), ("GREETING".into(), "hi".into())]),
        labels: BTreeMap::new(),
        platform: None,
        out_dir: out.to_path_buf(),
        source_date_epoch: None,
    }
}

/// Collects events, and fails the test if any of them prints `secret`.
#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<PushEvent>>>);

impl Events {
    fn sink(&self) -> impl Fn(&PushEvent) + Send + Sync + '_ {
        move |e| self.0.lock().unwrap().push(e.clone())
    }
    fn text(&self) -> String {
        format!("{:?}", self.0.lock().unwrap())
    }
    fn retries(&self) -> Vec<prpod::clients::registry::RetryNotice> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| if let PushEvent::Retrying(n) = e { Some(n.clone()) } else { None })
            .collect()
    }
}

#[test]
fn native_build_pushed_to_the_tls_registry_then_a_noop_repush() {
    let w = world();
    let b = &w.registry_tls;
    let client = client_for(b, None);
    let app = app_copy(0);
    let out = TempDir::new("layout");
    let rt = rt();
    let built =
        rt.block_on(native_build::build(&request(app.path(), out.path(), &w.web_image_tls), &client, &|_| {})).unwrap();
    assert_eq!(built.layers_built, 2, "two COPY lines, two layers");
    assert!(built.base.as_deref().unwrap().contains("@sha256:"), "{:?}", built.base);

    // Uppercase in the repository is normalised (and said).
    let repo = format!("{}/Native/{}", b.host, unique_name("App"));
    let name = ImageName::parse(&repo).unwrap();
    assert!(name.changed_from.is_some());
    let name = name.value;
    assert_eq!(name.to_string(), repo.to_lowercase());
    let tags = vec!["pr-1".to_string(), "pr-feature-x".to_string(), "sha-0123456789ab".to_string()];
    let events = Events::default();
    let pushed = rt.block_on(client.push(&built.image, &name, &tags, &events.sink())).unwrap();
    assert_eq!(pushed.digest, built.image.digest());
    // The base layer was mounted from the base repository, ours were uploaded.
    assert_eq!((pushed.layers.pushed, pushed.layers.mounted, pushed.layers.skipped), (2, 1, 0), "{pushed:?}");
    assert!(pushed.layers.bytes_uploaded > 0);
    for tag in &tags {
        assert_eq!(skopeo_digest(b, None, &name.with_tag(tag)).unwrap(), pushed.digest, "tag {tag}");
    }
    // The config says what the Dockerfile said.
    let out = Command::new("skopeo")
        .args(["inspect", "--config", "--cert-dir"])
        .arg(b.cert_dir.as_ref().unwrap())
        .arg("--authfile")
        .arg(b.authfile.as_ref().unwrap())
        .arg(format!("docker://{}", name.with_tag("pr-1")))
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &config["config"];
    assert_eq!(c["WorkingDir"], "/www");
    assert_eq!(c["User"], "65534:65534");
    assert!(c["Env"].as_array().unwrap().iter().any(|e| e == "GREETING=hi"), "{c}");
    assert!(
        c["Env"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("PATH=")),
        "base env kept: {c}"
    );
    assert_eq!(c["Labels"]["org.example.greeting"], "hi");
    assert_eq!(c["Cmd"][1], "httpd");
    assert!(c["ExposedPorts"].get("8080/tcp").is_some());
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);

    // The same push again: nothing uploaded.
    let again = rt.block_on(client.push(&built.image, &name, &tags, &|_| {})).unwrap();
    assert_eq!(again.digest, pushed.digest);
    assert_eq!((again.layers.pushed, again.layers.skipped, again.layers.bytes_uploaded), (0, 3, 0), "{again:?}");
    assert!(!events.text().contains(b.password.as_ref().unwrap().expose()));
}

#[test]
fn the_layer_holds_what_the_dockerfile_and_dockerignore_say() {
    let w = world();
    let client = client_for(&w.registry_tls, None);
    let app = app_copy(0);
    let out = TempDir::new("layout");
    let built =
        rt().block_on(native_build::build(&request(app.path(), out.path(), "scratch"), &client, &|_| {})).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&built.image.manifest().bytes).unwrap();
    let listing = |i: usize| {
        let digest = manifest["layers"][i]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
        let out = Command::new("tar").arg("tvzf").arg(out.path().join("blobs/sha256").join(digest)).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let site = listing(0);
    assert!(site.contains("www/index.html") && site.contains("www/style.css"), "{site}");
    assert!(!site.contains("draft.tmp"), ".dockerignore **/*.tmp: {site}");
    assert!(site.contains("-rw-r--r-- 0/0") && site.contains("1970-01-01"), "normalised modes, owner, mtime: {site}");
    let bin = listing(1);
    assert!(bin.contains("-rwxr-xr-x 0/0") && bin.contains("usr/local/bin/serve.sh"), "{bin}");
}

#[test]
fn same_source_same_digest_across_copies_with_other_mtimes_and_modes() {
    let w = world();
    let client = client_for(&w.registry_tls, None);
    let rt = rt();
    for base in ["scratch", w.web_image_tls.as_str()] {
        let (a, b) = (app_copy(0), app_copy(86_400 * 400));
        let (oa, ob) = (TempDir::new("layout-a"), TempDir::new("layout-b"));
        let one = rt.block_on(native_build::build(&request(a.path(), oa.path(), base), &client, &|_| {})).unwrap();
        let two = rt.block_on(native_build::build(&request(b.path(), ob.path(), base), &client, &|_| {})).unwrap();
        assert_eq!(one.image.digest(), two.image.digest(), "FROM {base}");
    }
    // A changed file changes the digest (the test could fail).
    let (c, oc, od) = (app_copy(0), TempDir::new("layout-c"), TempDir::new("layout-d"));
    let first = rt.block_on(native_build::build(&request(c.path(), oc.path(), "scratch"), &client, &|_| {})).unwrap();
    std::fs::write(c.path().join("site/index.html"), "changed").unwrap();
    let second = rt.block_on(native_build::build(&request(c.path(), od.path(), "scratch"), &client, &|_| {})).unwrap();
    assert_ne!(first.image.digest(), second.image.digest());
}

#[test]
fn run_under_native_names_the_line_and_the_other_backends() {
    let w = world();
    let app = app_copy(0);
    let text = std::fs::read_to_string(app.path().join("Dockerfile")).unwrap();
    std::fs::write(app.path().join("Dockerfile"), text.replace("USER 65534", "RUN echo hi\nUSER 65534")).unwrap();
    let line = std::fs::read_to_string(app.path().join("Dockerfile"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("RUN"))
        .unwrap()
        + 1;
    let out = TempDir::new("layout");
    let err = rt()
        .block_on(native_build::build(
            &request(app.path(), out.path(), "scratch"),
            &client_for(&w.registry_tls, None),
            &|_| {},
        ))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("Dockerfile:{line}: RUN")), "{msg}");
    assert!(msg.contains("--backend buildah") && msg.contains("--backend buildx"), "{msg}");
    assert_eq!(prpod::error::exit_code_for(&anyhow::Error::new(err)), 2);
    // `--backend auto` asks the same question before building.
    assert!(native_build::check_dockerfile(&app.path().join("Dockerfile")).is_err());
    assert!(native_build::check_dockerfile(&fixture().join("Dockerfile")).is_ok());
}

#[test]
fn wrong_password_is_a_clear_bad_input_error_and_nothing_is_pushed() {
    let w = world();
    let b = &w.registry_tls;
    let wrong = "wrong-password-7f3a9c";
    let client = client_for(b, Some(wrong));
    let (app, out) = (app_copy(0), TempDir::new("layout"));
    let rt = rt();
    let built =
        rt.block_on(native_build::build(&request(app.path(), out.path(), "scratch"), &client, &|_| {})).unwrap();
    let name = ImageName::parse(&format!("{}/native/{}", b.host, unique_name("wrongpw"))).unwrap().value;
    let events = Events::default();
    let started = Instant::now();
    let err = rt.block_on(client.push(&built.image, &name, &["pr-1".into()], &events.sink())).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "no retrying a wrong password: {:?}", started.elapsed());
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("failed to authenticate to") && msg.contains("the test's password"), "{msg}");
    for text in [msg.clone(), format!("{err:?}"), events.text()] {
        assert!(!text.contains(wrong) && !text.contains(b.password.as_ref().unwrap().expose()), "{text}");
    }
    assert_eq!(prpod::error::exit_code_for(&anyhow::Error::new(err)), 2);
    assert!(skopeo_digest(b, None, &name.with_tag("pr-1")).is_err(), "nothing was pushed");
    // Doctor's check says the same; with the right password it passes.
    assert!(matches!(rt.block_on(client.check_push_access(&name)), Err(RegistryError::Unauthorized { .. })));
    rt.block_on(client_for(b, None).check_push_access(&name)).unwrap();
}

#[test]
fn docker_config_auths_are_a_credential_source() {
    let w = world();
    let b = &w.registry_tls;
    let opts = RegistryOptions { ca_file: b.ca.clone(), ..Default::default() };
    let client =
        RegistryClient::new(opts, CredentialResolver::anonymous().with_docker_config(b.authfile.clone().unwrap()))
            .unwrap();
    let name = ImageName::parse(&format!("{}/native/{}", b.host, unique_name("authfile"))).unwrap().value;
    rt().block_on(client.check_push_access(&name)).unwrap();
    // Without the CA: a TLS error that says what to set.
    let no_ca = RegistryClient::new(RegistryOptions::default(), CredentialResolver::anonymous()).unwrap();
    let err = rt().block_on(no_ca.check_push_access(&name)).unwrap_err();
    assert!(err.to_string().contains("PRPOD_REGISTRY_CA"), "{err}");
}

#[test]
fn the_token_registry_bearer_flow() {
    let w = world();
    // Registry C: distribution `auth: token` + the GHCR token double (GHCR's flow)
    let c = &w.registry_token;
    // The base image lives on B: its layer is streamed from B to C (another registry), so this
    // client needs B's credentials too, from a docker config.
    let creds = CredentialResolver::anonymous()
        .with_docker_config(w.registry_tls.authfile.clone().unwrap())
        .with_secret(&c.host, c.user.as_deref().unwrap(), c.password.clone().unwrap(), "PRPOD_REGISTRY_TOKEN_PASSWORD");
    let client = RegistryClient::new(RegistryOptions { ca_file: c.ca.clone(), ..Default::default() }, creds).unwrap();
    let (app, out) = (app_copy(0), TempDir::new("layout"));
    let rt = rt();
    let built =
        rt.block_on(native_build::build(&request(app.path(), out.path(), &w.web_image_tls), &client, &|_| {})).unwrap();
    let name = ImageName::parse(&format!("{}/acme/{}", c.host, unique_name("web"))).unwrap().value;
    let tags = vec!["pr-7".to_string(), "sha-abcdefabcdef".to_string()];
    let pushed = rt.block_on(client.push(&built.image, &name, &tags, &|_| {})).unwrap();
    assert_eq!((pushed.layers.pushed, pushed.layers.mounted), (3, 0), "the base layer crossed registries: {pushed:?}");
    for tag in &tags {
        assert_eq!(skopeo_digest(c, None, &name.with_tag(tag)).unwrap(), pushed.digest);
    }
    // A second repository on C gets every layer by cross-repository mount (a token with pull on
    // the source and push on the target).
    let other = ImageName::parse(&format!("{}/acme/{}", c.host, unique_name("copy"))).unwrap().value;
    let source =
        prpod::clients::registry::ImageReference { name: name.clone(), tag: Some("pr-7".into()), digest: None };
    let copied = rt.block_on(client.retag(&source, &other, &["pr-8".into()], &|_| {})).unwrap();
    assert_eq!(copied.digest, pushed.digest);
    assert_eq!((copied.layers.mounted, copied.layers.pushed, copied.layers.bytes_uploaded), (3, 0, 0), "{copied:?}");
    // A wrong password fails at the token service.
    let bad = CredentialResolver::anonymous().with_secret(
        &c.host,
        c.user.as_deref().unwrap(),
        Secret::new("nope-nope"),
        "test",
    );
    let bad = RegistryClient::new(RegistryOptions { ca_file: c.ca.clone(), ..Default::default() }, bad).unwrap();
    let err = rt.block_on(bad.check_push_access(&name)).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    // The read-only user may pull but not push.
    let r = &w.registry_token_reader;
    let (u, p) = (r.user.as_deref().unwrap(), r.password.clone().unwrap());
    let reader = CredentialResolver::anonymous().with_secret(&c.host, u, p.clone(), "reader");
    let reader = RegistryClient::new(RegistryOptions { ca_file: c.ca.clone(), ..Default::default() }, reader).unwrap();
    let r = prpod::clients::registry::ImageReference { name: name.clone(), tag: Some("pr-7".into()), digest: None };
    assert_eq!(rt.block_on(reader.manifest_digest(&r)).unwrap().as_deref(), Some(pushed.digest.as_str()));
    let err = rt.block_on(reader.check_push_access(&name)).unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. } | RegistryError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains(p.expose()));
}

/// A layout with `n` layers of `mib` MiB of random bytes each (incompressible, like the bench's).
fn random_image(n: usize, mib: usize) -> (TempDir, OciImage) {
    let dir = TempDir::new("random-layout");
    let src = TempDir::new("random-src");
    let mut layers: Vec<OciDescriptor> = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..n {
        let f = src.path().join(format!("blob{i}"));
        let mut data = vec![0u8; mib << 20];
        std::fs::File::open("/dev/urandom").and_then(|mut u| std::io::Read::read_exact(&mut u, &mut data)).unwrap();
        std::fs::write(&f, &data).unwrap();
        let entry = LayerEntry { path: format!("data/{i}"), kind: LayerKind::File(f), mode: 0o644, uid: 0, gid: 0 };
        let l = native_build::write_layer(dir.path(), vec![entry], 0).unwrap();
        diff_ids.push(l.diff_id.clone());
        layers.push(OciDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: l.digest,
            size: l.size as i64,
            urls: None,
            annotations: None,
            artifact_type: None,
        });
    }
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let image = OciImage::write(dir.path(), config.to_string().as_bytes(), layers, &BTreeMap::new(), None).unwrap();
    (dir, image)
}

#[test]
fn faults_503_429_and_a_dropped_upload_are_retried_and_the_push_completes() {
    let w = world();
    let a = &w.registry_plain;
    let proxy =
        FaultProxy::start(&a.host, Faults { unavailable: 2, too_many: 1, drop_uploads: 1, ..Default::default() });
    let opts = RegistryOptions { plain_http: vec![proxy.addr.clone()], ..Default::default() };
    let client = RegistryClient::new(opts, CredentialResolver::anonymous()).unwrap();
    let (_dir, image) = random_image(2, 3);
    let repo = unique_name("faults");
    let name = ImageName::parse(&format!("{}/{repo}", proxy.addr)).unwrap().value;
    let events = Events::default();
    let started = Instant::now();
    let pushed = tokio_rt_push(&client, &image, &name, &events);
    let log = proxy.log.lock().unwrap().join("\n");
    assert_eq!(pushed.digest, image.digest());
    assert_eq!(pushed.layers.pushed, 2, "{pushed:?}");
    assert!(log.contains("-> 503") && log.contains("-> 429") && log.contains("dropped after"), "{log}");
    let retries = events.retries();
    assert!(retries.len() >= 4, "two 503, one 429, one dropped upload: {retries:?}\n{log}");
    assert!(
        retries.iter().any(|r| r.wait == Duration::from_secs(1) && r.reason.contains("429")),
        "Retry-After honoured: {retries:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The registry behind the proxy (read directly) has the image under the pushed digest.
    let direct = format!("{}/{repo}:pr-1", a.host);
    assert_eq!(skopeo_digest(a, None, &direct).unwrap(), image.digest());
}

fn tokio_rt_push(
    client: &RegistryClient,
    image: &OciImage,
    name: &ImageName,
    events: &Events,
) -> prpod::model::PushedImage {
    rt().block_on(client.push(image, name, &["pr-1".into()], &events.sink())).unwrap()
}

#[test]
fn a_registry_that_stays_down_fails_clearly_within_ten_seconds() {
    let (_dir, image) = random_image(1, 1);
    // Nothing listens: connection refused on every attempt.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    // A proxy that answers 503 to everything.
    let w = world();
    let down = FaultProxy::start(&w.registry_plain.host, Faults { always_unavailable: true, ..Default::default() });
    for host in [closed, down.addr.clone()] {
        let opts = RegistryOptions { plain_http: vec![host.clone()], ..Default::default() };
        let client = RegistryClient::new(opts, CredentialResolver::anonymous()).unwrap();
        let name = ImageName::parse(&format!("{host}/down")).unwrap().value;
        let started = Instant::now();
        let err = rt().block_on(client.push(&image, &name, &["pr-1".into()], &|_| {})).unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(took >= Duration::from_secs(7), "5 attempts with 0.5+1+2+4 s between them: {took:?}");
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::Unavailable { attempts: 5, .. }), "{err:?}");
        assert!(msg.contains(&host) && msg.contains("gave up after 5 attempts"), "{msg}");
        assert_eq!(prpod::error::exit_code_for(&anyhow::Error::new(err)), 4);
    }
}

// --- Credentials go only to their origin (issue 12, section 3) ---------------------------------

use prpod_test_support::http_double::{Answer, HttpDouble, Seen};

const DOUBLE_USER: &str = "pusher";
const DOUBLE_PASSWORD: &str = "push-s3cret-for-the-origin";

/// Whether `seen` carries `Authorization` of any kind, or the password anywhere.
fn carries_credentials(seen: &[Seen]) -> bool {
    seen.iter().any(|s| {
        s.header("authorization").is_some()
            || s.headers.iter().any(|(_, v)| v.contains(DOUBLE_PASSWORD))
            || String::from_utf8_lossy(&s.body).contains(DOUBLE_PASSWORD)
    })
}

/// A client with the double's credentials for `host`, and `plain_http` hosts.
fn double_client(host: &str, plain_http: &[&str]) -> RegistryClient {
    let creds =
        CredentialResolver::anonymous().with_secret(host, DOUBLE_USER, Secret::new(DOUBLE_PASSWORD), "the test");
    let opts = RegistryOptions {
        plain_http: plain_http.iter().map(|h| h.to_string()).collect(),
        retry: prpod::clients::registry::RetryPolicy { attempts: 2, ..Default::default() },
        ..Default::default()
    };
    RegistryClient::new(opts, creds).unwrap()
}

/// A registry double with basic auth whose upload sessions live at `location` (another origin).
fn registry_sending_uploads_to(location: String) -> HttpDouble {
    HttpDouble::start(move |r| {
        if r.header("authorization").is_none() {
            return Answer::status(401).header("WWW-Authenticate", "Basic realm=\"double\"");
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("HEAD", _) => Answer::status(404),
            ("POST", p) if p.contains("/blobs/uploads/") => Answer::status(202).header("Location", location.clone()),
            ("PUT", p) if p.contains("/manifests/") => {
                Answer::status(201).header("Docker-Content-Digest", prpod::clients::registry::sha256_digest(&r.body))
            }
            _ => Answer::status(404),
        }
    })
}

#[test]
fn an_upload_location_on_another_origin_gets_no_credentials_and_no_plain_http() {
    let (_dir, image) = random_image(1, 0);
    // The second server: takes uploads, asks for credentials if none come.
    let other = HttpDouble::start(|r| match r.method.as_str() {
        "PUT" => Answer::status(201),
        _ => Answer::status(401).header("WWW-Authenticate", "Basic realm=\"other\""),
    });
    let registry = registry_sending_uploads_to(format!("{}/v2/upload/session-1?_state=x", other.url()));
    let name = ImageName::parse(&format!("{}/acme/web", registry.addr)).unwrap().value;

    // The other host is not in plain_http: refused before anything is sent there.
    let client = double_client(&registry.addr, &[&registry.addr]);
    let err = rt().block_on(client.push(&image, &name, &["pr-1".into()], &|_| {})).unwrap_err();
    assert!(matches!(err, RegistryError::Insecure { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&other.addr) && msg.contains("registry.plain_http"), "{msg}");
    assert!(!msg.contains(DOUBLE_PASSWORD) && !msg.contains("_state"), "{msg}");
    assert!(other.seen().is_empty(), "plain HTTP to a host not in plain_http: {:?}", other.seen());
    assert!(
        registry.seen().iter().any(|s| s.header("authorization").is_some()),
        "the registry that challenged got the credentials"
    );

    // Listed as plain HTTP, it is spoken to, but gets no credentials: the push completes there.
    let client = double_client(&registry.addr, &[&registry.addr, &other.addr]);
    let pushed = rt().block_on(client.push(&image, &name, &["pr-1".into()], &|_| {})).unwrap();
    assert_eq!(pushed.digest, image.digest());
    let seen = other.seen();
    assert!(seen.iter().any(|s| s.method == "PUT"), "the blob went to the Location: {seen:?}");
    assert!(!carries_credentials(&seen), "the other origin got credentials: {seen:?}");
}

#[test]
fn a_token_realm_on_another_plain_http_host_gets_no_credentials() {
    let realm = HttpDouble::start(|_| Answer::status(200).body(r#"{"token":"t","expires_in":300}"#));
    let realm_url = format!("{}/token", realm.url());
    let registry = HttpDouble::start(move |r| match r.header("authorization") {
        Some("Bearer t") => Answer::status(404),
        _ => Answer::status(401).header("WWW-Authenticate", format!("Bearer realm=\"{realm_url}\",service=\"double\"")),
    });
    let name = ImageName::parse(&format!("{}/acme/web", registry.addr)).unwrap().value;
    let reference =
        prpod::clients::registry::ImageReference { name: name.clone(), tag: Some("pr-1".into()), digest: None };

    // The realm is plain HTTP on a host not listed: refused, it sees nothing.
    let client = double_client(&registry.addr, &[&registry.addr]);
    let err = rt().block_on(client.manifest_digest(&reference)).unwrap_err();
    assert!(matches!(err, RegistryError::Insecure { .. }), "{err:?}");
    assert!(err.to_string().contains(&realm.addr), "{err}");
    assert!(realm.seen().is_empty(), "{:?}", realm.seen());

    // Listed by the operator, it is the token service and gets the basic credentials.
    let client = double_client(&registry.addr, &[&registry.addr, &realm.addr]);
    assert_eq!(rt().block_on(client.manifest_digest(&reference)).unwrap(), None);
    assert!(realm.seen().iter().any(|s| s.header("authorization").is_some_and(|a| a.starts_with("Basic "))));
}

#[test]
fn a_redirect_to_another_origin_drops_the_credentials() {
    let blob = b"a config blob".to_vec();
    let digest = prpod::clients::registry::sha256_digest(&blob);
    let body = blob.clone();
    let storage = HttpDouble::start(move |_| Answer::status(200).body(body.clone()));
    let target = format!("{}/bucket/blob", storage.url());
    let registry = HttpDouble::start(move |r| match r.header("authorization") {
        None => Answer::status(401).header("WWW-Authenticate", "Basic realm=\"double\""),
        Some(_) => Answer::status(307).header("Location", target.clone()),
    });
    let name = ImageName::parse(&format!("{}/acme/web", registry.addr)).unwrap().value;

    // Not listed as plain HTTP: the redirect is not followed.
    let client = double_client(&registry.addr, &[&registry.addr]);
    let err = rt().block_on(client.fetch_blob(&name, &digest)).unwrap_err();
    assert!(err.to_string().contains("plain HTTP"), "{err}");
    assert!(storage.seen().is_empty(), "{:?}", storage.seen());

    // Listed: followed, without the registry's credentials.
    let client = double_client(&registry.addr, &[&registry.addr, &storage.addr]);
    assert_eq!(rt().block_on(client.fetch_blob(&name, &digest)).unwrap(), blob);
    let seen = storage.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!carries_credentials(&seen), "{seen:?}");
}

#[test]
fn reads_on_the_push_host_use_the_pull_credentials_and_writes_the_push_ones() {
    use base64::Engine;
    let basic =
        |u: &str, p: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    let registry = HttpDouble::start(|r| match (r.header("authorization"), r.method.as_str()) {
        (None, _) => Answer::status(401).header("WWW-Authenticate", "Basic realm=\"double\""),
        (Some(_), "POST") => Answer::status(202).header("Location", "/v2/acme/web/blobs/uploads/1"),
        (Some(_), _) => Answer::status(404),
    });
    let host = registry.addr.clone();
    let creds = CredentialResolver::anonymous()
        .with_secret(&host, DOUBLE_USER, Secret::new(DOUBLE_PASSWORD), "the test")
        .with_pull_secret(&host, "puller", Secret::new("pull-only-pw"), "the test's pull password");
    let opts = RegistryOptions { plain_http: vec![host.clone()], ..Default::default() };
    let client = RegistryClient::new(opts, creds).unwrap();
    let name = ImageName::parse(&format!("{host}/acme/base")).unwrap().value;
    // A FROM image on the push host: read with the pull credentials.
    let base = prpod::clients::registry::ImageReference { name: name.clone(), tag: Some("1".into()), digest: None };
    assert_eq!(rt().block_on(client.manifest_digest(&base)).unwrap(), None);
    let reads: Vec<_> =
        registry.seen().into_iter().filter_map(|s| s.header("authorization").map(str::to_string)).collect();
    assert_eq!(reads, [basic("puller", "pull-only-pw")]);
    // A push: the push credentials.
    rt().block_on(client.check_push_access(&name)).unwrap();
    let last = registry.seen().into_iter().rev().find(|s| s.method == "POST").unwrap();
    assert_eq!(last.header("authorization"), Some(basic(DOUBLE_USER, DOUBLE_PASSWORD).as_str()));
}
