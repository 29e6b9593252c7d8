//! The generator spec as the host reads it: one typed view, found where the component
//! finds it.
//!
//! Hosts read a few spec fields themselves (the account a token may be minted for,
//! the token cache's key, the account or slugs a door fills in), and must find them where
//! the component does: a bare spec is the manifest itself; a resource (any of `spec`,
//! `kind`, `apiVersion` set) keeps it under `spec`; ESO's `ClusterGenerator` one level
//! further down, under `spec.generator.cloudsmithAccessTokenSpec`. One rule for every
//! reader, so a form the component accepts is not misread by one of them.
//!
//! The view is lenient where the component is strict: a field of the wrong type reads as
//! absent, and the component, which validates the spec, reports it. The rules themselves
//! (where the spec lives, which API a spec names, which audiences a token is asked for)
//! are the component's own, read from its crate ([`cloudsmith_access_token::spec`]), so a
//! change to them changes every host reader with them.

use cloudsmith_access_token::spec::{self as rules, ApiBase, Form, SpecError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lenient::{object, text, texts};

/// The spec fields the host reads ([`GeneratorSpec::of`]) or writes ([`set`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorSpec {
    /// `apiUrl`, as written.
    #[serde(default, deserialize_with = "text")]
    pub api_url: Option<String>,
    /// `apiHost`, as written.
    #[serde(default, deserialize_with = "text")]
    pub api_host: Option<String>,
    /// `orgSlug`.
    #[serde(default, deserialize_with = "text")]
    pub org_slug: Option<String>,
    /// `serviceSlug`.
    #[serde(default, deserialize_with = "text")]
    pub service_slug: Option<String>,
    /// `serviceAccountRef`.
    #[serde(default, deserialize_with = "object")]
    pub service_account_ref: Option<ServiceAccountRef>,
}

/// `serviceAccountRef`: ESO's `ServiceAccountSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountRef {
    /// `name`.
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `namespace`.
    #[serde(default, deserialize_with = "text", skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `audiences`.
    #[serde(default, deserialize_with = "texts", skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

impl GeneratorSpec {
    /// The spec of `manifest`; `None` when it has no spec object where the component
    /// would look.
    pub fn of(manifest: &Value) -> Option<GeneratorSpec> {
        // `spec` returns objects only: serde would also read a struct from an array.
        GeneratorSpec::deserialize(spec(manifest)?).ok()
    }

    /// [`GeneratorSpec::of`] a manifest in JSON text.
    pub fn of_json(manifest: &str) -> Option<GeneratorSpec> {
        GeneratorSpec::of(&serde_json::from_str(manifest).ok()?)
    }

    /// The API as written: `apiUrl` when set, else `apiHost` (the component's order; an
    /// empty field is unset).
    pub fn api(&self) -> Option<&str> {
        fn set(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|v| !v.is_empty())
        }
        set(&self.api_url).or(set(&self.api_host))
    }

    /// The API the component calls for this spec, or why it refuses the field that names it.
    pub fn api_base(&self) -> Result<ApiBase, SpecError> {
        rules::choose_api(self.api_url.as_deref(), self.api_host.as_deref(), "spec")
    }

    /// The API the component calls, as a URL (`scheme://authority/path`); the field as
    /// written when the component would refuse it.
    pub fn effective_api(&self) -> String {
        match self.api_base() {
            Ok(base) => base.url(),
            Err(_) => self.api().unwrap_or_default().to_string(),
        }
    }

    /// The audiences the component asks the token source for: the spec's, else the
    /// API's origin. Empty only when neither can be told (an API the component refuses).
    pub fn audiences(&self) -> Vec<String> {
        let written = self
            .service_account_ref
            .as_ref()
            .map(|r| r.audiences.clone())
            .unwrap_or_default();
        match self.api_base() {
            Ok(base) => rules::audiences_or_default(written, &base),
            Err(_) => written,
        }
    }

    /// An `apiHost` that ESO would never see, when it names another API than ESO's
    /// default, and no `apiUrl` overrides it.
    ///
    /// ESO's documentation calls the field `apiHost`, but the CRD of its Cloudsmith
    /// generator (ESO v0.20.4 `config/crds/bases/generators.external-secrets.io_cloudsmithaccesstokens.yaml`)
    /// has `spec.apiUrl` and no `apiHost`, and is not `x-kubernetes-preserve-unknown-fields`:
    /// an API server with that CRD prunes `apiHost` when the object is stored, so ESO's
    /// generator (`pkg/generator/cloudsmith/cloudsmith.go`) calls its default API
    /// instead. This host honours `apiHost` (the documentation's name): the same manifest
    /// would mint from two different APIs.
    pub fn api_host_eso_drops(&self) -> Option<DroppedApiHost> {
        // An empty field is an unset one, to the component and to ESO's Go struct alike.
        let set = |field: &Option<String>| field.clone().filter(|v| !v.trim().is_empty());
        if set(&self.api_url).is_some() {
            return None;
        }
        let written = set(&self.api_host)?;
        // An apiHost the component refuses fails the call with that field's error.
        let api = rules::choose_api(None, Some(&written), "spec").ok()?.url();
        (api != ESO_DEFAULT_API).then_some(DroppedApiHost { written, api })
    }
}

