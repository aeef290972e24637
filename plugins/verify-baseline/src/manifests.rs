//! Rules on rendered manifests, run before anything is deployed.

use crate::prpod::plugin::types::{DeployTarget, Severity};
use crate::{Finding, Manifest, PrContext};
use serde::Deserialize;
use serde_yaml::Value;

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn is_true(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool) == Some(true)
}

fn error(rule: &str, object: &str, message: String) -> Finding {
    Finding { severity: Severity::Error, rule: rule.into(), message, object: Some(object.into()) }
}

/// Where the pod spec of a `kind` lives, or `None` for kinds without pods.
pub fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some(&["spec", "template", "spec"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// A parsed image reference: `name[:tag][@digest]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Image<'a> {
    /// Everything before the tag and digest, registry host included.
    pub name: &'a str,
    /// The tag, if any.
    pub tag: Option<&'a str>,
    /// The digest (`sha256:...`), if any.
    pub digest: Option<&'a str>,
}

/// Splits an image reference into name, tag and digest.
pub fn parse_image(image: &str) -> Image<'_> {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last_slash..].rfind(':') {
        Some(i) => Image { name: &rest[..last_slash + i], tag: Some(&rest[last_slash + i + 1..]), digest },
        None => Image { name: rest, tag: None, digest },
    }
}

/// Runs every manifest rule on every manifest.
pub fn check(ctx: &PrContext, manifests: &[Manifest]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for m in manifests {
        check_one(ctx.target.as_ref(), m, &mut findings);
    }
    findings
}

/// Most rounds of merge-key resolution (a merge can pull in mappings holding merges).
const MAX_MERGE_ROUNDS: usize = 16;
/// Deepest nesting of lists flattened.
const MAX_LIST_DEPTH: usize = 8;

/// Runs the rules on one manifest (whose text may hold several YAML documents). YAML merge keys
/// (`<<`) are resolved first, as Kubernetes' reader does, and lists (`kind: List`, or any object
/// with top-level `items`, which Kubernetes' reader treats as a list) are checked item by item.
pub fn check_one(target: Option<&DeployTarget>, m: &Manifest, out: &mut Vec<Finding>) {
    let fallback = format!("{}/{}", m.kind, m.name);
    for doc in serde_yaml::Deserializer::from_str(&m.text) {
        let mut value = match Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.push(error(
                    "manifest-yaml",
                    &fallback,
                    format!("{fallback}: the manifest is not valid YAML ({e}); fix the chart template that renders it"),
                ));
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        if let Err(why) = resolve_merges(&mut value) {
            out.push(error(
                "manifest-yaml",
                &fallback,
                format!("{fallback}: {why}; write the fields out instead of merging them"),
            ));
            return;
        }
        check_object(target, m, &value, 0, out);
    }
}

/// Checks one object, or each item of a list.
fn check_object(target: Option<&DeployTarget>, m: &Manifest, value: &Value, depth: usize, out: &mut Vec<Finding>) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or(&m.kind);
    let name = get(value, &["metadata", "name"]).and_then(Value::as_str).unwrap_or(&m.name);
    let object = format!("{kind}/{name}");
    if let Some(items) = value.get("items") {
        match items.as_sequence() {
            Some(items) if depth < MAX_LIST_DEPTH => {
                for item in items {
                    check_object(target, m, item, depth + 1, out);
                }
            }
            Some(_) => out.push(error(
                "manifest-yaml",
                &object,
                format!("{object}: lists nest more than {MAX_LIST_DEPTH} deep; render the objects one by one"),
            )),
            None => out.push(error(
                "manifest-yaml",
                &object,
                format!("{object}: its top-level `items` is not a list; render the objects one by one"),
            )),
        }
        return;
    }
    let Some(path) = pod_spec_path(kind) else {
        return;
    };
    let Some(pod) = get(value, path) else {
        return;
    };
    check_pod(target, &object, pod, out);
}

