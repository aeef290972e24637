//! Checks on what plugins return. A plugin is code someone else wrote: its outputs become image
//! tags, Helm release names, namespaces and file paths, so each is checked against the grammar
//! the consumer enforces before anything uses it.

/// The OCI distribution tag grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, and DNS-1123 labels of
/// at most a given length: the same checks the default tag-policy applies to its own output, so
/// the two can never disagree.
pub use tag_scheme::{is_dns1123_label, is_valid_tag};

/// Longest Helm release name (Helm refuses longer ones because of the names it derives).
pub const MAX_RELEASE_NAME: usize = 53;
/// Longest Kubernetes namespace name.
pub const MAX_NAMESPACE: usize = 63;

/// A chart file path must be relative, `/`-separated, and stay inside the chart directory.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert!(is_valid_tag("pr-42"));
        assert!(is_valid_tag("_x"));
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(!is_valid_tag(""));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag("a b"));
        assert!(!is_valid_tag("a/b"));
        assert!(!is_valid_tag("a:b"));
        assert!(!is_valid_tag("naïve"));
    }

    #[test]
    fn labels() {
        assert!(is_dns1123_label("pr-42", 53));
        assert!(is_dns1123_label("a", 53));
        assert!(!is_dns1123_label("Pr-42", 53));
        assert!(!is_dns1123_label("-a", 53));
        assert!(!is_dns1123_label("a-", 53));
        assert!(!is_dns1123_label("a_b", 53));
        assert!(!is_dns1123_label("a.b", 53));
        assert!(is_dns1123_label(&"a".repeat(53), 53));
        assert!(!is_dns1123_label(&"a".repeat(54), 53));
        assert!(is_dns1123_label(&"a".repeat(63), 63));
    }

    #[test]
    fn paths() {
        assert!(is_safe_relative_path("Chart.yaml"));
        assert!(is_safe_relative_path("templates/deployment.yaml"));
        assert!(!is_safe_relative_path("/etc/passwd"));
        assert!(!is_safe_relative_path("../x"));
        assert!(!is_safe_relative_path("templates/../../x"));
        assert!(!is_safe_relative_path("a//b"));
        assert!(!is_safe_relative_path(""));
    }
}
