//! What is checked is what is applied.
//!
//! `helm template`'s output is read once into objects ([`canonical_objects`]): YAML merge keys
//! (`<<`) resolved, lists (`kind: List`, or any object with top-level `items`, which the API
//! machinery Helm uses flattens) split into their items, and each object written as JSON — the
//! API's own format, which reads the same to every parser (YAML 1.1's `yes`/`on` booleans and
//! Go's merge keys cannot make the cluster see something the checks did not). Those objects are
//! what the verifiers judge, and what Helm installs: prpod writes them into a chart of its own
//! ([`write_applied_chart`]) whose templates only insert a file verbatim
//! (`{{ .Files.Get "objects/0001.json" }}`), so Helm's second rendering during `helm upgrade`
//! cannot differ from the first, whatever `lookup` or `.Capabilities` would say by then.

use std::path::Path;

use serde::Deserialize;

use super::ChartError;
use crate::model::Manifest;

/// Deepest nesting of lists (`items` holding lists) prpod flattens.
const MAX_LIST_DEPTH: usize = 8;
/// Most rounds of merge-key resolution (a merge can pull in mappings holding merges).
const MAX_MERGE_ROUNDS: usize = 16;

/// The objects of `helm template`'s output, as prpod checks and applies them.
pub fn canonical_objects(rendered: &str) -> Result<Vec<serde_json::Value>, ChartError> {
    let bad = |n: usize, why: String| ChartError::Manifests(format!("document {n} of the rendered chart: {why}"));
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(rendered).enumerate() {
        let n = i + 1;
        let mut value = serde_yaml::Value::deserialize(doc).map_err(|e| bad(n, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        resolve_merges(&mut value).map_err(|why| bad(n, why))?;
        let json = to_json(&value).map_err(|why| bad(n, why))?;
        flatten(json, 0, &mut out).map_err(|why| bad(n, why))?;
    }
    Ok(out)
}

/// Resolves every `<<` merge key, as Kubernetes' YAML reader does.
fn resolve_merges(v: &mut serde_yaml::Value) -> Result<(), String> {
    for _ in 0..MAX_MERGE_ROUNDS {
        if !has_merge_key(v) {
            return Ok(());
        }
        v.apply_merge().map_err(|e| format!("a YAML merge key (`<<`) cannot be resolved: {e}"))?;
    }
    Err(format!("YAML merge keys (`<<`) nest more than {MAX_MERGE_ROUNDS} deep"))
}

fn has_merge_key(v: &serde_yaml::Value) -> bool {
    match v {
        serde_yaml::Value::Mapping(m) => m.iter().any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        serde_yaml::Value::Sequence(s) => s.iter().any(has_merge_key),
        serde_yaml::Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// A YAML value as JSON. Keys that are not strings become their text (as Kubernetes' reader
/// does); custom tags and non-finite numbers are refused.
fn to_json(v: &serde_yaml::Value) -> Result<serde_json::Value, String> {
    use serde_yaml::Value as Y;
    Ok(match v {
        Y::Null => serde_json::Value::Null,
        Y::Bool(b) => serde_json::Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(serde_json::Value::Number)
                    .ok_or(format!("the number {n} is not finite"))?
            }
        }
        Y::String(s) => serde_json::Value::String(s.clone()),
        Y::Sequence(s) => serde_json::Value::Array(s.iter().map(to_json).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".into(),
                    _ => return Err("a mapping key is itself a list or a mapping".into()),
                };
                if out.insert(key.clone(), to_json(v)?).is_some() {
                    return Err(format!("the key {key:?} appears twice in one mapping"));
                }
            }
            serde_json::Value::Object(out)
        }
        Y::Tagged(t) => return Err(format!("the YAML tag {} is not part of a Kubernetes object", t.tag)),
    })
}

/// Splits lists into their items: an object with a top-level `items` is a list to Kubernetes'
/// unstructured reader (whatever its `kind`), and Helm creates each item.
fn flatten(v: serde_json::Value, depth: usize, out: &mut Vec<serde_json::Value>) -> Result<(), String> {
    let serde_json::Value::Object(obj) = v else {
        return Err("it is not a Kubernetes object (a mapping with apiVersion and kind)".into());
    };
    match obj.get("items") {
        None => {}
        Some(serde_json::Value::Array(_)) if depth >= MAX_LIST_DEPTH => {
            return Err(format!("lists nest more than {MAX_LIST_DEPTH} deep"));
        }
        Some(serde_json::Value::Array(items)) => {
            for item in items.clone() {
                flatten(item, depth + 1, out)?;
            }
            return Ok(());
        }
        Some(_) => return Err("its top-level `items` is not a list".into()),
    }
    for field in ["apiVersion", "kind"] {
        if obj.get(field).and_then(|f| f.as_str()).is_none_or(str::is_empty) {
            return Err(format!("it is not a Kubernetes object: `{field}` is missing or not a string"));
        }
    }
    out.push(serde_json::Value::Object(obj));
    Ok(())
}

/// The manifest (for verifiers and the scope check) of one canonical object: its text is the
/// JSON Helm applies.
pub fn manifest_of(obj: &serde_json::Value) -> Manifest {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    Manifest {
        api_version: s(&obj["apiVersion"]).unwrap_or_default(),
        kind: s(&obj["kind"]).unwrap_or_default(),
        name: s(&obj["metadata"]["name"]).unwrap_or_default(),
        namespace: s(&obj["metadata"]["namespace"]),
        text: serde_json::to_string_pretty(obj).expect("a JSON value serializes"),
    }
}

