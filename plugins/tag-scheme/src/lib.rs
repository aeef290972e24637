//! prpod's seed tag scheme, as pure functions over plain inputs.
//!
//! * primary tag: `pr-<number>` when the pull request number is known, else `pr-<branch>`;
//! * extra tags: `pr-<branch>` and `sha-<first 12 hex of the commit>`, never repeating the primary;
//! * cache-from: `cache-<branch>`, then `cache-<base branch, or main>` (deduplicated);
//! * cache-to: `cache-<branch>`;
//! * release name and namespace: `pr-<number>`, else `pr-<branch>` as a DNS-1123 label.
//!
//! Branch names are sanitised with [`sanitize`]. A name too long for its limit is cut and keeps a
//! stable hash suffix (`-` and the first [`HASH_HEX_DIGITS`] hex digits of the SHA-256 of the
//! full, unsanitised branch), so two long branches sharing a prefix do not end up with the same
//! name: 64 bits make a collision among one repository's branches a 1-in-10^10 event even for a
//! million long branches.
//!
//! The `tag-default` plugin wraps this crate; the host's benchmark calls it natively.

/// Longest image tag a registry accepts.
pub const MAX_TAG_LEN: usize = 128;
/// Longest Helm release name.
pub const MAX_RELEASE_LEN: usize = 53;
/// Longest Kubernetes namespace (a DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// How many hex digits of the commit SHA the `sha-` tag keeps.
pub const SHORT_SHA_LEN: usize = 12;
/// The base branch assumed when none is known.
pub const DEFAULT_BASE_BRANCH: &str = "main";

/// The tags for one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    /// The tag deployments use.
    pub primary: String,
    /// Further tags pushed for the same image.
    pub extra: Vec<String>,
    /// Cache tags to import build cache from, in order of preference.
    pub cache_from: Vec<String>,
    /// Cache tag to export build cache to.
    pub cache_to: Option<String>,
}

/// How many hex digits of SHA-256 a shortened name carries (64 bits).
pub const HASH_HEX_DIGITS: usize = 16;

/// The lowercase hex digits that shortened names carry: the first [`HASH_HEX_DIGITS`] of the
/// SHA-256 of the unsanitised branch.
pub fn hash_suffix(branch: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(branch.as_bytes());
    digest.iter().take(HASH_HEX_DIGITS / 2).map(|b| format!("{b:02x}")).collect()
}

/// Sanitises a git branch name for use in tags: lowercase; every character outside
/// `[a-z0-9._-]` (`/` included) becomes `-`; runs of `-` are collapsed; leading and trailing
/// `-`, `.` and `_` are trimmed. The result is never longer than the input's character count.
///
/// Fails, naming the branch, when nothing usable is left.
pub fn sanitize(branch: &str) -> Result<String, String> {
    let mut out = String::with_capacity(branch.len());
    for c in branch.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim_matches(|c| matches!(c, '-' | '.' | '_'));
    if trimmed.is_empty() {
        return Err(format!(
            "branch {branch:?} has no characters usable in a tag or release name \
             (letters, digits, '.', '_' or '-'); rename the branch or open a pull request for it \
             so that its number is used"
        ));
    }
    Ok(trimmed.to_string())
}

/// Sanitises a branch into a DNS-1123 label fragment: like [`sanitize`], and `.` and `_` also
/// become `-` (runs collapsed, ends trimmed). The result starts and ends with `[a-z0-9]`.
pub fn sanitize_dns(branch: &str) -> Result<String, String> {
    let s = sanitize(branch)?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c == '.' || c == '_' { '-' } else { c };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    // `sanitize` left alphanumeric ends, so nothing to trim, but stay safe.
    Ok(out.trim_matches('-').to_string())
}

