//! Reads a pod's annotations from a file (`merbridge pod add --annotations FILE`): a whole
//! Pod manifest (`metadata.annotations`), a workload (`spec.template.metadata.annotations`),
//! or a bare `name: value` map; YAML or JSON.

use std::collections::BTreeMap;
use std::path::Path;

/// Largest file accepted: manifests are kilobytes; anything near this is a wrong file.
const MAX_FILE_BYTES: u64 = 4 << 20;

pub fn annotations_from_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let what = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {what}: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{what} is {} bytes; an annotations file should be a Pod manifest or a small map",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {what}: {e}"))?;
    annotations_from_text(&text, &what)
}

fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses annotations from YAML or JSON text; `what` names the source in errors.
pub fn annotations_from_text(text: &str, what: &str) -> Result<BTreeMap<String, String>, String> {
    if text.trim().is_empty() {
        return Err(format!(
            "{what} is empty; expected a Pod manifest or a map of annotations"
        ));
    }
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON: {e}"))?
    } else {
        // The first YAML document; `---` separated manifests are common.
        let document = serde_norway::Deserializer::from_str(text)
            .next()
            .ok_or_else(|| format!("{what} is empty"))?;
        serde::Deserialize::deserialize(document)
            .map_err(|e| format!("{what} is not valid YAML (or has non-string keys): {e}"))?
    };
    let object = match &value {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => return Ok(BTreeMap::new()),
        _ => {
            return Err(format!(
                "{what}: expected a Pod manifest or a map of annotations, found a list or scalar"
            ))
        }
    };
    let is_manifest = object.contains_key("apiVersion")
        || object.contains_key("kind")
        || object.get("metadata").is_some_and(|m| m.is_object());
    let map = if is_manifest {
        let metadata = if object.get("kind").and_then(|k| k.as_str()) == Some("Pod") {
            value.get("metadata")
        } else {
            value
                .pointer("/spec/template/metadata")
                .or_else(|| value.get("metadata"))
        };
        match metadata.and_then(|m| m.get("annotations")) {
            None | Some(serde_json::Value::Null) => return Ok(BTreeMap::new()),
            Some(serde_json::Value::Object(map)) => map,
            Some(_) => return Err(format!("{what}: metadata.annotations is not a map")),
        }
    } else {
        object
    };
    let mut out = BTreeMap::new();
    for (name, value) in map {
        match scalar_text(value) {
            Some(text) => {
                out.insert(name.clone(), text);
            }
            None => {
                return Err(format!(
                    "{what}: annotation {name:?} has a list or map value; annotation values are strings"
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_workload_and_bare_map() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  annotations:\n    a: \"1\"\n    b: 2\n";
        let got = annotations_from_text(pod, "t").unwrap();
        assert_eq!(got.get("a").unwrap(), "1");
        assert_eq!(got.get("b").unwrap(), "2");
        let deployment = "kind: Deployment\nmetadata:\n  annotations: {x: outer}\nspec:\n  template:\n    metadata:\n      annotations: {y: inner}\n";
        let got = annotations_from_text(deployment, "t").unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["y"]);
        let bare = r#"{"traffic.sidecar.istio.io/excludeOutboundPorts": "7,8"}"#;
        let got = annotations_from_text(bare, "t").unwrap();
        assert_eq!(
            got.get("traffic.sidecar.istio.io/excludeOutboundPorts")
                .unwrap(),
            "7,8"
        );
        let multi = "kind: Pod\nmetadata: {annotations: {first: doc}}\n---\nkind: Pod\n";
        assert_eq!(annotations_from_text(multi, "t").unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_source() {
        assert!(annotations_from_text("- a\n- b\n", "f.yaml")
            .unwrap_err()
            .contains("f.yaml"));
        assert!(annotations_from_text("{bad json", "f.json")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(annotations_from_text("a: [1, 2]\n", "f")
            .unwrap_err()
            .contains("\"a\""));
        assert!(annotations_from_text(" \n", "f")
            .unwrap_err()
            .contains("empty"));
    }
}