/// The API ESO's Cloudsmith generator calls when `apiUrl` is unset: the component's
/// default too.
pub const ESO_DEFAULT_API: &str = rules::DEFAULT_API;

/// An `apiHost` an API server with ESO's CRD would drop ([`GeneratorSpec::api_host_eso_drops`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedApiHost {
    /// `apiHost` as written.
    pub written: String,
    /// The API it names, as a URL (a bare host is https).
    pub api: String,
}

impl DroppedApiHost {
    /// What is wrong, in one line.
    pub fn problem(&self) -> String {
        format!(
            "spec.apiHost is not a field of ESO's CloudsmithAccessToken CRD (it has spec.apiUrl): \
             an API server with that CRD drops apiHost, and ESO calls {ESO_DEFAULT_API}, not {}",
            self.api
        )
    }

    /// The fix, in one line.
    pub fn fix(&self) -> String {
        format!("write apiUrl: {} in place of apiHost: {}", self.api, self.written)
    }
}

/// A spec field a host writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `apiUrl`.
    ApiUrl,
    /// `apiHost`.
    ApiHost,
    /// `orgSlug`.
    OrgSlug,
    /// `serviceSlug`.
    ServiceSlug,
    /// `serviceAccountRef`.
    ServiceAccountRef,
}

impl Field {
    /// The field's JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Field::ApiUrl => "apiUrl",
            Field::ApiHost => "apiHost",
            Field::OrgSlug => "orgSlug",
            Field::ServiceSlug => "serviceSlug",
            Field::ServiceAccountRef => "serviceAccountRef",
        }
    }
}

/// Sets (`Some`) or removes (`None`) `field` in `manifest`'s spec; `false` when the
/// manifest has no spec object to change.
pub fn set(manifest: &mut Value, field: Field, value: Option<Value>) -> bool {
    let Some(spec) = spec_mut(manifest) else {
        return false;
    };
    match value {
        Some(value) => spec.insert(field.name().into(), value),
        None => spec.remove(field.name()),
    };
    true
}

/// Gives the spec a `serviceAccountRef` naming `account` when it has none (the
/// component requires one; with a token the host already holds, it only names the
/// account). `false` when the manifest has no spec object.
pub fn default_account(manifest: &mut Value, account: &str) -> bool {
    let Some(spec) = spec_mut(manifest) else {
        return false;
    };
    spec.entry(Field::ServiceAccountRef.name())
        .or_insert_with(|| serde_json::json!({ "name": account }));
    true
}

/// Removes `serviceAccountRef.namespace`, when there is one.
pub fn drop_account_namespace(manifest: &mut Value) {
    if let Some(Value::Object(account)) =
        spec_mut(manifest).and_then(|s| s.get_mut(Field::ServiceAccountRef.name()))
    {
        account.remove("namespace");
    }
}

