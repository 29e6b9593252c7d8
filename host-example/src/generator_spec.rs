//! Where a manifest keeps the generator's spec, by the rule the component reads it.
//!
//! Hosts read a few spec fields themselves (the account a token may be minted for,
//! the cache key, the account a door fills in), and must find them where the
//! component does: a bare spec is the manifest itself; a resource (any of `spec`,
//! `kind`, `apiVersion` set) keeps it under `spec`; ESO's `ClusterGenerator` one level
//! further down, under `spec.generator.cloudsmithAccessTokenSpec`. One rule for every
//! reader, so a form the component accepts is not misread by one of them.

use serde_json::{Map, Value};

/// The kind ESO gives generators that serve every namespace.
const CLUSTER_GENERATOR: &str = "ClusterGenerator";

/// The spec object of `manifest`, or `None` when the manifest has none where the
/// component would look.
pub fn spec(manifest: &Value) -> Option<&Value> {
    let spec = match form(manifest)? {
        Form::Bare => manifest,
        Form::Resource => manifest.get("spec")?,
        Form::ClusterGenerator => manifest
            .get("spec")?
            .get("generator")?
            .get("cloudsmithAccessTokenSpec")?,
    };
    spec.is_object().then_some(spec)
}

/// [`spec`], for changing it.
pub fn spec_mut(manifest: &mut Value) -> Option<&mut Map<String, Value>> {
    let spec = match form(manifest)? {
        Form::Bare => manifest,
        Form::Resource => manifest.get_mut("spec")?,
        Form::ClusterGenerator => manifest
            .get_mut("spec")?
            .get_mut("generator")?
            .get_mut("cloudsmithAccessTokenSpec")?,
    };
    spec.as_object_mut()
}

enum Form {
    Bare,
    Resource,
    ClusterGenerator,
}

fn form(manifest: &Value) -> Option<Form> {
    let top = manifest.as_object()?;
    // null is unset, for these keys as for every other (the component's rule).
    let set = |k: &str| top.get(k).is_some_and(|v| !v.is_null());
    Some(if !(set("spec") || set("kind") || set("apiVersion")) {
        Form::Bare
    } else if top.get("kind").and_then(Value::as_str) == Some(CLUSTER_GENERATOR) {
        Form::ClusterGenerator
    } else {
        Form::Resource
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_form_the_component_reads() {
        let inner = json!({"orgSlug": "o"});
        let cases = [
            (json!({"orgSlug": "o"}), Some(inner.clone())),
            (
                json!({"kind": "CloudsmithAccessToken", "spec": {"orgSlug": "o"}}),
                Some(inner.clone()),
            ),
            (json!({"spec": {"orgSlug": "o"}}), Some(inner.clone())),
            (
                json!({"kind": "ClusterGenerator", "spec": {"kind": "CloudsmithAccessToken",
                    "generator": {"cloudsmithAccessTokenSpec": {"orgSlug": "o"}}}}),
                Some(inner.clone()),
            ),
            // A resource without a spec, a spec that is not an object, no object at all.
            (json!({"kind": "CloudsmithAccessToken"}), None),
            (json!({"spec": "x"}), None),
            (
                json!({"kind": "ClusterGenerator", "spec": {"generator": {}}}),
                None,
            ),
            (json!([1]), None),
            // null keys are unset: this is a bare spec.
            (
                json!({"spec": null, "orgSlug": "o"}),
                Some(json!({"spec": null, "orgSlug": "o"})),
            ),
        ];
        for (mut manifest, want) in cases {
            assert_eq!(spec(&manifest).cloned(), want, "{manifest}");
            let got_mut = spec_mut(&mut manifest).map(|m| Value::Object(m.clone()));
            assert_eq!(got_mut, want, "{manifest} (mut)");
        }
    }
}