/// The objects as one YAML stream, for people (`--show-manifests`).
pub fn display_yaml(objects: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o).unwrap_or_default());
    }
    out
}

/// Writes the chart Helm installs: `Chart.yaml` (the rendered chart's name, version and
/// appVersion), one JSON file per object under `objects/`, and one template per object that
/// inserts that file verbatim. `source` is the rendered chart's directory.
pub fn write_applied_chart(dir: &Path, source: &Path, objects: &[serde_json::Value]) -> Result<(), ChartError> {
    use crate::clients::helm::write_private;
    let write = |path: &Path, bytes: &[u8]| {
        write_private(path, bytes).map_err(|source| ChartError::Write { path: path.to_path_buf(), source })
    };
    let mkdir = |path: &Path| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|source| ChartError::Write { path: path.to_path_buf(), source })
    };
    let text = std::fs::read_to_string(source.join("Chart.yaml")).unwrap_or_default();
    let meta: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
    let field = |k: &str| {
        meta.get(k).and_then(|x| x.as_str().map(str::to_string).or_else(|| x.as_f64().map(|f| f.to_string())))
    };
    let mut chart = serde_json::Map::new();
    chart.insert("apiVersion".into(), "v2".into());
    chart.insert("name".into(), field("name").unwrap_or_else(|| "chart".into()).into());
    chart.insert("version".into(), field("version").unwrap_or_else(|| "0.0.0".into()).into());
    if let Some(v) = field("appVersion") {
        chart.insert("appVersion".into(), v.into());
    }
    chart.insert("description".into(), "the manifests prpod rendered and checked, applied as they are".into());
    chart.insert("type".into(), "application".into());
    // JSON is YAML: no value of the PR's Chart.yaml can break out of its string.
    write(&dir.join("Chart.yaml"), serde_json::to_string_pretty(&chart).expect("JSON").as_bytes())?;
    mkdir(&dir.join("objects"))?;
    mkdir(&dir.join("templates"))?;
    for (i, o) in objects.iter().enumerate() {
        let name = format!("{:04}", i + 1);
        write(&dir.join(format!("objects/{name}.json")), serde_json::to_string_pretty(o).expect("JSON").as_bytes())?;
        write(
            &dir.join(format!("templates/{name}.yaml")),
            format!("{{{{ .Files.Get \"objects/{name}.json\" }}}}\n").as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(objs: &[serde_json::Value]) -> Vec<String> {
        objs.iter()
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap_or("")))
            .collect()
    }

    #[test]
    fn lists_are_split_into_items_whatever_their_kind() {
        let text = "---\n# Source: c/templates/a.yaml\napiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n  - apiVersion: v1\n    kind: List\n    items: [{apiVersion: rbac.authorization.k8s.io/v1, kind: ClusterRoleBinding, metadata: {name: b}}]\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sneaky}\nitems:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: c}}\n---\n# only a comment\n";
        let objs = canonical_objects(text).unwrap();
        assert_eq!(kinds(&objs), ["ConfigMap/a", "ClusterRoleBinding/b", "Namespace/c"]);
        assert!(canonical_objects("apiVersion: v1\nkind: List\nitems: {a: 1}\n").is_err());
        assert!(canonical_objects("- a\n- b\n").is_err());
        assert!(canonical_objects("metadata: {name: x}\n").unwrap_err().to_string().contains("apiVersion"));
    }

    #[test]
    fn merge_keys_are_resolved_even_when_chained() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nx-base: &base {hostNetwork: true}\n\
                    x-mid: &mid {<<: *base, hostPID: true}\nspec:\n  <<: *mid\n  containers: []\n";
        let objs = canonical_objects(text).unwrap();
        let spec = &objs[0]["spec"];
        assert_eq!(spec["hostNetwork"], true, "{spec}");
        assert_eq!(spec["hostPID"], true, "{spec}");
        assert!(spec.get("<<").is_none());
        assert!(canonical_objects("apiVersion: v1\nkind: Pod\nspec: {<<: 3}\n").is_err());
    }

    #[test]
    fn json_keeps_strings_strings() {
        // YAML 1.1 readers (Go's) take a plain `yes` for true; the JSON prpod applies says "yes".
        let objs =
            canonical_objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: yes, 1: on}\n").unwrap();
        let m = manifest_of(&objs[0]);
        assert!(m.text.contains("\"a\": \"yes\"") && m.text.contains("\"1\": \"on\""), "{}", m.text);
        assert_eq!((m.kind.as_str(), m.name.as_str(), m.namespace.as_deref()), ("ConfigMap", "c", None));
        assert!(canonical_objects("apiVersion: v1\nkind: X\nspec: !custom {a: 1}\n").is_err());
    }

    #[test]
    fn the_applied_chart_inserts_each_object_verbatim() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join("Chart.yaml"),
            "apiVersion: v2\nname: web\nversion: 1.2.3\nappVersion: \"2\"\ndependencies: [{name: x}]\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let objs = canonical_objects(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {t: '{{ .Release.Name }}'}\n",
        )
        .unwrap();
        write_applied_chart(dir.path(), src.path(), &objs).unwrap();
        assert_eq!(super::super::chart_name(dir.path()), "web-1.2.3");
        let chart = std::fs::read_to_string(dir.path().join("Chart.yaml")).unwrap();
        assert!(!chart.contains("dependencies"), "{chart}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("templates/0001.yaml")).unwrap(),
            "{{ .Files.Get \"objects/0001.json\" }}\n"
        );
        assert!(std::fs::read_to_string(dir.path().join("objects/0001.json")).unwrap().contains("{{ .Release.Name }}"));
    }
}
