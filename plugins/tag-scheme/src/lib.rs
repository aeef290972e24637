//! prpod's seed tag scheme, as pure functions over plain inputs.
//!
//! * primary tag: `pr-<number>` when the pull request number is known, else `br-<branch>`;
//! * extra tags: `br-<branch>` and `sha-<first 12 hex of the commit>`, never repeating the primary.
//!   Branch-derived tags carry the prefix `br-`, so no branch (not even one named `7`) can produce
//!   a PR's `pr-7`; a fork's branch carries its owner, `br-<owner>--<branch>` (`--` never occurs in
//!   a sanitised name, so `alice`'s `x` and the base repository's `alice-x` stay apart);
//! * cache-to: this PR's own, `cache-pr-<number>` (`cache-br-<branch>` for a build without a PR):
//!   a PR never writes a cache that another PR or the base branch reads;
//! * cache-from: the own cache, then the base branch's `cache-br-<base branch, or main>`, which
//!   only builds of the base branch itself (no PR number) write;
//! * release name and namespace: `<repository name>-pr-<number>`, else
//!   `<repository name>-br-<branch>`, as a DNS-1123 label of at most 53 characters.
//!
//! Branch names are sanitised with [`sanitize`]. A name too long for its limit is cut and keeps a
//! stable hash suffix (`-` and the first [`HASH_HEX_DIGITS`] hex digits of the SHA-256 of the
//! full, unsanitised name), so two long branches sharing a prefix do not end up with the same
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

/// The branch a build is for: its name, and the fork's owner when it lives in a fork.
#[derive(Debug, Clone, Copy)]
pub struct Branch<'a> {
    /// The branch name, exactly as git names it.
    pub name: &'a str,
    /// The owner of the fork the branch lives in (`None`: the repository itself).
    pub fork_owner: Option<&'a str>,
}