/// Builds `<prefix><body>`, and when that exceeds `max` characters, cuts `body` and appends
/// `-<hash of original>` so the name stays unique. `body` must be ASCII (sanitised).
fn fit(prefix: &str, body: &str, original: &str, max: usize) -> String {
    let full = format!("{prefix}{body}");
    if full.len() <= max {
        return full;
    }
    let suffix = hash_suffix(original);
    let keep = max.saturating_sub(prefix.len() + 1 + suffix.len());
    let cut = body[..keep.min(body.len())].trim_end_matches(['-', '.', '_']);
    if cut.is_empty() { format!("{prefix}{suffix}") } else { format!("{prefix}{cut}-{suffix}") }
}

/// True when `tag` matches `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => {}
        _ => return false,
    }
    bytes.len() <= MAX_TAG_LEN && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when `name` is a DNS-1123 label of at most `max` characters: lowercase letters, digits
/// and `-`, starting and ending with a letter or digit.
pub fn is_dns1123_label(name: &str, max: usize) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Checks that `sha` is 7 to 40 hex digits and returns it lowercased.
pub fn validate_sha(sha: &str) -> Result<String, String> {
    if (7..=40).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha.to_ascii_lowercase())
    } else {
        Err(format!(
            "commit sha {sha:?} is not 7 to 40 hex digits; pass the full commit SHA of the head \
             commit (e.g. from `git rev-parse HEAD`)"
        ))
    }
}

/// `<prefix><sanitised branch>`, shortened with a hash suffix to fit a tag.
fn branch_tag(prefix: &str, branch: &str) -> Result<String, String> {
    let s = sanitize(branch)?;
    Ok(fit(prefix, &s, branch, MAX_TAG_LEN))
}

/// Computes the tags for one build. See the crate docs for the rules.
pub fn compute_tags(number: Option<u64>, branch: &str, base_branch: Option<&str>, sha: &str) -> Result<Tags, String> {
    let sha = validate_sha(sha)?;
    let branch_pr = branch_tag("pr-", branch)?;
    let primary = match number {
        Some(n) => format!("pr-{n}"),
        None => branch_pr.clone(),
    };
    let mut extra = Vec::with_capacity(2);
    for t in [branch_pr, format!("sha-{}", &sha[..SHORT_SHA_LEN.min(sha.len())])] {
        if t != primary && !extra.contains(&t) {
            extra.push(t);
        }
    }
    let cache_branch = branch_tag("cache-", branch)?;
    let base = base_branch.map(str::trim).filter(|b| !b.is_empty()).unwrap_or(DEFAULT_BASE_BRANCH);
    let cache_base = branch_tag("cache-", base).map_err(|e| format!("base {e}"))?;
    let mut cache_from = vec![cache_branch.clone()];
    if cache_base != cache_branch {
        cache_from.push(cache_base);
    }
    let tags = Tags { primary, extra, cache_from, cache_to: Some(cache_branch) };
    debug_assert!(all_valid(&tags));
    Ok(tags)
}

fn all_valid(t: &Tags) -> bool {
    std::iter::once(&t.primary).chain(&t.extra).chain(&t.cache_from).chain(&t.cache_to).all(|t| is_valid_tag(t))
}

