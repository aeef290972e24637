//! Tests of the world itself (issue 3): each service does what prpod's tests rely on, with real
//! processes (curl, skopeo, git, helm, kubectl). They need `scripts/dev-env up`; without it they
//! fail (never skip) with a message saying so.

use prpod_test_support::{
    HelmHome, Registry, Secret, TempDir, curl, curl_basic_auth, curl_bearer, curl_code, describe, run, run_ok,
    unique_name, wait_for, world,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// skopeo with its own auth file, so credentials never come from the host's logins.
fn skopeo(auth: &Path) -> Command {
    let mut c = Command::new("skopeo");
    c.env("REGISTRY_AUTH_FILE", auth);
    c
}

fn empty_authfile(dir: &TempDir) -> std::path::PathBuf {
    let p = dir.path().join("auth.json");
    std::fs::write(&p, "{}").unwrap();
    p
}

#[test]
fn env_describes_every_service() {
    let w = world();
    assert!(w.kubeconfig.is_file(), "KUBECONFIG {} missing", w.kubeconfig.display());
    for bin in [&w.helm, &w.helm3, &w.kubectl] {
        assert!(bin.is_file(), "{} missing", bin.display());
    }
    assert_eq!(w.var("PRPOD_DEV_ENV"), Some("1"));
    assert!(w.registry_tls.ca.as_ref().unwrap().is_file());
    assert!(!w.kube_token.is_empty() && !w.git.token.is_empty());
    // the credentials are generated, never the well-known defaults
    assert_ne!(w.registry_tls.password.as_ref().map(Secret::expose), Some("s3cret"));
    // registry C: same CA as B, its own port, a realm on the gateway, two users
    let c = &w.registry_token;
    assert_eq!(c.ca, w.registry_tls.ca);
    assert_ne!(c.host, w.registry_tls.host);
    let t = c.token_auth.as_ref().unwrap();
    assert!(t.realm.starts_with(&format!("https://{}:", w.var("PRPOD_POD_GATEWAY").unwrap())), "{}", t.realm);
    assert!(t.realm.ends_with("/token"), "{}", t.realm);
    assert_ne!(c.user, w.registry_token_reader.user);
    assert_ne!(c.password, w.registry_token_reader.password);
    for f in [c.authfile.as_ref().unwrap(), w.registry_token_reader.authfile.as_ref().unwrap()] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
    }
}

/// `{:?}` of the world (which tests print in messages) holds none of its credentials.
#[test]
fn printing_the_world_prints_no_credential() {
    let w = world();
    let printed = format!("{w:?}");
    assert!(w.secrets.len() >= 5, "{:?}", w.secrets.keys());
    for (name, value) in &w.secrets {
        assert!(value.expose().len() >= 16, "{name} is too short to be a generated credential");
        assert!(!printed.contains(value.expose()), "{name} appears in {{:?}} of World");
    }
    let git = w.git.git_with_token(&w.git.token);
    assert!(!describe(&git).contains(w.git.token.expose()));
}

#[test]
fn registry_plain_push_and_pull() {
    let w = world();
    let tmp = TempDir::new("reg-a");
    let auth = empty_authfile(&tmp);
    let repo = format!("{}/web", unique_name("world-a"));
    let dest = w.registry_plain.image(&format!("{repo}:t1"));
    // push: copy the locally built web image into a fresh repository
    run_ok(
        skopeo(&auth)
            .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(format!("docker://{}", w.web_image_plain))
            .arg(format!("docker://{dest}")),
    );
    let tags = run_ok(Command::new("curl").args(["-sf", &format!("{}/v2/{repo}/tags/list", w.registry_plain.url())]));
    assert!(tags.contains("\"t1\""), "tags of {repo}: {tags}");
    // pull: every blob back into a local dir, digest equal to the source's
    let out = tmp.path().join("pulled");
    run_ok(
        skopeo(&auth)
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{dest}"))
            .arg(format!("dir:{}", out.display())),
    );
    assert!(out.join("manifest.json").is_file());
    let digest = |img: &str| {
        run_ok(skopeo(&auth).args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &format!("docker://{img}"),
        ]))
    };
    assert_eq!(digest(&dest), digest(&w.web_image_plain));
    assert!(digest(&dest).trim().starts_with("sha256:"));
}

