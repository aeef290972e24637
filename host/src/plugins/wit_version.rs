//! Which `prpod:plugin` version a component was built against.
//!
//! A component does not record the world it was built against (wasm-tools#1315), and prpod's
//! worlds export bare function names (`compute-tags`, `check-manifests`), which carry no
//! version. What does carry one is every interface name of the package the component imports or
//! exports: `prpod:plugin/logging@0.1.0`, `prpod:plugin/types@0.1.0`. Guests built with
//! prpod's WIT (wit-bindgen, componentize-py, jco) import `types` whenever a world's function
//! takes a record, which every prpod world does, so the version is read from those names.
//!
//! Rules (semver, as wasmtime links WASI 0.2.x): a version whose major and minor are those of
//! one of [`SUPPORTED`] runs on that version's bindings (`0.1.x` on 0.1.0's, `0.2.x` on
//! 0.2.0's); any other is refused naming the component's version and the supported ones. A
//! component naming no `prpod:plugin` interface at all is reported as unversioned, judged by its
//! exports alone (the type check of each world still applies) and run on the [`CURRENT`]
//! bindings; the record shapes every released version shares make that safe.

use wasmparser::{Chunk, Parser, Payload};

/// The `prpod:plugin` version of this repository's `wit/`: what new plugins target.
pub const CURRENT: &str = "0.2.0";

/// Every `prpod:plugin` version this host has bindings for, oldest first. A released version
/// stays here: plugins built against it keep running.
pub const SUPPORTED: [&str; 2] = ["0.1.0", "0.2.0"];

/// The bindings a component is run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abi {
    /// `prpod:plugin@0.1.x`.
    V0_1,
    /// `prpod:plugin@0.2.x`.
    V0_2,
}

/// The WIT package name.
pub const PACKAGE: &str = "prpod:plugin";

/// What a component says about itself: the `prpod:plugin` version it targets, and the names it
/// imports and exports at its top level (for the OCI config's `component.imports` / `exports`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentFacts {
    /// The version of `prpod:plugin` its interface names carry, when any does.
    pub version: Option<String>,
    /// Top-level import names (`prpod:plugin/logging@0.1.0`, `wasi:cli/environment@0.2.6`).
    pub imports: Vec<String>,
    /// Top-level export names (`compute-tags`, `release`).
    pub exports: Vec<String>,
}

impl ComponentFacts {
    /// Reads the names of a component's top-level imports and exports, and the `prpod:plugin`
    /// version they carry. Two different versions in one component are an error.
    pub fn read(bytes: &[u8]) -> Result<ComponentFacts, String> {
        let bad = |e: wasmparser::BinaryReaderError| format!("it cannot be parsed: {e}");
        let mut facts = ComponentFacts::default();
        let mut versions = std::collections::BTreeSet::new();
        // The parsers of the components enclosing the one being read (nested components can
        // import interfaces too). Core modules are skipped whole: they hold no component
        // import or export, and they are nearly all of a component's bytes (a Python
        // component's 18 MB are the interpreter's code and data), so this reads a few KB.
        let mut outer: Vec<Parser> = Vec::new();
        let mut parser = Parser::new(0);
        let mut data = bytes;
        loop {
            let (payload, consumed) = match parser.parse(data, true).map_err(bad)? {
                Chunk::Parsed { payload, consumed } => (payload, consumed),
                // `eof` is true: the parser reports a truncated input as an error instead.
                Chunk::NeedMoreData(_) => return Err("it cannot be parsed: it is truncated".into()),
            };
            data = &data[consumed..];
            match payload {
                Payload::ModuleSection { unchecked_range, .. } => {
                    // The enclosing parser is already past the module; the data is not.
                    data = data.get(unchecked_range.len()..).ok_or("it cannot be parsed: a module is truncated")?;
                }
                Payload::ComponentSection { parser: nested, .. } => {
                    outer.push(std::mem::replace(&mut parser, nested));
                }
                Payload::End(_) => match outer.pop() {
                    Some(p) => parser = p,
                    None => break,
                },
                Payload::ComponentImportSection(reader) => {
                    for import in reader {
                        let name = import.map_err(bad)?.name.name;
                        note_version(name, &mut versions);
                        if outer.is_empty() {
                            facts.imports.push(name.to_string());
                        }
                    }
                }
                Payload::ComponentExportSection(reader) => {
                    for export in reader {
                        let name = export.map_err(bad)?.name.name;
                        note_version(name, &mut versions);
                        if outer.is_empty() {
                            facts.exports.push(name.to_string());
                        }
                    }
                }
                // A core module given where a component is expected: its code is not needed
                // either (its names say nothing of prpod's worlds).
                Payload::CodeSectionStart { size, .. } => {
                    parser.skip_section();
                    data = data.get(size as usize..).ok_or("it cannot be parsed: a code section is truncated")?;
                }
                _ => {}
            }
        }
        if versions.len() > 1 {
            let list: Vec<String> = versions.into_iter().collect();
            return Err(format!("it names several versions of {PACKAGE} ({})", list.join(", ")));
        }
        facts.version = versions.into_iter().next();
        Ok(facts)
    }