impl<'a> Branch<'a> {
    /// A branch of the repository itself.
    pub fn own(name: &'a str) -> Branch<'a> {
        Branch { name, fork_owner: None }
    }

    /// The sanitised name tags carry (`<owner>--<branch>` for a fork), and the original the hash
    /// suffix of a shortened name is taken from.
    fn part(&self, dns: bool) -> Result<(String, String), String> {
        let clean = |s: &str| if dns { sanitize_dns(s) } else { sanitize(s) };
        let branch = clean(self.name)?;
        Ok(match self.fork_owner {
            Some(owner) => (
                format!("{}--{branch}", clean(owner).map_err(|e| format!("fork owner: {e}"))?),
                format!("{owner}:{}", self.name),
            ),
            None => (branch, self.name.to_string()),
        })
    }
}

/// `<prefix><sanitised branch>`, shortened with a hash suffix to fit a tag.
fn branch_tag(prefix: &str, branch: Branch<'_>) -> Result<String, String> {
    let (part, original) = branch.part(false)?;
    Ok(fit(prefix, &part, &original, MAX_TAG_LEN))
}

/// Computes the tags for one build. See the crate docs for the rules.
pub fn compute_tags(
    number: Option<u64>,
    branch: Branch<'_>,
    base_branch: Option<&str>,
    sha: &str,
) -> Result<Tags, String> {
    let sha = validate_sha(sha)?;
    let branch_tag_ = branch_tag("br-", branch)?;
    let primary = match number {
        Some(n) => format!("pr-{n}"),
        None => branch_tag_.clone(),
    };
    let mut extra = Vec::with_capacity(2);
    for t in [branch_tag_, format!("sha-{}", &sha[..SHORT_SHA_LEN.min(sha.len())])] {
        if t != primary && !extra.contains(&t) {
            extra.push(t);
        }
    }
    let cache_to = match number {
        Some(n) => format!("cache-pr-{n}"),
        None => branch_tag("cache-br-", branch)?,
    };
    let base = base_branch.map(str::trim).filter(|b| !b.is_empty()).unwrap_or(DEFAULT_BASE_BRANCH);
    let cache_base = branch_tag("cache-br-", Branch::own(base)).map_err(|e| format!("base {e}"))?;
    let mut cache_from = vec![cache_to.clone()];
    if cache_base != cache_to {
        cache_from.push(cache_base);
    }
    let tags = Tags { primary, extra, cache_from, cache_to: Some(cache_to) };
    debug_assert!(all_valid(&tags));
    Ok(tags)
}

fn all_valid(t: &Tags) -> bool {
    std::iter::once(&t.primary).chain(&t.extra).chain(&t.cache_from).chain(&t.cache_to).all(|t| is_valid_tag(t))
}

/// How many hex digits of SHA-256 a shortened repository name carries in a release name.
const REPO_HASH_HEX_DIGITS: usize = 8;

/// The Helm release name and Kubernetes namespace of the preview: `<repo>-pr-<number>`, or
/// `<repo>-br-<branch>` when no number is known, as a DNS-1123 label of at most 53 characters.
/// `<repo>` is the name part of the `owner/name` slug. A repository name too long to fit is cut
/// and keeps `-` and 8 hex digits of the SHA-256 of the whole slug; a branch name too long is cut
/// and keeps 16 of the SHA-256 of slug and branch. Both names are the same.
pub fn release(repository: &str, number: Option<u64>, branch: Branch<'_>) -> Result<(String, String), String> {
    let slug_name = repository.rsplit('/').next().unwrap_or(repository);
    let repo = sanitize_dns(slug_name).map_err(|_| {
        format!("repository {repository:?} has no characters usable in a release name (letters, digits, '-')")
    })?;
    let name = match number {
        Some(n) => {
            let suffix = format!("-pr-{n}");
            if repo.len() + suffix.len() <= MAX_RELEASE_LEN {
                format!("{repo}{suffix}")
            } else {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(repository.as_bytes());
                let hash: String = digest.iter().take(REPO_HASH_HEX_DIGITS / 2).map(|b| format!("{b:02x}")).collect();
                let keep = MAX_RELEASE_LEN.saturating_sub(suffix.len() + 1 + hash.len());
                let cut = repo[..keep.min(repo.len())].trim_end_matches('-');
                if cut.is_empty() { format!("{hash}{suffix}") } else { format!("{cut}-{hash}{suffix}") }
            }
        }
        None => {
            let (part, original) = branch.part(true)?;
            fit("", &format!("{repo}-br-{part}"), &format!("{repository}#{original}"), MAX_RELEASE_LEN)
        }
    };
    debug_assert!(is_dns1123_label(&name, MAX_RELEASE_LEN), "{name}");
    let namespace = name.clone();
    debug_assert!(is_dns1123_label(&namespace, MAX_NAMESPACE_LEN));
    Ok((name, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn tags(number: Option<u64>, branch: &str, base: Option<&str>) -> Tags {
        compute_tags(number, Branch::own(branch), base, SHA).unwrap()
    }

    fn rel(number: Option<u64>, branch: &str) -> Result<(String, String), String> {
        release("acme/web", number, Branch::own(branch))
    }

    #[test]
    fn pr_with_number_exact() {
        assert_eq!(
            tags(Some(42), "feature/Login-Page", Some("main")),
            Tags {
                primary: "pr-42".into(),
                extra: vec!["br-feature-login-page".into(), "sha-0123456789ab".into()],
                cache_from: vec!["cache-pr-42".into(), "cache-br-main".into()],
                cache_to: Some("cache-pr-42".into()),
            }
        );
    }

    #[test]
    fn a_branch_named_like_a_number_never_makes_a_pr_tag() {
        let t = tags(Some(1), "7", None);
        assert!(!t.extra.contains(&"pr-7".to_string()), "{t:?}");
        assert_eq!(t.extra[0], "br-7");
        assert_eq!(tags(None, "7", None).primary, "br-7");
        assert_ne!(tags(None, "7", None).primary, tags(Some(7), "x", None).primary);
    }

    #[test]
    fn a_pr_never_writes_the_base_branchs_cache() {
        // A PR whose head branch is called `main` still writes only its own cache.
        let t = tags(Some(3), "main", Some("main"));
        assert_eq!(t.cache_to.as_deref(), Some("cache-pr-3"));
        assert_eq!(t.cache_from, vec!["cache-pr-3", "cache-br-main"]);
        // Only a build of the base branch itself (no PR) writes the base cache.
        assert_eq!(tags(None, "main", None).cache_to.as_deref(), Some("cache-br-main"));
        assert_eq!(tags(None, "main", None).cache_from, vec!["cache-br-main"]);
    }

    #[test]
    fn fork_branch_tags_carry_the_owner() {
        let fork = |owner, branch| compute_tags(Some(5), Branch { name: branch, fork_owner: Some(owner) }, None, SHA);
        let t = fork("Alice", "feature/x").unwrap();
        assert_eq!(t.extra[0], "br-alice--feature-x");
        // The repository's own branch `alice-feature-x` cannot collide with it.
        assert_ne!(t.extra[0], tags(Some(5), "alice-feature-x", None).extra[0]);
        assert_ne!(fork("a-b", "c").unwrap().extra[0], fork("a", "b-c").unwrap().extra[0]);
        let (name, _) = release("acme/web", None, Branch { name: "x", fork_owner: Some("bob") }).unwrap();
        assert_eq!(name, "web-br-bob--x");
    }

    #[test]
    fn no_number_primary_is_branch_and_not_repeated() {
        let t = tags(None, "fix/bug", Some("develop"));
        assert_eq!(t.primary, "br-fix-bug");
        assert_eq!(t.extra, vec!["sha-0123456789ab".to_string()]);
        assert_eq!(t.cache_from, vec!["cache-br-fix-bug", "cache-br-develop"]);
        assert_eq!(t.cache_to.as_deref(), Some("cache-br-fix-bug"));
    }

    #[test]
    fn base_defaults_to_main() {
        assert_eq!(tags(Some(1), "x", None).cache_from, vec!["cache-pr-1", "cache-br-main"]);
        assert_eq!(tags(Some(1), "x", Some("")).cache_from, vec!["cache-pr-1", "cache-br-main"]);
        assert_eq!(tags(None, "Main", Some("main")).cache_from, vec!["cache-br-main"]);
    }

    #[test]
    fn short_sha_kept_whole_and_lowercased() {
        let t = compute_tags(Some(7), Branch::own("a"), None, "ABCDEF1").unwrap();
        assert_eq!(t.extra, vec!["br-a", "sha-abcdef1"]);
    }

    #[test]
    fn bad_sha_rejected_with_value() {
        for bad in ["", "abc", "xyz1234", &"a".repeat(41), "0123456 "] {
            let e = compute_tags(Some(1), Branch::own("b"), None, bad).unwrap_err();
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
            assert!(compute_tags(Some(1), Branch::own(b), None, SHA).is_err());
            assert!(rel(None, b).is_err());
        }
        // With a number the release does not need the branch.
        assert_eq!(rel(Some(3), "🚀").unwrap(), ("web-pr-3".into(), "web-pr-3".into()));
        let e = compute_tags(Some(1), Branch::own("ok"), Some("///"), SHA).unwrap_err();
        assert!(e.starts_with("base branch \"///\""), "{e}");
    }

    #[test]
    fn release_names_carry_the_repository() {
        assert_eq!(rel(Some(42), "whatever").unwrap(), ("web-pr-42".into(), "web-pr-42".into()));
        assert_eq!(
            rel(None, "Feature/My_Branch.v2").unwrap(),
            ("web-br-feature-my-branch-v2".into(), "web-br-feature-my-branch-v2".into())
        );
        assert_eq!(rel(Some(u64::MAX), "x").unwrap().0, format!("web-pr-{}", u64::MAX));
        // Two repositories' PR #1 get two names.
        let other = release("acme/hello-web", Some(1), Branch::own("x")).unwrap().0;
        assert_eq!(other, "hello-web-pr-1");
        assert_ne!(other, rel(Some(1), "x").unwrap().0);
        assert_eq!(release("Acme/My_Repo.js", Some(1), Branch::own("x")).unwrap().0, "my-repo-js-pr-1");
    }

    #[test]
    fn long_repository_names_are_cut_with_a_hash_and_keep_the_number() {
        let slug = format!("acme/{}", "r".repeat(100));
        let (name, _) = release(&slug, Some(12345), Branch::own("x")).unwrap();
        assert!(is_dns1123_label(&name, MAX_RELEASE_LEN), "{name}");
        assert!(name.ends_with("-pr-12345"), "{name}");
        let (other, _) = release(&format!("{slug}x"), Some(12345), Branch::own("x")).unwrap();
        assert_ne!(name, other);
        let (max, _) = release(&slug, Some(u64::MAX), Branch::own("x")).unwrap();
        assert!(is_dns1123_label(&max, MAX_RELEASE_LEN), "{max}");
    }

    #[test]
    fn long_branch_tags_fit_and_keep_hash() {
        let branch = format!("feature/{}", "a".repeat(200));
        let t = tags(None, &branch, None);
        assert_eq!(t.primary.len(), MAX_TAG_LEN);
        assert!(t.primary.ends_with(&format!("-{}", hash_suffix(&branch))));
        assert!(t.primary.starts_with("br-feature-aaaa"));
        for tag in std::iter::once(&t.primary).chain(&t.extra).chain(&t.cache_from) {
            assert!(is_valid_tag(tag), "{tag}");
        }
        let (name, ns) = rel(None, &branch).unwrap();
        assert_eq!(name.len(), MAX_RELEASE_LEN);
        assert!(is_dns1123_label(&name, MAX_RELEASE_LEN));
        assert!(is_dns1123_label(&ns, MAX_NAMESPACE_LEN));
        assert!(name.ends_with(&hash_suffix(&format!("acme/web#{branch}"))));
    }

    #[test]
    fn long_branches_with_same_prefix_do_not_collide() {
        let prefix = "x".repeat(150);
        let a = format!("{prefix}-one");
        let b = format!("{prefix}-two");
        assert_ne!(tags(None, &a, None).primary, tags(None, &b, None).primary);
        assert_ne!(tags(None, &a, None).cache_to, tags(None, &b, None).cache_to);
        assert_ne!(rel(None, &a).unwrap().0, rel(None, &b).unwrap().0);
        // Also for names only the release has to shorten.
        let p = "feature-".repeat(6);
        assert_ne!(rel(None, &format!("{p}alpha")).unwrap().0, rel(None, &format!("{p}beta")).unwrap().0);
    }

    #[test]
    fn cut_does_not_end_in_separator() {
        // 53 - "web-br-" (7) - "-" - 16 hex digits leaves 29 characters: 28 b's and the '-'.
        let branch = format!("{}-{}", "b".repeat(28), "c".repeat(40));
        let (name, _) = rel(None, &branch).unwrap();
        assert!(is_dns1123_label(&name, MAX_RELEASE_LEN), "{name}");
        assert!(!name.contains("--"), "{name}");
        assert_eq!(name, format!("web-br-{}-{}", "b".repeat(28), hash_suffix(&format!("acme/web#{branch}"))));
    }

    #[test]
    fn exact_boundaries() {
        // 125 + "br-" = 128: fits as is.
        let b = "d".repeat(125);
        assert_eq!(tags(None, &b, None).primary, format!("br-{b}"));
        // 126: one too many, shortened.
        let b = "d".repeat(126);
        let p = tags(None, &b, None).primary;
        assert_eq!(p, format!("br-{}-{}", "d".repeat(108), hash_suffix(&b)));
        // Release: 46 + "web-br-" = 53 fits; 47 is shortened.
        let b = "e".repeat(46);
        assert_eq!(rel(None, &b).unwrap().0, format!("web-br-{b}"));
        let b = "e".repeat(47);
        assert_eq!(rel(None, &b).unwrap().0.len(), MAX_RELEASE_LEN);
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
        assert_eq!(t.extra[0], "br-users-alice-fix-thing");
        assert_eq!(t.cache_from[1], "cache-br-release-1.x");
    }
}