#[test]
fn registry_tls_needs_credentials_and_ca() {
    let w = world();
    let r = &w.registry_tls;
    let ca = r.ca.as_ref().unwrap().to_str().unwrap();
    let cert_dir = r.cert_dir.as_ref().unwrap();
    let user = r.user.as_deref().unwrap();
    let v2 = format!("{}/v2/", r.url());
    // HTTP level: 401 without credentials, 401 with a wrong password, 200 with both
    assert_eq!(curl_code(None, &["--cacert", ca, &v2]), "401");
    let wrong = curl_basic_auth(user, &Secret::new("wrong-password"));
    assert_eq!(curl_code(Some(&wrong), &["--cacert", ca, &v2]), "401");
    let right = curl_basic_auth(user, r.password.as_ref().unwrap());
    assert_eq!(curl_code(Some(&right), &["--cacert", ca, &v2]), "200");

    let tmp = TempDir::new("reg-b");
    let auth = empty_authfile(&tmp);
    let img = format!("docker://{}", w.web_image_tls);
    // no credentials (but the CA): 401 / unauthorized
    let o = run(skopeo(&auth).arg("inspect").arg("--cert-dir").arg(cert_dir).arg(&img));
    assert!(!o.status.success(), "inspect without credentials succeeded");
    let e = stderr(&o).to_lowercase();
    assert!(e.contains("unauthorized") || e.contains("401") || e.contains("authentication required"), "{e}");
    // credentials (from the world's authfile, never on the command line) but not the CA: x509
    let creds_file = r.authfile.as_ref().unwrap();
    let o = run(skopeo(creds_file).args(["inspect", &img]));
    assert!(!o.status.success(), "inspect without the CA succeeded");
    assert!(stderr(&o).contains("x509"), "{}", stderr(&o));
    // both: works, and a push into a new repository works too
    let d = run_ok(skopeo(creds_file).arg("inspect").arg("--cert-dir").arg(cert_dir).args([
        "--format",
        "{{.Digest}}",
        &img,
    ]));
    assert!(d.trim().starts_with("sha256:"), "{d}");
    let dest = format!("docker://{}", r.image(&format!("{}/web:t1", unique_name("world-b"))));
    run_ok(
        skopeo(creds_file)
            .args(["copy", "--src-tls-verify=false", &format!("docker://{}", w.web_image_plain), &dest])
            .arg("--dest-cert-dir")
            .arg(cert_dir),
    );
    // the authfile the world provides works on its own
    run_ok(
        Command::new("skopeo")
            .arg("inspect")
            .arg("--authfile")
            .arg(r.authfile.as_ref().unwrap())
            .arg("--cert-dir")
            .arg(cert_dir)
            .arg(&dest),
    );
}