    /// The worlds whose exports the component names (`compute-tags` and `release`: tag-policy,
    /// ...), read from the names alone: no compile, so a pull of a 20 MB component can say what
    /// it is at transfer speed. The types are checked when the plugin is loaded to run (and by
    /// `plugin check`).
    pub fn worlds_by_name(&self) -> Vec<super::World> {
        let has = |n: &str| self.exports.iter().any(|e| e == n);
        super::World::ALL
            .into_iter()
            .filter(|w| match w {
                super::World::TagPolicy => has("compute-tags") && has("release"),
                super::World::ChartGenerator => has("generate"),
                super::World::Verifier => has("check-manifests") && has("check-release"),
            })
            .collect()
    }

    /// The version as people should read it: `0.1.0`, or `unversioned`.
    pub fn version_label(&self) -> String {
        self.version.clone().unwrap_or_else(|| "unversioned".into())
    }

    /// The bindings to run the component with, or why none fits: the message names the
    /// component's version and every supported one.
    pub fn abi(&self) -> Result<Abi, String> {
        let Some(v) = &self.version else { return Ok(Abi::V0_2) };
        if compatible(v, SUPPORTED[0]) {
            return Ok(Abi::V0_1);
        }
        if compatible(v, SUPPORTED[1]) {
            return Ok(Abi::V0_2);
        }
        let newer = parse(v) > parse(CURRENT);
        let supported: Vec<String> = SUPPORTED.iter().map(|s| format!("{PACKAGE}@{s}")).collect();
        Err(format!(
            "it was built against {PACKAGE}@{v}, and this prpod runs {} plugins{}",
            supported.join(" and "),
            if newer {
                format!(
                    "; upgrade prpod to a release that supports {v}, or rebuild the plugin against {CURRENT} \
                     (prpod's wit/)"
                )
            } else {
                format!("; rebuild the plugin against {CURRENT}, the WIT in this prpod's wit/ directory")
            }
        ))
    }

    /// Refuses a version this host cannot run, naming the component's version and the
    /// supported ones.
    pub fn check_supported(&self) -> Result<(), String> {
        self.abi().map(|_| ())
    }
}

/// Records the version of a `prpod:plugin/<interface>@<version>` name.
fn note_version(name: &str, versions: &mut std::collections::BTreeSet<String>) {
    if let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/'))
        && let Some((_, version)) = rest.split_once('@')
    {
        versions.insert(version.to_string());
    }
}