/// Resolves every `<<` merge key (a merge may bring in mappings holding merges: repeated).
fn resolve_merges(v: &mut Value) -> Result<(), String> {
    for _ in 0..MAX_MERGE_ROUNDS {
        if !has_merge_key(v) {
            return Ok(());
        }
        v.apply_merge().map_err(|e| format!("a YAML merge key (`<<`) cannot be resolved ({e})"))?;
    }
    Err(format!("YAML merge keys (`<<`) nest more than {MAX_MERGE_ROUNDS} deep"))
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m.iter().any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// The rules on one pod spec; `object` is `Kind/name` of the object holding it.
pub fn check_pod(target: Option<&DeployTarget>, object: &str, pod: &Value, out: &mut Vec<Finding>) {
    for (field, rule) in
        [("hostNetwork", "host network"), ("hostPID", "host PID namespace"), ("hostIPC", "host IPC namespace")]
    {
        if is_true(pod.get(field)) {
            out.push(error(
                "host-network",
                object,
                format!("{object} uses the {rule} ({field}: true); remove {field} from the pod spec"),
            ));
        }
    }
    if let Some(volumes) = pod.get("volumes").and_then(Value::as_sequence) {
        for v in volumes {
            if let Some(hp) = v.get("hostPath") {
                let vname = v.get("name").and_then(Value::as_str).unwrap_or("?");
                let path = hp.get("path").and_then(Value::as_str).unwrap_or("?");
                out.push(error(
                    "host-path",
                    object,
                    format!(
                        "{object} mounts host path {path:?} (volume {vname:?}); use an emptyDir, \
                         configMap or persistentVolumeClaim volume instead"
                    ),
                ));
            }
        }
    }
    let pod_non_root = is_true(get(pod, &["securityContext", "runAsNonRoot"]));
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod.get(list).and_then(Value::as_sequence) else {
            continue;
        };
        for c in containers {
            check_container(target, object, list, c, pod_non_root, out);
        }
    }
}

fn check_container(
    target: Option<&DeployTarget>,
    object: &str,
    list: &str,
    c: &Value,
    pod_non_root: bool,
    out: &mut Vec<Finding>,
) {
    let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
    let what =
        if list == "initContainers" { format!("init container {cname:?}") } else { format!("container {cname:?}") };
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    if image.is_empty() {
        out.push(error("image-pinned", object, format!("{object}: {what} has no image; set the image reference")));
    } else {
        check_image(target, object, &what, image, out);
    }

    let mut missing = Vec::new();
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            let set = get(c, &["resources", kind, res]).is_some_and(|v| !v.is_null());
            if !set {
                missing.push(format!("{kind}.{res}"));
            }
        }
    }
    if !missing.is_empty() {
        out.push(error(
            "resources",
            object,
            format!(
                "{object}: {what} does not set resources {}; set cpu and memory requests and \
                 limits (e.g. in the app spec's resources)",
                missing.join(", ")
            ),
        ));
    }

    if is_true(get(c, &["securityContext", "privileged"])) {
        out.push(error(
            "privileged",
            object,
            format!("{object}: {what} runs privileged; remove securityContext.privileged"),
        ));
    }

    let own = get(c, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool);
    let non_root = own.unwrap_or(pod_non_root);
    if !non_root {
        out.push(error(
            "run-as-non-root",
            object,
            format!(
                "{object}: {what} may run as root; set securityContext.runAsNonRoot: true on the \
                 pod or the container (and run the image as a non-root user)"
            ),
        ));
    }
}