#[test]
fn git_clone_needs_the_right_token() {
    let w = world();
    let tmp = TempDir::new("git");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let marker = unique_name("content");
    std::fs::write(src.join("sub/file.txt"), &marker).unwrap();
    let name = unique_name("world-git");
    let url = w.git.publish(&src, &name);
    assert_eq!(url, w.git.repo_url(&name));

    let git_as = |token: &Secret, args: &[&str]| run(w.git.git_with_token(token).args(args).current_dir(tmp.path()));
    let git = |args: &[&str]| git_as(&w.git.token, args);
    let o = git(&["clone", "-q", &url, "good"]);
    assert!(o.status.success(), "clone with the right token failed: {}", stderr(&o));
    assert_eq!(std::fs::read_to_string(tmp.path().join("good/sub/file.txt")).unwrap(), marker);

    let o = git_as(&Secret::new("wrong-token"), &["clone", "-q", &url, "bad"]);
    assert!(!o.status.success(), "clone with a wrong token succeeded");
    assert!(stderr(&o).contains("Authentication failed") || stderr(&o).contains("401"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("wrong-token"), "git printed the token: {}", stderr(&o));
    let o = git_as(&Secret::new(""), &["clone", "-q", &url, "anon"]);
    assert!(!o.status.success(), "clone without credentials succeeded");

    // publishing is idempotent: same content, same commit; new content, new commit on top
    let head = |dir: &str| stdout(&git(&["-C", dir, "rev-parse", "HEAD"])).trim().to_string();
    let first = head("good");
    w.git.publish(&src, &name);
    let o = git(&["-C", "good", "pull", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(head("good"), first, "re-publishing the same content made a new commit");
    std::fs::write(src.join("sub/file.txt"), "v2").unwrap();
    w.git.publish(&src, &name);
    let o = git(&["-C", "good", "pull", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(head("good"), first);
    assert_eq!(std::fs::read_to_string(tmp.path().join("good/sub/file.txt")).unwrap(), "v2");
}

/// Writes a minimal chart for the test web image. Helm 4 applies server-side, and 1.20 then
/// needs `protocol: TCP` on every port; busybox httpd ignores SIGTERM, hence the 1 s grace period.
fn write_web_chart(dir: &Path) {
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(dir.join("Chart.yaml"), "apiVersion: v2\nname: web\nversion: 0.1.0\n").unwrap();
    std::fs::write(dir.join("values.yaml"), "image: \"\"\ngreeting: \"\"\npullSecret: \"\"\nport: 8080\n").unwrap();
    std::fs::write(
        dir.join("templates/web.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: 1
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      terminationGracePeriodSeconds: 1
      {{- if .Values.pullSecret }}
      imagePullSecrets: [{name: {{ .Values.pullSecret }}}]
      {{- end }}
      containers:
      - name: web
        image: {{ .Values.image }}
        env: [{name: GREETING, value: {{ .Values.greeting | quote }}}]
        ports: [{containerPort: {{ .Values.port }}, protocol: TCP}]
        readinessProbe:
          httpGet: {path: /, port: {{ .Values.port }}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {app: {{ .Release.Name }}}
  ports: [{port: 80, targetPort: {{ .Values.port }}, protocol: TCP}]
"#,
    )
    .unwrap();
}

#[test]
fn helm_deploys_an_image_from_the_tls_registry() {
    let w = world();
    let ns = w.namespace("world-helm");
    w.create_pull_secret(&ns.name, "regcred", &w.registry_tls);
    let tmp = TempDir::new("chart");
    let chart = tmp.path().join("web");
    write_web_chart(&chart);
    let greeting = unique_name("hi");
    let home = HelmHome::new();
    let o = run(w.helm_cmd(&home).args(["upgrade", "--install", "web"]).arg(&chart).args([
        "-n",
        &ns.name,
        "--wait",
        "--timeout",
        "120s",
        "--set",
        &format!("image={}", w.web_image_tls),
        "--set",
        &format!("greeting={greeting}"),
        "--set",
        "pullSecret=regcred",
    ]));
    assert!(
        o.status.success(),
        "helm install failed: {}{}\n{}",
        stdout(&o),
        stderr(&o),
        String::from_utf8_lossy(&w.kubectl(["get", "pods,events", "-n", &ns.name, "-o", "wide"]).stdout)
    );
    let ready = w.kubectl_ok([
        "get",
        "pods",
        "-n",
        &ns.name,
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True");
    let ip = w.kubectl_ok(["get", "pods", "-n", &ns.name, "-l", "app=web", "-o", "jsonpath={.items[0].status.podIP}"]);
    assert!(
        ip.starts_with(w.var("PRPOD_POD_CIDR").unwrap().split('.').take(2).collect::<Vec<_>>().join(".").as_str()),
        "pod IP {ip}"
    );
    let body = run_ok(Command::new("curl").args(["-sf", "--max-time", "10", &format!("http://{ip}:{}/", w.web_port)]));
    assert_eq!(body.trim(), w.web_body);
    let g = run_ok(Command::new("curl").args([
        "-sf",
        "--max-time",
        "10",
        &format!("http://{ip}:{}/cgi-bin/greeting", w.web_port),
    ]));
    assert_eq!(g.trim(), greeting, "the pod that answered is not the one this test deployed");
    // kube-proxy: the ClusterIP Service answers too
    let cip = w.kubectl_ok(["get", "svc", "web", "-n", &ns.name, "-o", "jsonpath={.spec.clusterIP}"]);
    let body = wait_for("ClusterIP service to answer", Duration::from_secs(20), || {
        let o = run(Command::new("curl").args(["-sf", "--max-time", "2", &format!("http://{cip}/")]));
        o.status.success().then(|| stdout(&o))
    });
    assert_eq!(body.trim(), w.web_body);
    let o = run(w.helm_cmd(&home).args(["uninstall", "web", "-n", &ns.name]));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn node_cannot_pull_from_the_tls_registry_without_a_pull_secret() {
    let w = world();
    let ns = w.namespace("world-nopull");
    // Always: another test may already have pulled the image onto the node with a secret, and
    // IfNotPresent would then start it without asking the registry
    w.kubectl_ok([
        "run",
        "web",
        "-n",
        &ns.name,
        "--image",
        &w.web_image_tls,
        "--restart=Never",
        "--image-pull-policy=Always",
        "--overrides",
        r#"{"spec":{"terminationGracePeriodSeconds":1}}"#,
    ]);
    // the pull error the kubelet reports: ErrImagePull with the registry's 401 (ImagePullBackOff
    // carries only a back-off message, so wait for the ErrImagePull state)
    let msg = wait_for("the pull to fail", Duration::from_secs(60), || {
        let r = w.kubectl_ok([
            "get",
            "pod",
            "web",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
        ]);
        r.starts_with("ErrImagePull: ").then_some(r)
    });
    assert!(msg.contains("401 Unauthorized"), "{msg}");
}

#[test]
fn helm_versions_are_pinned() {
    let w = world();
    let home = HelmHome::new();
    let v4 = run_ok(w.helm_cmd(&home).args(["version", "--short"]));
    assert!(v4.starts_with(&format!("v{}", w.var("PRPOD_HELM_VERSION").unwrap())), "{v4}");
    assert!(v4.starts_with("v4.1."), "{v4}");
    let v3 = run_ok(w.helm3_cmd(&home).args(["version", "--short"]));
    assert!(v3.starts_with("v3.18."), "{v3}");
    // Helm 3 talks to the cluster too
    run_ok(w.helm3_cmd(&home).args(["list", "-A"]));
}

#[test]
fn rbac_is_enforced_for_service_account_tokens() {
    let w = world();
    let mine = w.namespace("world-rbac-a");
    let other = w.namespace("world-rbac-b");
    let (a, b) = (mine.name.as_str(), other.name.as_str());
    w.kubectl_ok(["create", "serviceaccount", "deployer", "-n", a]);
    w.kubectl_apply(
        a,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pods}\n\
         rules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list]}]\n",
    );
    w.kubectl_ok([
        "create",
        "rolebinding",
        "deployer-pods",
        "-n",
        a,
        "--role=pods",
        &format!("--serviceaccount={a}:deployer"),
    ]);
    // the token controller's Secret (1.20 still creates one per ServiceAccount)
    let token = Secret::new(wait_for("the ServiceAccount token", Duration::from_secs(30), || {
        let secret = w.kubectl_ok(["get", "serviceaccount", "deployer", "-n", a, "-o", "jsonpath={.secrets[0].name}"]);
        if secret.is_empty() {
            return None;
        }
        let t = w.kubectl_ok(["get", "secret", &secret, "-n", a, "-o", "go-template={{.data.token | base64decode}}"]);
        (!t.is_empty()).then_some(t)
    }));
    // the token goes in a kubeconfig file, not on kubectl's command line
    let tmp = TempDir::new("rbac");
    let kubeconfig = tmp.path().join("sa.kubeconfig");
    prpod_test_support::write_private(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{token: \"{}\"}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
            w.kube_api,
            w.kube_ca.display(),
            token.expose()
        )
        .as_bytes(),
    );
    let as_sa = |ns: &str| {
        run(Command::new(&w.kubectl)
            .env("KUBECACHEDIR", &w.kube_cache)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "pods", "-n", ns]))
    };
    let o = as_sa(a);
    assert!(o.status.success(), "the Role should allow listing pods in {a}: {}", stderr(&o));
    let o = as_sa(b);
    assert!(!o.status.success(), "listing pods in {b} was allowed");
    assert!(stderr(&o).contains("Forbidden") || stderr(&o).contains("forbidden"), "{}", stderr(&o));
    // and at the HTTP level: 403, not 401 (the token is valid, the permission is missing)
    let ca = w.kube_ca.to_str().unwrap();
    let auth = curl_bearer(&token);
    let pods = |ns: &str| format!("{}/api/v1/namespaces/{ns}/pods", w.kube_api);
    assert_eq!(curl_code(Some(&auth), &["--cacert", ca, &pods(b)]), "403");
    assert_eq!(curl_code(Some(&auth), &["--cacert", ca, &pods(a)]), "200");
    assert_eq!(curl_code(Some(&curl_bearer(&Secret::new("nope"))), &["--cacert", ca, &pods(a)]), "401");
}

#[test]
fn pods_reach_the_api_server() {
    let w = world();
    // the `kubernetes` Service points at the bridge gateway, where the apiserver listens
    let ep = w.kubectl_ok([
        "get",
        "endpoints",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    ]);
    assert_eq!(format!("https://{ep}"), w.kube_api_pod);
    let ns = w.namespace("world-api");
    // a repo on the git server, which pods reach on the gateway (prpod clones from inside a pod)
    let tmp = TempDir::new("pod-git");
    std::fs::write(tmp.path().join("README"), "x").unwrap();
    let repo = unique_name("world-pod-git");
    w.git.publish(tmp.path(), &repo);
    // credentialed URLs reach the pod through a Secret (created from a file, not argv), never
    // through the pod spec or the script text, which anyone who can read pods can see
    let creds = tmp.path().join("probe.env");
    prpod_test_support::write_private(
        &creds,
        format!(
            "GIT_URL=http://{}:{}@{}/{repo}.git\nREGISTRY_B_URL=https://{}:{}@{}/v2/_catalog\n",
            w.git.user,
            w.git.token.expose(),
            w.git.url_pod.trim_start_matches("http://"),
            w.registry_tls.user.as_deref().unwrap(),
            w.registry_tls.password.as_ref().unwrap().expose(),
            w.registry_tls.host_pod,
        )
        .as_bytes(),
    );
    w.kubectl_ok([
        "create",
        "secret",
        "generic",
        "probe-creds",
        "-n",
        &ns.name,
        &format!("--from-env-file={}", creds.display()),
    ]);
    // (stderr into stdout: the container log interleaves the two streams out of order)
    // busybox wget (with ssl_client) from inside a pod: via the ClusterIP (kube-proxy) and via the
    // gateway address directly; /version is readable without credentials
    let script = format!(
        "exec 2>&1; wget -q -O- --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version && \
         echo ---- && wget -q -O- --no-check-certificate {}/version && echo ---- && \
         wget -q -O- --header \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" \
           --no-check-certificate https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/{}/pods; \
         echo ----; wget -q -O- \"$GIT_URL/info/refs?service=git-upload-pack\"; \
         echo ----; wget -q -O- http://{}/v2/_catalog; \
         echo ----; wget -q -O- --no-check-certificate https://{}/v2/_catalog; \
         echo ----; wget -q -O- --no-check-certificate \"$REGISTRY_B_URL\"; echo done",
        w.kube_api_pod, ns.name, w.registry_plain.host_pod, w.registry_tls.host_pod,
    );
    // the node pulls by the gateway name too: one image name works for host, pods and node
    let image = w.web_image_plain.replace(&w.registry_plain.host, &w.registry_plain.host_pod);
    let overrides = format!(
        r#"{{"spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"c","image":"{}","command":["/bin/sh","-c",{}],"envFrom":[{{"secretRef":{{"name":"probe-creds"}}}}]}}]}}}}"#,
        image,
        json_string(&script)
    );
    w.kubectl_ok(["run", "probe", "-n", &ns.name, "--image", &image, "--restart=Never", "--overrides", &overrides]);
    let phase = wait_for("the probe pod to finish", Duration::from_secs(60), || {
        let p = w.kubectl_ok(["get", "pod", "probe", "-n", &ns.name, "-o", "jsonpath={.status.phase}"]);
        (p == "Succeeded" || p == "Failed").then_some(p)
    });
    let logs = w.kubectl_ok(["logs", "probe", "-n", &ns.name]);
    assert_eq!(phase, "Succeeded", "{logs}");
    let parts: Vec<&str> = logs.split("----").collect();
    assert_eq!(parts.len(), 7, "{logs}");
    for p in &parts[..2] {
        assert!(p.contains("\"gitVersion\": \"v1.20.2\""), "{logs}");
    }
    // the default ServiceAccount has no RBAC grants: the apiserver authenticated its token (else
    // 401) and refused the list
    assert!(parts[2].contains("403"), "{logs}");
    assert!(parts[3].contains("refs/heads/main"), "git smart HTTP from a pod: {logs}");
    // both registries from a pod, through the gateway relays; B still wants its credentials
    assert!(parts[4].contains("prpod-test/web"), "registry A from a pod: {logs}");
    assert!(parts[5].contains("401"), "registry B from a pod without credentials: {logs}");
    assert!(parts[6].contains("prpod-test/web"), "registry B from a pod with credentials: {logs}");
}

#[test]
fn helm_pushes_and_pulls_charts_on_the_tls_registry() {
    let w = world();
    let r = &w.registry_tls;
    let tmp = TempDir::new("helm-oci");
    let chart = tmp.path().join("web");
    write_web_chart(&chart);
    let home = HelmHome::new();
    run_ok(w.helm_cmd(&home).args(["package", "-d"]).arg(tmp.path()).arg(&chart));
    let tgz = tmp.path().join("web-0.1.0.tgz");
    let repo = format!("oci://{}/{}", r.host, unique_name("world-charts"));
    let auth = |c: &mut Command| {
        c.arg("--registry-config").arg(r.authfile.as_ref().unwrap()).arg("--ca-file").arg(r.ca.as_ref().unwrap());
    };
    // Helm 4 and Helm 3.18 both push over TLS with the world's CA and auth file
    for (helm, sub) in [(w.helm_cmd(&home), "h4"), (w.helm3_cmd(&home), "h3")] {
        let mut c = helm;
        c.arg("push").arg(&tgz).arg(format!("{repo}/{sub}"));
        auth(&mut c);
        run_ok(&mut c);
        let mut show = w.helm_cmd(&home);
        show.args(["show", "chart", &format!("{repo}/{sub}/web"), "--version", "0.1.0"]);
        auth(&mut show);
        assert!(run_ok(&mut show).contains("name: web"));
    }
    // without credentials the registry refuses the pull
    let mut c = w.helm_cmd(&home);
    c.args(["show", "chart", &format!("{repo}/h4/web"), "--version", "0.1.0", "--ca-file"]).arg(r.ca.as_ref().unwrap());
    let o = run(&mut c);
    assert!(!o.status.success(), "anonymous pull of a chart from the TLS registry worked");
}

fn json_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The payload of a JWT (its middle part, base64url without padding), as text.
fn jwt_part(token: &Secret, i: usize) -> String {
    let part = token.expose().split('.').nth(i).expect("a JWT has three parts");
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in part.bytes() {
        bits = (bits << 6) | A.iter().position(|&a| a == c).expect("base64url") as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).expect("JSON")
}

/// The `access` claim of a registry token, as `TYPE:NAME:ACTIONS` strings (tolerant parsing:
/// the claim is flat JSON written by the GHCR token double).
fn granted(token: &Secret) -> BTreeSet<String> {
    let claims = jwt_part(token, 1);
    let access = &claims[claims.find("\"access\"").expect("access claim")..];
    access
        .split('{')
        .skip(1)
        .map(|entry| {
            let field = |k: &str| {
                let v = &entry[entry.find(&format!("\"{k}\"")).unwrap() + k.len() + 2..];
                v.trim_start_matches([':', ' ']).to_string()
            };
            let quoted = |v: String| v[1..v[1..].find('"').unwrap() + 1].to_string();
            let actions = field("actions");
            let actions = &actions[1..actions.find(']').unwrap()];
            format!("{}:{}:{}", quoted(field("type")), quoted(field("name")), actions.replace(['"', ' '], ""))
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Registry C asks anonymous clients for a Bearer token, the way ghcr.io does.
#[test]
fn registry_token_challenges_anonymous_clients_with_bearer() {
    let w = world();
    let r = &w.registry_token;
    let t = r.token_auth.as_ref().unwrap();
    let ca = r.ca.as_ref().unwrap().to_str().unwrap();
    let repo = w.web_image_token.trim_start_matches(&format!("{}/", r.host)).split(':').next().unwrap().to_string();
    let o = curl(None, &["-D", "-", "-o", "/dev/null", "--cacert", ca, &format!("{}/v2/{repo}/manifests/1", r.url())]);
    let headers = stdout(&o);
    assert_eq!(headers.split_whitespace().nth(1), Some("401"), "{headers}");
    let challenge = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().starts_with("www-authenticate:").then(|| l["www-authenticate:".len()..].trim())
        })
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {headers}"));
    assert_eq!(
        challenge.trim(),
        format!(r#"Bearer realm="{}",service="{}",scope="repository:{repo}:pull""#, t.realm, t.service)
    );
    // and a token from the realm opens the door
    let token = w.registry_token_reader.bearer_token(&[&format!("repository:{repo}:pull")]).unwrap();
    let manifest = format!("{}/v2/{repo}/manifests/1", r.url());
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    assert_eq!(curl_code(Some(&curl_bearer(&token)), &["-H", accept, "--cacert", ca, &manifest]), "200");
    // a token for another repository does not
    let other = w.registry_token.bearer_token(&["repository:some/other:pull"]).unwrap();
    assert_eq!(curl_code(Some(&curl_bearer(&other)), &["-H", accept, "--cacert", ca, &manifest]), "401");
}

/// The GHCR token double grants what a user holds and drops the rest.
#[test]
fn token_double_grants_only_what_the_user_holds() {
    let w = world();
    let (main, reader) = (&w.registry_token, &w.registry_token_reader);
    let t = main.token_auth.as_ref().unwrap();
    let dst = unique_name("world-c-dst");
    let push = format!("repository:{dst}:pull,push");
    // user + token: pull and push
    let token = main.bearer_token(&[&push]).unwrap();
    assert_eq!(granted(&token), set(&[&push]));
    let claims = jwt_part(&token, 1);
    assert!(claims.contains(&format!(r#""iss":"{}""#, t.issuer)), "{claims}");
    assert!(claims.contains(&format!(r#""aud":"{}""#, t.service)), "{claims}");
    assert!(claims.contains(&format!(r#""sub":"{}""#, main.user.as_deref().unwrap())), "{claims}");
    let header = jwt_part(&token, 0);
    assert!(header.contains(r#""alg":"RS256""#) && header.contains(r#""x5c":["#), "{header}");
    // a cross-repository mount: the source repository's pull scope is granted beside the target's
    let src = "prpod-test/web";
    let token = main.bearer_token(&[&push, &format!("repository:{src}:pull")]).unwrap();
    assert_eq!(granted(&token), set(&[&push, &format!("repository:{src}:pull")]));
    // GitHub Actions' form: x-access-token + the user's token, the same user's grants
    let gha = main.with_credentials("x-access-token", main.password.clone().unwrap());
    let token = gha.bearer_token(&[&push]).unwrap();
    assert_eq!(granted(&token), set(&[&push]));
    assert!(jwt_part(&token, 1).contains(&format!(r#""sub":"{}""#, main.user.as_deref().unwrap())));
    // the pull-only user asking for push gets pull only (dropped, not an error)
    let token = reader.bearer_token(&[&push]).unwrap();
    assert_eq!(granted(&token), set(&[&format!("repository:{dst}:pull")]));
    // the reader's token with the main user's name, or a wrong token: refused outright
    let e =
        main.with_credentials(main.user.as_deref().unwrap(), reader.password.clone().unwrap()).bearer_token(&[&push]);
    assert!(e.as_ref().is_err_and(|e| e.contains("401")), "{e:?}");
    let e = main.with_credentials("x-access-token", Secret::new("wrong-token-wrong-token")).bearer_token(&[&push]);
    assert!(e.as_ref().is_err_and(|e| e.contains("401")), "{e:?}");
    // anonymous: a token that grants nothing (every repository here is private)
    let anon = Registry { user: None, password: None, ..main.clone() };
    assert_eq!(granted(&anon.bearer_token(&[&push]).unwrap()), set(&[]));
    // OAuth2 POST is not offered: 404, on which clients fall back to GET. Its form body holds
    // the password (containerd sends one): it must never come back, not even in the answer to
    // the next request on the same connection (`--next` reuses it when the server keeps it)
    let ca = main.ca.as_ref().unwrap().to_str().unwrap();
    let marker = unique_name("form-password");
    let form = format!("grant_type=password&username=u&password={marker}&service={}", t.service);
    let post = ["-w", " %{http_code}\n", "--cacert", ca, "-d", &form, &t.realm];
    let args: Vec<&str> = post.iter().copied().chain(["--next", "-s"]).chain(post.iter().copied()).collect();
    let o = String::from_utf8_lossy(&curl(None, &args).stdout).into_owned();
    assert_eq!(o.matches(" 404\n").count(), 2, "{o}");
    assert!(!o.contains(&marker), "the token double echoed a form body: {o}");
}

/// skopeo (containers/image does the whole Bearer dance) pushes to C with the right token only.
#[test]
fn registry_token_push_needs_a_token_that_may_push() {
    let w = world();
    let (main, reader) = (&w.registry_token, &w.registry_token_reader);
    let tmp = TempDir::new("reg-c");
    let cert_dir = main.cert_dir.as_ref().unwrap();
    let src = format!("docker://{}", w.web_image_plain);
    let push_as = |authfile: &Path, tag: &str| {
        let dest = format!("docker://{}", main.image(&format!("{}/web:{tag}", unique_name("world-c"))));
        let o = run(skopeo(authfile)
            .args(["copy", "--src-tls-verify=false", &src, &dest])
            .arg("--dest-cert-dir")
            .arg(cert_dir));
        (o, dest)
    };
    // the world's authfile (user + token) pushes, and the pushed image reads back
    let (o, dest) = push_as(main.authfile.as_ref().unwrap(), "t1");
    assert!(o.status.success(), "push with the right token failed: {}", stderr(&o));
    let digest = |auth: &Path, img: &str| {
        run_ok(skopeo(auth).arg("inspect").arg("--cert-dir").arg(cert_dir).args(["--format", "{{.Digest}}", img]))
    };
    assert!(digest(main.authfile.as_ref().unwrap(), &dest).starts_with("sha256:"));
    // x-access-token + token works too
    let gha = main
        .with_credentials("x-access-token", main.password.clone().unwrap())
        .write_authfile(&tmp.path().join("gha.json"));
    let (o, _) = push_as(&gha, "t2");
    assert!(o.status.success(), "push as x-access-token failed: {}", stderr(&o));
    // a wrong token: the issuer refuses, so does the push
    let wrong = main
        .with_credentials(main.user.as_deref().unwrap(), Secret::new("wrong-token-wrong-token"))
        .write_authfile(&tmp.path().join("wrong.json"));
    let (o, _) = push_as(&wrong, "t3");
    assert!(!o.status.success(), "push with a wrong token succeeded");
    assert!(stderr(&o).contains("unauthorized"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("wrong-token-wrong-token"), "skopeo printed the token");
    // the pull-only user: pulls what the other pushed, cannot push
    let reader_auth = reader.authfile.as_ref().unwrap();
    assert_eq!(digest(reader_auth, &dest), digest(main.authfile.as_ref().unwrap(), &dest));
    let (o, _) = push_as(reader_auth, "t4");
    assert!(!o.status.success(), "the pull-only user pushed");
    assert!(stderr(&o).contains("denied"), "{}", stderr(&o));
}

/// The node pulls from C with an imagePullSecret: containerd does the Bearer dance itself (the
/// realm is trusted through C's hosts.toml). Without a secret the pull is refused.
#[test]
fn node_pulls_from_the_token_registry_with_a_pull_secret() {
    let w = world();
    let ns = w.namespace("world-c-pull");
    // the pull-only user's credentials: enough to pull
    w.create_pull_secret(&ns.name, "ghcr", &w.registry_token_reader);
    let pod = |name: &str, secret: Option<&str>| {
        let pull_secrets = secret.map_or(String::new(), |s| format!(r#","imagePullSecrets":[{{"name":"{s}"}}]"#));
        // Always: the image may be on the node already (another test), and IfNotPresent would
        // then start it without asking the registry
        let overrides = format!(
            r#"{{"spec":{{"terminationGracePeriodSeconds":1{pull_secrets},"containers":[{{"name":"web","image":"{}","imagePullPolicy":"Always"}}]}}}}"#,
            w.web_image_token
        );
        w.kubectl_ok([
            "run",
            name,
            "-n",
            &ns.name,
            "--image",
            &w.web_image_token,
            "--restart=Never",
            "--overrides",
            &overrides,
        ]);
    };
    pod("with-secret", Some("ghcr"));
    pod("without-secret", None);
    let status = |name: &str| {
        w.kubectl_ok([
            "get",
            "pod",
            name,
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.phase} {.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
        ])
    };
    let s = wait_for("the pod with the pull secret to run", Duration::from_secs(60), || {
        let s = status("with-secret");
        (s.starts_with("Running") || s.contains("ErrImagePull")).then_some(s)
    });
    assert!(s.starts_with("Running"), "{s}");
    let msg = wait_for("the pull without a secret to fail", Duration::from_secs(60), || {
        let s = status("without-secret");
        s.contains("ErrImagePull: ").then_some(s)
    });
    assert!(msg.contains("401") || msg.contains("insufficient_scope") || msg.contains("authorization failed"), "{msg}");
}

/// Every process of the world listens on a specific address (loopback or the pod gateway),
/// never on a wildcard one that other hosts could reach.
#[test]
fn no_world_listener_on_a_wildcard_address() {
    let w = world();
    // the world's processes: the sessions of the services `up` started (each runs in its own)
    let leaders: BTreeSet<String> = std::fs::read_dir(w.run_dir.join("pids"))
        .expect("the world's pid files")
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap().trim().to_string())
        .collect();
    let session_of = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // fields after the command name (in parentheses, may hold spaces): state ppid pgrp session
        stat.rsplit_once(')')?.1.split_whitespace().nth(3).map(str::to_string)
    };
    let ports: BTreeSet<String> = run_ok(Command::new(w.repo_root().join("scripts/dev-env")).arg("ports"))
        .split_whitespace()
        .map(String::from)
        .collect();
    let ss = run_ok(Command::new("ss").args(["-Hltnp"]));
    let mut ours = Vec::new();
    for line in ss.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local = cols[3];
        let (addr, port) = local.rsplit_once(':').unwrap();
        let by_pid = line
            .split("pid=")
            .skip(1)
            .filter_map(|p| session_of(p.split(',').next().unwrap()))
            .any(|sid| leaders.contains(&sid));
        if by_pid || ports.contains(port) {
            ours.push((addr.to_string(), port.to_string(), line.to_string()));
        }
    }
    for (addr, _, line) in &ours {
        assert!(
            !matches!(addr.as_str(), "0.0.0.0" | "*" | "[::]" | "::"),
            "a world listener on every interface: {line}"
        );
    }
    // not vacuous: the controller-manager's and scheduler's insecure ports (fixed, see
    // docs/dev-env.md), which 1.20 binds to 0.0.0.0 unless told otherwise, are among them
    for p in ["47252", "47251"] {
        assert!(ours.iter().any(|(a, port, _)| port == p && a == "127.0.0.1"), "port {p} not on 127.0.0.1: {ours:?}");
    }
    assert!(ours.len() >= ports.len(), "only {} world listeners found: {ours:?}", ours.len());
}