/// The spec object of `manifest` as JSON, or `None` when the manifest has none where the
/// component would look.
fn spec(manifest: &Value) -> Option<&Value> {
    let mut spec = manifest;
    for key in form(manifest)?.path() {
        spec = spec.get(key)?;
    }
    spec.is_object().then_some(spec)
}

/// [`spec`], for changing it.
fn spec_mut(manifest: &mut Value) -> Option<&mut Map<String, Value>> {
    let mut spec = manifest;
    for key in form(spec)?.path() {
        spec = spec.get_mut(key)?;
    }
    spec.as_object_mut()
}

/// The component's [`Form`] of `manifest`, which must be an object.
fn form(manifest: &Value) -> Option<Form> {
    let top = manifest.as_object()?;
    // null is unset, for these keys as for every other (the component's rule).
    let set = |k: &str| top.get(k).is_some_and(|v| !v.is_null());
    let resource = set("spec") || set("kind") || set("apiVersion");
    Some(Form::of(resource, top.get("kind").and_then(Value::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_api_host_eso_would_drop_is_named_with_its_fix() {
        let dropped = |spec: serde_json::Value| {
            GeneratorSpec::of(&json!({"kind": "CloudsmithAccessToken", "spec": spec}))
                .unwrap()
                .api_host_eso_drops()
        };
        let host = dropped(json!({"apiHost": "cloudsmith.acme.example"})).unwrap();
        assert_eq!(host.api, "https://cloudsmith.acme.example");
        assert_eq!(
            host.fix(),
            "write apiUrl: https://cloudsmith.acme.example in place of apiHost: cloudsmith.acme.example"
        );
        assert!(host.problem().starts_with("spec.apiHost is not a field of ESO's"));
        assert!(host
            .problem()
            .ends_with("ESO calls https://api.cloudsmith.io, not https://cloudsmith.acme.example"));
        let url = dropped(json!({"apiHost": "http://127.0.0.1:8080/"})).unwrap();
        assert_eq!(url.api, "http://127.0.0.1:8080");
        // ESO reaches the same API without it, or apiUrl is there: nothing to say.
        for spec in [
            json!({"apiHost": "api.cloudsmith.io"}),
            json!({"apiHost": "https://api.cloudsmith.io/"}),
            json!({"apiHost": "h.example", "apiUrl": "https://h.example"}),
            json!({"apiUrl": "https://h.example"}),
            json!({"apiHost": ""}),
            json!({}),
        ] {
            assert_eq!(dropped(spec.clone()), None, "{spec}");
        }
        // An empty apiUrl is unset: ESO would still miss apiHost.
        assert!(dropped(json!({"apiHost": "h.example", "apiUrl": ""})).is_some());
    }

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

    #[test]
    fn the_typed_view_reads_wrong_types_as_absent() {
        let s = GeneratorSpec::of_json(
            r#"{"spec": {"orgSlug": "o", "serviceSlug": 7, "apiHost": "h", "apiUrl": "https://u",
                "serviceAccountRef": {"name": "sa", "namespace": 1, "audiences": ["a", 2]}}}"#,
        )
        .unwrap();
        assert_eq!(s.org_slug.as_deref(), Some("o"));
        assert_eq!(s.service_slug, None);
        assert_eq!(s.api(), Some("https://u"));
        let account = s.service_account_ref.unwrap();
        assert_eq!(
            (account.name.as_deref(), account.namespace, account.audiences),
            (Some("sa"), None, vec!["a".to_string()])
        );
        let odd = GeneratorSpec::of_json(r#"{"serviceAccountRef": "sa"}"#).unwrap();
        assert_eq!(odd.service_account_ref, None);
        assert_eq!(GeneratorSpec::of_json("[]"), None);
    }

    #[test]
    fn writers_change_the_spec_where_the_component_reads_it() {
        let mut m = json!({"kind": "ClusterGenerator", "spec": {"generator": {"cloudsmithAccessTokenSpec":
            {"orgSlug": "o", "apiUrl": "u", "serviceAccountRef": {"name": "x", "namespace": "n"}}}}});
        assert!(set(&mut m, Field::ApiHost, Some(json!("h"))));
        assert!(set(&mut m, Field::ApiUrl, None));
        drop_account_namespace(&mut m);
        assert!(default_account(&mut m, "ignored"));
        let s = GeneratorSpec::of(&m).unwrap();
        assert_eq!((s.api_host.as_deref(), s.api_url.as_deref()), (Some("h"), None));
        assert_eq!(
            s.service_account_ref.unwrap(),
            ServiceAccountRef {
                name: Some("x".into()),
                ..Default::default()
            }
        );
        let mut bare = json!({"orgSlug": "o"});
        assert!(default_account(&mut bare, "puller"));
        assert_eq!(
            bare,
            json!({"orgSlug": "o", "serviceAccountRef": {"name": "puller"}})
        );
        assert!(!set(&mut json!([1]), Field::OrgSlug, None));
    }

    /// Over generated manifests (every form, every way of setting or not setting the API
    /// fields and the audiences), the host's view finds what the component parses: the
    /// same spec, API and audiences; and a field written where the view writes it is the
    /// one the component reads.
    #[test]
    fn the_view_agrees_with_the_component_over_generated_manifests() {
        use cloudsmith_access_token::spec::parse_manifest;
        let apis: [Option<Value>; 6] = [
            None,
            Some(Value::Null),
            Some(json!("")),
            Some(json!("https://API.Example:443/base/")),
            Some(json!("http://127.0.0.1:8080")),
            Some(json!("h.example:8443")),
        ];
        let audiences = [None, Some(json!([])), Some(json!(["https://aud.example", "b"]))];
        let namespaces = [None, Some(json!("team")), Some(json!(""))];
        let mut checked = 0;
        for api_url in &apis {
            for api_host in &apis {
                for aud in &audiences {
                    for ns in &namespaces {
                        let mut account = json!({"name": "puller"});
                        if let Some(aud) = aud {
                            account["audiences"] = aud.clone();
                        }
                        if let Some(ns) = ns {
                            account["namespace"] = ns.clone();
                        }
                        let mut inner =
                            json!({"orgSlug": "org", "serviceSlug": "svc", "serviceAccountRef": account});
                        if let Some(v) = api_url {
                            inner["apiUrl"] = v.clone();
                        }
                        if let Some(v) = api_host {
                            inner["apiHost"] = v.clone();
                        }
                        let forms = [
                            inner.clone(),
                            json!({"kind": "CloudsmithAccessToken", "spec": inner.clone()}),
                            json!({"apiVersion": "generators.external-secrets.io/v1alpha1", "spec": inner.clone()}),
                            json!({"kind": "ClusterGenerator", "spec": {"kind": "CloudsmithAccessToken",
                                "generator": {"cloudsmithAccessTokenSpec": inner.clone()}}}),
                        ];
                        for manifest in forms {
                            let text = manifest.to_string();
                            let view = GeneratorSpec::of_json(&text).expect("the view finds the spec");
                            let parsed = parse_manifest(&text);
                            match &parsed {
                                Ok(spec) => {
                                    let account = view.service_account_ref.clone().unwrap_or_default();
                                    assert_eq!(
                                        (
                                            view.effective_api(),
                                            view.audiences(),
                                            view.org_slug.as_deref(),
                                            account.name.as_deref(),
                                            account.namespace.as_deref().filter(|n| !n.is_empty()),
                                        ),
                                        (
                                            spec.api.url(),
                                            spec.service_account.audiences.clone(),
                                            Some(spec.org_slug.as_str()),
                                            Some(spec.service_account.name.as_str()),
                                            spec.service_account.namespace.as_deref(),
                                        ),
                                        "{text}"
                                    );
                                    checked += 1;
                                }
                                // What the component refuses, the view cannot name an API for.
                                Err(e) => assert!(view.api_base().is_err(), "{text}: {e}"),
                            }
                            // Written where the view writes, read where the component reads.
                            let mut changed = manifest.clone();
                            assert!(set(&mut changed, Field::OrgSlug, Some(json!("other-org"))));
                            if let (Ok(_), Ok(spec)) = (&parsed, parse_manifest(&changed.to_string())) {
                                assert_eq!(spec.org_slug, "other-org", "{text}");
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 200, "only {checked} manifests parsed");
    }
}