fn check_image(target: Option<&DeployTarget>, object: &str, what: &str, image: &str, out: &mut Vec<Finding>) {
    let parsed = parse_image(image);
    if let Some(t) = target {
        let registry = t.registry.trim_end_matches('/');
        if !image.starts_with(&format!("{registry}/")) {
            out.push(error(
                "image-registry",
                object,
                format!(
                    "{object}: {what} uses image {image:?}, which does not come from registry \
                     {registry}; push the image to {registry} and reference it from there"
                ),
            ));
        }
    }
    let by_digest = parsed.digest.is_some_and(|d| d.starts_with("sha256:"));
    match parsed.tag {
        Some("latest") => out.push(error(
            "image-pinned",
            object,
            format!(
                "{object}: {what} uses image {image:?} with tag latest; reference the tag \
                 prpod pushed for this pull request or a digest"
            ),
        )),
        None if !by_digest => out.push(error(
            "image-pinned",
            object,
            format!(
                "{object}: {what} uses image {image:?} without a tag or digest (which means \
                 latest); reference the tag prpod pushed for this pull request or a digest"
            ),
        )),
        Some(tag) if !by_digest => {
            if let Some(t) = target {
                let ok = tag == t.tags.primary || t.tags.extra.iter().any(|e| e == tag);
                if !ok {
                    out.push(error(
                        "image-pinned",
                        object,
                        format!(
                            "{object}: {what} uses image {image:?}, whose tag {tag:?} is not one \
                             of the tags chosen for this run ({}); reference {:?} or pin a digest",
                            std::iter::once(&t.tags.primary)
                                .chain(&t.tags.extra)
                                .map(String::as_str)
                                .collect::<Vec<_>>()
                                .join(", "),
                            t.tags.primary
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prpod::plugin::types::{Event, ImageRef, ReleaseTarget, TagSet};

    fn target() -> DeployTarget {
        DeployTarget {
            registry: "127.0.0.1:5443".into(),
            image: ImageRef { repository: "127.0.0.1:5443/acme/web".into(), tag: Some("pr-42".into()), digest: None },
            tags: TagSet {
                primary: "pr-42".into(),
                extra: vec!["sha-0123456789ab".into()],
                cache_from: vec![],
                cache_to: None,
            },
            release: ReleaseTarget { name: "pr-42".into(), namespace: "pr-42".into() },
        }
    }

    pub(crate) fn ctx(target: Option<DeployTarget>) -> PrContext {
        PrContext {
            repository_url: "https://git.example.invalid/acme/web.git".into(),
            repository: "acme/web".into(),
            number: Some(42),
            branch: "feat".into(),
            base_branch: None,
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            event: Event::Opened,
            labels: vec![],
            author: "a".into(),
            draft: false,
            fork: false,
            target,
        }
    }

    fn manifest(kind: &str, name: &str, text: &str) -> Manifest {
        Manifest {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: None,
            text: text.into(),
        }
    }

    const GOOD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      securityContext:
        runAsNonRoot: true
      containers:
        - name: web
          image: "127.0.0.1:5443/acme/web:pr-42@sha256:abababababababababababababababababababababababababababababababab"
          resources:
            requests: {cpu: 50m, memory: 32Mi}
            limits: {cpu: 500m, memory: 128Mi}
"#;

    fn rules(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.rule.as_str()).collect()
    }

    #[test]
    fn good_deployment_passes() {
        let f = check(&ctx(Some(target())), &[manifest("Deployment", "web", GOOD)]);
        assert!(f.is_empty(), "{f:?}");
        // A Service or ConfigMap has no pods.
        let f = check(
            &ctx(Some(target())),
            &[manifest("Service", "web", "kind: Service\nmetadata: {name: web}\nspec: {}\n")],
        );
        assert!(f.is_empty());
    }

    #[test]
    fn list_items_are_checked_one_by_one() {
        let bad = "{apiVersion: v1, kind: Pod, metadata: {name: inner}, spec: {hostNetwork: true, containers: []}}";
        for text in [
            format!("apiVersion: v1\nkind: List\nitems:\n  - {bad}\n"),
            format!("apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: List\n    items: [{bad}]\n"),
            // Kubernetes' reader takes any object with top-level `items` for a list.
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\nitems:\n  - {bad}\n"),
        ] {
            let f = check(&ctx(Some(target())), &[manifest("List", "", &text)]);
            assert!(
                f.iter().any(|f| f.rule == "host-network" && f.object.as_deref() == Some("Pod/inner")),
                "{text}: {f:?}"
            );
        }
        let f = check(&ctx(Some(target())), &[manifest("List", "", "apiVersion: v1\nkind: List\nitems: 3\n")]);
        assert_eq!(rules(&f), ["manifest-yaml"]);
    }

    #[test]
    fn merge_keys_in_pod_specs_are_resolved() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: merged}
x-base: &base {hostNetwork: true}
x-mid: &mid {<<: *base, hostPID: true}
spec:
  <<: *mid
  containers: []
"#;
        let f = check(&ctx(Some(target())), &[manifest("Pod", "merged", text)]);
        assert_eq!(rules(&f), ["host-network", "host-network"], "{f:?}");
        let text = GOOD.replace("      containers:", "      <<: {hostIPC: true}\n      containers:");
        let f = check(&ctx(Some(target())), &[manifest("Deployment", "web", &text)]);
        assert_eq!(rules(&f), ["host-network"], "{f:?}");
        let f = check(&ctx(Some(target())), &[manifest("Pod", "p", "kind: Pod\nspec: {<<: 3}\n")]);
        assert_eq!(rules(&f), ["manifest-yaml"]);
    }

    #[test]
    fn parse_images() {
        assert_eq!(parse_image("a/b"), Image { name: "a/b", tag: None, digest: None });
        assert_eq!(parse_image("h:5000/a/b"), Image { name: "h:5000/a/b", tag: None, digest: None });
        assert_eq!(parse_image("h:5000/a/b:t"), Image { name: "h:5000/a/b", tag: Some("t"), digest: None });
        assert_eq!(parse_image("h/a:t@sha256:00"), Image { name: "h/a", tag: Some("t"), digest: Some("sha256:00") });
        assert_eq!(parse_image("nginx@sha256:00"), Image { name: "nginx", tag: None, digest: Some("sha256:00") });
    }

    #[test]
    fn bad_pod_breaks_every_rule() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec:
  hostNetwork: true
  hostPID: true
  hostIPC: true
  volumes:
    - name: root
      hostPath: {path: /}
  initContainers:
    - name: init
      image: docker.io/library/busybox
  containers:
    - name: app
      image: "127.0.0.1:5443/acme/web:latest"
      securityContext: {privileged: true}
      resources:
        requests: {cpu: 1m}
"#;
        let f = check(&ctx(Some(target())), &[manifest("Pod", "bad", text)]);
        let r = rules(&f);
        for rule in [
            "host-network",
            "host-path",
            "image-registry",
            "image-pinned",
            "resources",
            "privileged",
            "run-as-non-root",
        ] {
            assert!(r.contains(&rule), "{rule} missing from {r:?}");
        }
        assert_eq!(r.iter().filter(|r| **r == "host-network").count(), 3);
        assert!(f.iter().all(|f| f.object.as_deref() == Some("Pod/bad")));
        assert!(f.iter().all(|f| f.severity == Severity::Error));
        let res = f.iter().find(|f| f.rule == "resources" && f.message.contains("\"app\"")).unwrap();
        assert!(res.message.contains("requests.memory, limits.cpu, limits.memory"), "{}", res.message);
        let untagged = f.iter().find(|f| f.rule == "image-pinned" && f.message.contains("busybox")).unwrap();
        assert!(untagged.message.contains("without a tag"), "{}", untagged.message);
    }

    #[test]
    fn tag_must_be_a_policy_tag_when_target_known() {
        let text =
            GOOD.replace("pr-42@sha256:abababababababababababababababababababababababababababababababab", "pr-41");
        let f = check(&ctx(Some(target())), &[manifest("Deployment", "web", &text)]);
        assert_eq!(rules(&f), ["image-pinned"]);
        assert!(f[0].message.contains("\"pr-41\""));
        assert_eq!(f[0].object.as_deref(), Some("Deployment/web"));
        let ok = GOOD.replace(
            "pr-42@sha256:abababababababababababababababababababababababababababababababab",
            "sha-0123456789ab",
        );
        assert!(check(&ctx(Some(target())), &[manifest("Deployment", "web", &ok)]).is_empty());
        // Without a target: only latest/untagged are checked, and no registry rule.
        let other = GOOD.replace("127.0.0.1:5443/acme/web:pr-42@sha256:", "quay.io/x/y:v1@sha256:");
        assert!(check(&ctx(None), &[manifest("Deployment", "web", &text)]).is_empty());
        assert!(check(&ctx(None), &[manifest("Deployment", "web", &other)]).is_empty());
        assert_eq!(rules(&check(&ctx(Some(target())), &[manifest("Deployment", "web", &other)])), ["image-registry"]);
    }

    #[test]
    fn registry_prefix_must_be_whole_host() {
        let text = GOOD.replace("127.0.0.1:5443/", "127.0.0.1:54430/");
        assert_eq!(rules(&check(&ctx(Some(target())), &[manifest("Deployment", "web", &text)])), ["image-registry"]);
    }

    #[test]
    fn container_can_override_pod_non_root() {
        let text = GOOD.replace(
            "          resources:\n",
            "          securityContext: {runAsNonRoot: false}\n          resources:\n",
        );
        assert_eq!(rules(&check(&ctx(None), &[manifest("Deployment", "web", &text)])), ["run-as-non-root"]);
        let text = GOOD.replace("        runAsNonRoot: true\n", "        runAsUser: 1000\n").replace(
            "          resources:\n",
            "          securityContext: {runAsNonRoot: true}\n          resources:\n",
        );
        assert!(check(&ctx(None), &[manifest("Deployment", "web", &text)]).is_empty());
    }

    #[test]
    fn cronjob_and_statefulset_templates_found() {
        let cron = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - {name: job, image: "busybox:latest"}
"#;
        let f = check(&ctx(None), &[manifest("CronJob", "nightly", cron)]);
        assert!(rules(&f).contains(&"image-pinned"));
        assert!(f.iter().all(|f| f.object.as_deref() == Some("CronJob/nightly")));
        let sts =
            GOOD.replace("kind: Deployment", "kind: StatefulSet").replace("runAsNonRoot: true", "runAsNonRoot: false");
        let f = check(&ctx(None), &[manifest("StatefulSet", "web", &sts)]);
        assert_eq!(rules(&f), ["run-as-non-root"]);
        assert_eq!(f[0].object.as_deref(), Some("StatefulSet/web"));
    }

    #[test]
    fn invalid_yaml_is_a_finding() {
        let f = check(&ctx(None), &[manifest("Deployment", "web", "a: [b\n")]);
        assert_eq!(rules(&f), ["manifest-yaml"]);
        assert_eq!(f[0].object.as_deref(), Some("Deployment/web"));
    }
}