fn parse(v: &str) -> (u64, u64, u64) {
    let core = v.split(['-', '+']).next().unwrap_or(v);
    let mut it = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Semver compatibility as Cargo and wasmtime read it for 0.x: same major, and for 0.x the
/// same minor.
fn compatible(v: &str, host: &str) -> bool {
    let (a, b) = (parse(v), parse(host));
    if a.0 != b.0 {
        return false;
    }
    a.0 != 0 || a.1 == b.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_target_the_supported_version() {
        for (name, bytes) in super::super::reference::BUILTINS {
            let facts = ComponentFacts::read(bytes).unwrap();
            assert_eq!(facts.version.as_deref(), Some(CURRENT), "{name}");
            assert_eq!(facts.abi(), Ok(Abi::V0_2), "{name}");
            assert!(facts.imports.iter().any(|i| i.starts_with("prpod:plugin/")), "{name}: {:?}", facts.imports);
            facts.check_supported().unwrap();
        }
    }

    #[test]
    fn worlds_are_read_from_export_names_without_compiling() {
        use super::super::World;
        let worlds = |name: &str| {
            let bytes = super::super::reference::builtin(name).unwrap();
            ComponentFacts::read(bytes).unwrap().worlds_by_name()
        };
        assert_eq!(worlds("tag-default"), [World::TagPolicy]);
        assert_eq!(worlds("chart-webapp"), [World::ChartGenerator]);
        assert_eq!(worlds("verify-baseline"), [World::Verifier]);
        // A world needs all of its exports: `release` alone is no tag-policy.
        let half = wat::parse_str(
            r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f"))) (export "release" (func $f)) (export "generate" (func $f)))"#,
        )
        .unwrap();
        assert_eq!(ComponentFacts::read(&half).unwrap().worlds_by_name(), [World::ChartGenerator]);
    }

    #[test]
    fn core_modules_are_skipped_and_nested_components_are_not_top_level() {
        // A nested component's import still names a version; a core module (its code skipped
        // unread) before the top-level export does not hide that export.
        let c = wat::parse_str(
            r#"(component
                (component $inner (import "prpod:plugin/logging@0.1.0" (instance)))
                (core module $m (func (export "f") (local i32) (local.set 0 (i32.const 7))) (data "padding"))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (export "generate" (func $f)))"#,
        )
        .unwrap();
        let facts = ComponentFacts::read(&c).unwrap();
        assert_eq!(facts.version.as_deref(), Some("0.1.0"));
        assert!(facts.imports.is_empty(), "{:?}", facts.imports);
        assert_eq!(facts.exports, ["generate"]);
        // A component cut inside its module is an error, not a shorter list of names.
        let at = c.windows(7).position(|w| w == b"padding").unwrap();
        let e = ComponentFacts::read(&c[..at]).unwrap_err();
        assert!(e.contains("cannot be parsed") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn each_supported_version_gets_its_bindings_and_a_newer_one_is_refused_naming_them() {
        let facts = |name: &str| {
            ComponentFacts::read(&wat::parse_str(format!(r#"(component (import "{name}" (instance)))"#)).unwrap())
                .unwrap()
        };
        assert_eq!(facts("prpod:plugin/logging@0.1.0").abi(), Ok(Abi::V0_1));
        assert_eq!(facts("prpod:plugin/logging@0.1.7").abi(), Ok(Abi::V0_1));
        assert_eq!(facts("prpod:plugin/host@0.2.0").abi(), Ok(Abi::V0_2));
        assert_eq!(facts("prpod:plugin/logging@0.2.3").abi(), Ok(Abi::V0_2));
        let component = wat::parse_str(
            r#"(component (import "prpod:plugin/logging@0.3.0" (instance)) (import "wasi:cli/stdin@0.2.6" (instance)))"#,
        )
        .unwrap();
        let newer = ComponentFacts::read(&component).unwrap();
        assert_eq!(newer.version.as_deref(), Some("0.3.0"));
        assert_eq!(newer.imports, ["prpod:plugin/logging@0.3.0", "wasi:cli/stdin@0.2.6"]);
        let e = newer.check_supported().unwrap_err();
        for part in ["prpod:plugin@0.3.0", "prpod:plugin@0.1.0", "prpod:plugin@0.2.0", "upgrade"] {
            assert!(e.contains(part), "{part} missing: {e}");
        }
        let e = facts("prpod:plugin/logging@0.0.9").check_supported().unwrap_err();
        assert!(e.contains("prpod:plugin@0.0.9") && e.contains("rebuild the plugin against 0.2.0"), "{e}");
        let none = ComponentFacts::read(&wat::parse_str("(component)").unwrap()).unwrap();
        assert_eq!(none.version_label(), "unversioned");
        assert_eq!(none.abi(), Ok(Abi::V0_2));
    }

    #[test]
    fn the_released_0_1_0_wit_is_frozen() {
        // wit/v0.1.0/ is what 0.1.0 plugins were built against: never edited, byte for byte.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/v0.1.0");
        for (file, sha) in [
            ("types.wit", "b6230316218a3efafeffee6903b8ffd06776fc8c5749716d1104401e1ed31045"),
            ("world.wit", "6e0469178852594aa4b88fd36945ba3d6744139b9da78541f9a25934f2c538ec"),
        ] {
            use sha2::Digest;
            let bytes = std::fs::read(root.join(file)).unwrap();
            assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha, "wit/v0.1.0/{file} changed");
        }
        let current = std::fs::read_to_string(root.join("../world.wit")).unwrap();
        assert!(current.starts_with(&format!("package {PACKAGE}@{CURRENT};")), "wit/ is not {CURRENT}");
    }
}
