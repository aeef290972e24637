//! Checks on the app spec, with errors that say what is wrong and how to fix it.

use crate::AppSpec;
use crate::prpod::plugin::types::ImageRef;

/// Most replicas a preview may ask for.
pub const MAX_REPLICAS: u32 = 50;

/// DNS-1035 label (what a Service name must be): lowercase letters, digits and `-`, starting
/// with a letter, ending with a letter or digit, at most `max` characters.
pub fn is_dns1035_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// IANA_SVC_NAME: 1-15 lowercase letters, digits and `-`, at least one letter, no `-` at
/// either end and no `--`.
pub fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

/// Environment variable name as Kubernetes accepts it: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

/// A Kubernetes resource quantity in the common forms: `250m`, `0.5`, `128Mi`, `1G`, `1e3`.
pub fn is_quantity(s: &str) -> bool {
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    let num_ok = !num.is_empty()
        && num.matches('.').count() <= 1
        && num.chars().any(|c| c.is_ascii_digit())
        && !num.starts_with('.');
    let suffix_ok =
        matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
            || (suffix.len() > 1
                && (suffix.starts_with('e') || suffix.starts_with('E'))
                && suffix[1..].chars().all(|c| c.is_ascii_digit()));
    num_ok && suffix_ok
}

/// DNS-1123 subdomain (optionally `*.`-prefixed), as an Ingress host must be.
pub fn is_host(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        Some(("sha512", hex)) => hex.len() == 128 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        _ => false,
    }
}

/// Validates the app spec and the image it resolved to.
pub fn app_spec(app: &AppSpec, image: &ImageRef) -> Result<(), String> {
    if !is_dns1035_label(&app.name, 53) {
        return Err(format!(
            "app name {:?} is not valid: use 1 to 53 lowercase letters, digits and '-', starting \
             with a letter and ending with a letter or digit (it names the Deployment and the \
             Service), e.g. \"web\"",
            app.name
        ));
    }
    if image.repository.is_empty() {
        return Err("the app's image has no repository: set image.repository in the app spec \
                    (registry host and path, e.g. \"registry.example.com/acme/web\")"
            .into());
    }
    if image.repository.contains(|c: char| c.is_whitespace() || c == '@' || c.is_ascii_uppercase())
        || image.repository.ends_with(':')
        || image.repository.ends_with('/')
    {
        return Err(format!(
            "image repository {:?} is not valid: give the registry host and lowercase path \
             only, with no tag, digest or spaces",
            image.repository
        ));
    }
    if let Some(tag) = &image.tag
        && !is_tag(tag)
    {
        return Err(format!("image tag {tag:?} is not valid: a tag matches [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"));
    }
    if let Some(d) = &image.digest
        && !is_digest(d)
    {
        return Err(format!(
            "image digest {d:?} is not valid: expected \"sha256:\" followed by 64 lowercase \
                 hex digits"
        ));
    }
    if image.tag.is_none() && image.digest.is_none() {
        return Err(format!(
            "image {:?} has neither a tag nor a digest: set image.tag (or image.digest) in the \
             app spec so the preview runs the image built for this pull request",
            image.repository
        ));
    }
    if app.ports.is_empty() {
        return Err(format!(
            "app {:?} has no ports: add at least one, e.g. {{ name = \"http\", container-port = \
             8080 }}; the first port is the one the Service and the probes use",
            app.name
        ));
    }
    for (i, p) in app.ports.iter().enumerate() {
        if !is_port_name(&p.name) {
            return Err(format!(
                "port name {:?} is not valid: use 1 to 15 lowercase letters, digits and '-', \
                 with at least one letter, no '-' at either end and no \"--\" (e.g. \"http\")",
                p.name
            ));
        }
        if p.container_port == 0 {
            return Err(format!("port {:?} has container port 0: use 1 to 65535", p.name));
        }
        if let Some(q) = app.ports[..i].iter().find(|q| q.name == p.name) {
            return Err(format!("port name {:?} is used twice: give each port its own name", q.name));
        }
        if let Some(q) = app.ports[..i].iter().find(|q| q.container_port == p.container_port) {
            return Err(format!(
                "container port {} is listed twice (ports {:?} and {:?}): list each port once",
                p.container_port, q.name, p.name
            ));
        }
    }
    if app.replicas > MAX_REPLICAS {
        return Err(format!(
            "replicas = {} is more than a preview may run ({MAX_REPLICAS}): lower replicas",
            app.replicas
        ));
    }
    for (i, e) in app.env.iter().enumerate() {
        if !is_env_name(&e.name) {
            return Err(format!(
                "environment variable name {:?} is not valid: use letters, digits, '_', '-' and \
                 '.', not starting with a digit",
                e.name
            ));
        }
        if app.env[..i].iter().any(|f| f.name == e.name) {
            return Err(format!("environment variable {:?} is set twice: keep one value", e.name));
        }
    }
    let r = &app.resources;
    for (what, q) in [
        ("cpu-request", &r.cpu_request),
        ("memory-request", &r.memory_request),
        ("cpu-limit", &r.cpu_limit),
        ("memory-limit", &r.memory_limit),
    ] {
        if let Some(q) = q
            && !is_quantity(q)
        {
            return Err(format!(
                "resources.{what} = {q:?} is not a Kubernetes quantity: use e.g. \"250m\" \
                     for cpu or \"128Mi\" for memory"
            ));
        }
    }
    if let Some(path) = &app.health_path
        && (!path.starts_with('/') || path.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        return Err(format!(
            "health path {path:?} is not valid: give an absolute HTTP path without spaces, \
                 e.g. \"/healthz\", or leave it out for TCP probes"
        ));
    }
    if let Some(host) = &app.ingress_host
        && !is_host(host)
    {
        return Err(format!(
            "ingress host {host:?} is not a valid host name: use lowercase DNS labels \
                 separated by '.', e.g. \"pr-42.preview.example.com\", or leave it out for no Ingress"
        ));
    }
    Ok(())
}