/// The Helm release name and Kubernetes namespace of the preview: `pr-<number>`, or
/// `pr-<branch>` as a DNS-1123 label (at most 53 characters, shortened with a hash suffix)
/// when no number is known. Both are the same name.
pub fn release(number: Option<u64>, branch: &str) -> Result<(String, String), String> {
    let name = match number {
        Some(n) => format!("pr-{n}"),
        None => {
            let s = sanitize_dns(branch)?;
            fit("pr-", &s, branch, MAX_RELEASE_LEN)
        }
    };
    debug_assert!(is_dns1123_label(&name, MAX_RELEASE_LEN));
    let namespace = name.clone();
    debug_assert!(is_dns1123_label(&namespace, MAX_NAMESPACE_LEN));
    Ok((name, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn tags(number: Option<u64>, branch: &str, base: Option<&str>) -> Tags {
        compute_tags(number, branch, base, SHA).unwrap()
    }

    #[test]
    fn pr_with_number_exact() {
        assert_eq!(
            tags(Some(42), "feature/Login-Page", Some("main")),
            Tags {
                primary: "pr-42".into(),
                extra: vec!["pr-feature-login-page".into(), "sha-0123456789ab".into()],
                cache_from: vec!["cache-feature-login-page".into(), "cache-main".into()],
                cache_to: Some("cache-feature-login-page".into()),
            }
        );
    }

    #[test]
    fn no_number_primary_is_branch_and_not_repeated() {
        let t = tags(None, "fix/bug", Some("develop"));
        assert_eq!(t.primary, "pr-fix-bug");
        assert_eq!(t.extra, vec!["sha-0123456789ab".to_string()]);
        assert_eq!(t.cache_from, vec!["cache-fix-bug", "cache-develop"]);
        assert_eq!(t.cache_to.as_deref(), Some("cache-fix-bug"));
    }

    #[test]
    fn base_defaults_to_main_and_dedupes() {
        assert_eq!(tags(Some(1), "x", None).cache_from, vec!["cache-x", "cache-main"]);
        assert_eq!(tags(Some(1), "x", Some("")).cache_from, vec!["cache-x", "cache-main"]);
        assert_eq!(tags(Some(1), "main", None).cache_from, vec!["cache-main"]);
        assert_eq!(tags(Some(1), "Main", Some("main")).cache_from, vec!["cache-main"]);
    }

    #[test]
    fn short_sha_kept_whole_and_lowercased() {
        let t = compute_tags(Some(7), "a", None, "ABCDEF1").unwrap();
        assert_eq!(t.extra, vec!["pr-a", "sha-abcdef1"]);
    }

    #[test]
    fn bad_sha_rejected_with_value() {
        for bad in ["", "abc", "xyz1234", &"a".repeat(41), "0123456 "] {
            let e = compute_tags(Some(1), "b", None, bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn sanitize_rules() {
        assert_eq!(sanitize("Feature/ABC").unwrap(), "feature-abc");
        assert_eq!(sanitize("a//b___c...d").unwrap(), "a-b___c...d");
        assert_eq!(sanitize("--a  b--").unwrap(), "a-b");
        assert_eq!(sanitize("_.x._").unwrap(), "x");
        assert_eq!(
            sanitize("dependabot/npm_and_yarn/lodash-4.17.21").unwrap(),
            "dependabot-npm_and_yarn-lodash-4.17.21"
        );
        assert_eq!(sanitize("v1.2").unwrap(), "v1.2");
    }

    #[test]
    fn sanitize_unicode() {
        assert_eq!(sanitize("feature/über-straße").unwrap(), "feature-ber-stra-e");
        assert_eq!(sanitize("ÄBC").unwrap(), "bc");
        assert_eq!(sanitize("修正/バグ-1").unwrap(), "1");
        assert_eq!(sanitize("emoji-🚀-launch").unwrap(), "emoji-launch");
    }

    #[test]
    fn empty_after_sanitize_is_error_naming_branch() {
        for b in ["", "///", "🚀", "._-", "日本"] {
            let e = sanitize(b).unwrap_err();
            assert!(e.contains(&format!("{b:?}")), "{e}");
            assert!(compute_tags(Some(1), b, None, SHA).is_err());
            assert!(release(None, b).is_err());
        }
        // With a number the release does not need the branch.
        assert_eq!(release(Some(3), "🚀").unwrap(), ("pr-3".into(), "pr-3".into()));
        let e = compute_tags(Some(1), "ok", Some("///"), SHA).unwrap_err();
        assert!(e.starts_with("base branch \"///\""), "{e}");
    }

    #[test]
    fn release_names() {
        assert_eq!(release(Some(42), "whatever").unwrap(), ("pr-42".into(), "pr-42".into()));
        assert_eq!(
            release(None, "Feature/My_Branch.v2").unwrap(),
            ("pr-feature-my-branch-v2".into(), "pr-feature-my-branch-v2".into())
        );
        assert_eq!(release(Some(u64::MAX), "x").unwrap().0, format!("pr-{}", u64::MAX));
    }

    #[test]
    fn long_branch_tags_fit_and_keep_hash() {
        let branch = format!("feature/{}", "a".repeat(200));
        let t = tags(None, &branch, None);
        assert_eq!(t.primary.len(), MAX_TAG_LEN);
        assert!(t.primary.ends_with(&format!("-{}", hash_suffix(&branch))));
        assert!(t.primary.starts_with("pr-feature-aaaa"));
        for tag in std::iter::once(&t.primary).chain(&t.extra).chain(&t.cache_from) {
            assert!(is_valid_tag(tag), "{tag}");
        }
        let (name, ns) = release(None, &branch).unwrap();
        assert_eq!(name.len(), MAX_RELEASE_LEN);
        assert!(is_dns1123_label(&name, MAX_RELEASE_LEN));
        assert!(is_dns1123_label(&ns, MAX_NAMESPACE_LEN));
        assert!(name.ends_with(&hash_suffix(&branch)));
    }

    #[test]
    fn long_branches_with_same_prefix_do_not_collide() {
        let prefix = "x".repeat(150);
        let a = format!("{prefix}-one");
        let b = format!("{prefix}-two");
        assert_ne!(tags(None, &a, None).primary, tags(None, &b, None).primary);
        assert_ne!(tags(Some(1), &a, None).cache_to, tags(Some(1), &b, None).cache_to);
        assert_ne!(release(None, &a).unwrap().0, release(None, &b).unwrap().0);
        // Also for names only the release has to shorten.
        let p = "feature-".repeat(6);
        assert_ne!(release(None, &format!("{p}alpha")).unwrap().0, release(None, &format!("{p}beta")).unwrap().0);
    }

    #[test]
    fn cut_does_not_end_in_separator() {
        // The cut lands right after a '-': it must be trimmed before the hash suffix.
        // 53 - "pr-" - "-" - 16 hex digits leaves 33 characters: 32 b's and the '-'.
        let branch = format!("{}-{}", "b".repeat(32), "c".repeat(40));
        let (name, _) = release(None, &branch).unwrap();
        assert!(is_dns1123_label(&name, MAX_RELEASE_LEN), "{name}");
        assert!(!name.contains("--"), "{name}");
        assert_eq!(name, format!("pr-{}-{}", "b".repeat(32), hash_suffix(&branch)));
    }

    #[test]
    fn exact_boundaries() {
        // 125 + "pr-" = 128: fits as is.
        let b = "d".repeat(125);
        assert_eq!(tags(None, &b, None).primary, format!("pr-{b}"));
        // 126: one too many, shortened.
        let b = "d".repeat(126);
        let p = tags(None, &b, None).primary;
        assert_eq!(p, format!("pr-{}-{}", "d".repeat(108), hash_suffix(&b)));
        // Release: 50 + "pr-" = 53 fits; 51 is shortened.
        let b = "e".repeat(50);
        assert_eq!(release(None, &b).unwrap().0, format!("pr-{b}"));
        let b = "e".repeat(51);
        assert_eq!(release(None, &b).unwrap().0, format!("pr-{}-{}", "e".repeat(33), hash_suffix(&b)));
    }

    #[test]
    fn hash_is_stable() {
        // The first 16 hex digits of the well-known SHA-256 of "" and "abc".
        assert_eq!(hash_suffix(""), "e3b0c44298fc1c14");
        assert_eq!(hash_suffix("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn tag_and_label_validators() {
        assert!(is_valid_tag("pr-1"));
        assert!(is_valid_tag("_x"));
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag("not a valid tag!"));
        assert!(!is_valid_tag(""));
        assert!(is_dns1123_label("pr-42", 53));
        assert!(!is_dns1123_label("Pr-42", 53));
        assert!(!is_dns1123_label("pr-", 53));
        assert!(!is_dns1123_label("a_b", 53));
        assert!(!is_dns1123_label(&"a".repeat(54), 53));
    }

    #[test]
    fn slashes_and_case_map_like_git_hosts() {
        let t = tags(Some(9), "Users/Alice/Fix--Thing", Some("release/1.x"));
        assert_eq!(t.extra[0], "pr-users-alice-fix-thing");
        assert_eq!(t.cache_from[1], "cache-release-1.x");
    }
}
