//! Reading a `--manifest` file: YAML (one or many documents) to the one JSON object the
//! guest takes.
//!
//! ESO's documentation keeps the generator and the ExternalSecret that uses it in one
//! file, so a user points `--manifest` at that file. The guest validates one generator
//! resource; picking that resource out of the file is the CLI's job, done here before
//! the component is loaded so that a wrong file costs nothing.
//!
//! The rules:
//! - empty documents (`---` with nothing after it) are skipped;
//! - a file with one document hands it to the guest unchanged, so a bare spec and a
//!   wrong `kind` get the guest's field-named errors, as before multi-document support;
//! - otherwise the one *generator document* is used and the rest (ExternalSecret,
//!   Secret...) are ignored: a `CloudsmithAccessToken`, or a `ClusterGenerator` whose
//!   `spec.kind` is `CloudsmithAccessToken` (passed on unchanged: the guest reads its
//!   `spec.generator.cloudsmithAccessTokenSpec`);
//! - with more than one generator document, `--generator NAME` picks by `metadata.name`.

use std::path::Path;

use crate::secret::one_line;
use anyhow::{anyhow, bail, Context as _};
use serde_json::{Map, Value};

/// The generator kind the component implements.
const KIND: &str = "CloudsmithAccessToken";
/// ESO's cluster-scoped wrapper around any generator spec.
const CLUSTER_KIND: &str = "ClusterGenerator";
/// The API group of ESO generators (any version, as the guest accepts).
const API_GROUP: &str = "generators.external-secrets.io";

/// A manifest file is a generator and a few resources around it; a file with more
/// documents than this is not one, and parsing it all would only cost time.
pub const MAX_DOCUMENTS: usize = 100;

/// An error lists at most this many documents, so that it stays one readable line.
const MAX_LISTED: usize = 10;

/// A name or kind from the file is shown up to this many characters.
const MAX_SHOWN_CHARS: usize = 64;

/// A manifest is a few hundred bytes; refuse to buffer a runaway file or stdin.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Reads a manifest file (YAML or JSON, one document or several) and converts its
/// generator document (`generator`: `--generator NAME`) to the JSON the guest takes.
pub fn read_to_json(path: &Path, generator: Option<&str>) -> anyhow::Result<String> {
    let name = format!("manifest {}", path.display());
    bytes_to_json(&name, read_file(path)?, generator)
}

/// The bytes of a manifest file: a regular file of at most [`MAX_MANIFEST_BYTES`].
pub fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = format!("manifest {}", path.display());
    let meta = std::fs::metadata(path).with_context(|| name.clone())?;
    if !meta.is_file() {
        bail!("{name}: not a regular file");
    }
    let file = std::fs::File::open(path).with_context(|| name.clone())?;
    Ok(crate::read_bounded(file, MAX_MANIFEST_BYTES, &name)?)
}

/// [`read_to_json`] of bytes already read (`name` says where from, for errors).
pub fn bytes_to_json(name: &str, bytes: Vec<u8>, generator: Option<&str>) -> anyhow::Result<String> {
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("{name}: not UTF-8"))?;
    to_json(&text, generator).with_context(|| name.to_string())
}

/// Parses `text` (YAML, or JSON, which YAML includes) and returns the compact JSON of
/// the generator document to hand to the guest; `generator` is `--generator NAME`.
pub fn to_json(text: &str, generator: Option<&str>) -> anyhow::Result<String> {
    let documents = parse(text)?;
    Ok(select(documents, generator)?.to_string())
}

/// Every non-empty document of `text`, in order.
pub fn parse(text: &str) -> anyhow::Result<Vec<Value>> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_documents: MAX_DOCUMENTS },
        // The snippet quotes the input over several lines; the CLI's errors are one
        // line, and the message already says where (line and column).
        with_snippet: false,
        // YAML 1.2's booleans only, and `007` or `1_000` stay text, as serde_yaml
        // read them: a slug such as `yes` must reach the guest as the string it is.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    };
    let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
        if let serde_saphyr::Error::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Documents { .. },
            ..
        } = e
        {
            anyhow!("more than {MAX_DOCUMENTS} YAML documents")
        } else {
            // The user formatter: the developer one suggests parser options to the
            // reader, which a user of the CLI cannot set.
            let message = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
            anyhow!("invalid YAML: {}", one_line(&message, 1000))
        }
    })?;
    // serde-saphyr skips empty documents already; a document that is just `null` or `~`
    // is as empty and is skipped too.
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// Picks the document to hand to the guest (see the module's rules).
pub fn select(documents: Vec<Value>, generator: Option<&str>) -> anyhow::Result<Value> {
    if documents.is_empty() {
        bail!("empty");
    }
    if documents.len() > MAX_DOCUMENTS {
        bail!("more than {MAX_DOCUMENTS} YAML documents");
    }
    let count = documents.len();
    let mut resources = Vec::with_capacity(count);
    for (index, document) in documents.into_iter().enumerate() {
        match document {
            Value::Object(object) => resources.push(object),
            _ if count == 1 => bail!("not a mapping (expected a {KIND} resource)"),
            _ => bail!("document {} of {count} is not a mapping", index + 1),
        }
    }
    if count == 1 && generator.is_none() {
        return Ok(Value::Object(resources.remove(0)));
    }

    let (generators, others): (Vec<_>, Vec<_>) = resources.into_iter().partition(is_generator);
    let listed = |objects: &[Map<String, Value>]| list(objects.iter().map(describe));
    let mut chosen = match generator {
        Some(name) => {
            let (named, unnamed): (Vec<_>, Vec<_>) =
                generators.into_iter().partition(|g| name_of(g) == Some(name));
            if named.is_empty() {
                let present = if unnamed.is_empty() {
                    format!("there is no generator document; kinds found: {}", listed(&others))
                } else {
                    format!("generator documents: {}", listed(&unnamed))
                };
                bail!("no generator document named \"{}\" ({present})", shown(name));
            }
            named
        }
        None => {
            if generators.is_empty() {
                bail!(
                    "no generator document ({KIND}, or {CLUSTER_KIND} of kind {KIND}) among \
                     {count} documents; kinds found: {}",
                    listed(&others)
                );
            }
            generators
        }
    };
    if chosen.len() > 1 {
        let choose = match generator {
            None => "choose one with --generator NAME",
            // Two documents with the same name: only the file can be fixed.
            Some(_) => "names must be unique",
        };
        bail!(
            "{} generator documents ({}): {choose}",
            chosen.len(),
            listed(&chosen)
        );
    }
    Ok(Value::Object(chosen.remove(0)))
}

/// Every generator document of `documents` by `metadata.name`, for `serve`, whose
/// manifests hold many generators and whose URL names one. Documents of other kinds are
/// skipped; a generator without a name, or two with one name, is an error (the URL
/// could not pick it, or could pick either).
pub fn generators(documents: Vec<Value>) -> anyhow::Result<Vec<(String, Map<String, Value>)>> {
    let mut found: Vec<(String, Map<String, Value>)> = Vec::new();
    for document in documents {
        let Value::Object(resource) = document else {
            bail!("a document is not a mapping");
        };
        if !is_generator(&resource) {
            continue;
        }
        let Some(name) = name_of(&resource).map(str::to_string) else {
            bail!("generator document {} has no metadata.name", describe(&resource));
        };
        if found.iter().any(|(n, _)| *n == name) {
            bail!(
                "two generator documents are named \"{}\": names must be unique",
                shown(&name)
            );
        }
        found.push((name, resource));
    }
    Ok(found)
}

/// Whether `resource` is a generator document: ESO's `CloudsmithAccessToken`, or a
/// `ClusterGenerator` wrapping one. Another API group's kind of the same name is not.
fn is_generator(resource: &Map<String, Value>) -> bool {
    let in_group = match resource.get("apiVersion") {
        // The guest accepts a resource without apiVersion; so does the selection.
        None => true,
        Some(v) => v.as_str().and_then(|v| v.split_once('/')).map(|(group, _)| group) == Some(API_GROUP),
    };
    let kind = resource.get("kind").and_then(Value::as_str);
    let wrapped_kind = resource
        .get("spec")
        .and_then(|spec| spec.get("kind"))
        .and_then(Value::as_str);
    in_group && (kind == Some(KIND) || (kind == Some(CLUSTER_KIND) && wrapped_kind == Some(KIND)))
}

/// `metadata.name`, if it is a string.
fn name_of(resource: &Map<String, Value>) -> Option<&str> {
    resource.get("metadata")?.get("name")?.as_str()
}

/// `Kind/name` as kubectl prints it, for error messages.
fn describe(resource: &Map<String, Value>) -> String {
    let kind = resource
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("(no kind)");
    let name = name_of(resource).unwrap_or("(no name)");
    format!("{}/{}", shown(kind), shown(name))
}

/// Joins descriptions, at most [`MAX_LISTED`] of them.
fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        return "none".into();
    }
    let mut text = items[..items.len().min(MAX_LISTED)].join(", ");
    if items.len() > MAX_LISTED {
        text.push_str(&format!(" and {} more", items.len() - MAX_LISTED));
    }
    text
}

/// Text from the file as an error shows it: one line, bounded (a name must not end the
/// line or move the cursor).
fn shown(text: &str) -> String {
    one_line(text, MAX_SHOWN_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespaced generator named `name` for `org`.
    fn generator(name: &str, org: &str) -> String {
        format!(
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: CloudsmithAccessToken\n\
             metadata:\n  name: {name}\nspec:\n  orgSlug: {org}\n  serviceSlug: svc\n  \
             serviceAccountRef:\n    name: default\n"
        )
    }

    /// A ClusterGenerator named `name` wrapping a spec for `org`.
    fn cluster(name: &str, org: &str) -> String {
        format!(
            "apiVersion: generators.external-secrets.io/v1alpha1\nkind: ClusterGenerator\n\
             metadata:\n  name: {name}\nspec:\n  kind: CloudsmithAccessToken\n  generator:\n    \
             cloudsmithAccessTokenSpec:\n      orgSlug: {org}\n      serviceSlug: svc\n      \
             serviceAccountRef:\n        name: default\n"
        )
    }

    const EXTERNAL_SECRET: &str = "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\n\
        metadata:\n  name: creds\nspec:\n  dataFrom:\n    - sourceRef:\n        generatorRef:\n          \
        apiVersion: generators.external-secrets.io/v1alpha1\n          kind: CloudsmithAccessToken\n          \
        name: a\n";

    /// One row: the case, the file, `--generator`, and what must come of it.
    type Case<'a, Want> = (&'a str, String, Option<&'a str>, Want);

    fn docs(parts: &[&str]) -> String {
        parts.join("---\n")
    }

    /// Which document was chosen: its kind and org (wherever the form keeps it).
    fn chosen(json: &str) -> (String, String) {
        let v: Value = serde_json::from_str(json).unwrap();
        let org = v["spec"]["orgSlug"]
            .as_str()
            .or(v["spec"]["generator"]["cloudsmithAccessTokenSpec"]["orgSlug"].as_str())
            .or(v["orgSlug"].as_str())
            .unwrap_or("")
            .to_string();
        (v["kind"].as_str().unwrap_or("").to_string(), org)
    }

    #[test]
    fn selects_the_generator_document() {
        let a = generator("a", "org-a");
        let b = generator("b", "org-b");
        let c = cluster("c", "org-c");
        let ecr = "apiVersion: generators.external-secrets.io/v1alpha1\nkind: ECRAuthorizationToken\n\
                   metadata: {name: e}\nspec: {region: x}\n";
        let foreign =
            "apiVersion: example.com/v1\nkind: CloudsmithAccessToken\nmetadata: {name: f}\nspec: {}\n";
        let cluster_ecr = "apiVersion: generators.external-secrets.io/v1alpha1\nkind: ClusterGenerator\n\
                           metadata: {name: ce}\nspec: {kind: ECRAuthorizationToken}\n";
        let two = docs(&[&a, EXTERNAL_SECRET, &b]);
        // (case, file, --generator, (kind, org) of the document handed on)
        let table: Vec<Case<(&str, &str)>> = vec![
            ("single generator", a.clone(), None, (KIND, "org-a")),
            (
                "generator then ExternalSecret",
                docs(&[&a, EXTERNAL_SECRET]),
                None,
                (KIND, "org-a"),
            ),
            (
                "ExternalSecret then generator",
                docs(&[EXTERNAL_SECRET, &a]),
                None,
                (KIND, "org-a"),
            ),
            (
                "leading and empty documents",
                format!("---\n---\n{a}---\n\n---\n{EXTERNAL_SECRET}---\n"),
                None,
                (KIND, "org-a"),
            ),
            (
                "a null document",
                docs(&["~\n", &a, EXTERNAL_SECRET]),
                None,
                (KIND, "org-a"),
            ),
            (
                "ClusterGenerator",
                docs(&[EXTERNAL_SECRET, &c]),
                None,
                (CLUSTER_KIND, "org-c"),
            ),
            (
                "--generator picks the first",
                two.clone(),
                Some("a"),
                (KIND, "org-a"),
            ),
            ("--generator picks the second", two, Some("b"), (KIND, "org-b")),
            (
                "--generator picks a ClusterGenerator",
                docs(&[&a, &c]),
                Some("c"),
                (CLUSTER_KIND, "org-c"),
            ),
            (
                "--generator on a single document",
                a.clone(),
                Some("a"),
                (KIND, "org-a"),
            ),
            (
                "other generator kinds are not ours",
                docs(&[ecr, &a, cluster_ecr]),
                None,
                (KIND, "org-a"),
            ),
            (
                "another group's CloudsmithAccessToken",
                docs(&[foreign, &a]),
                None,
                (KIND, "org-a"),
            ),
            (
                "no apiVersion",
                docs(&[
                    "kind: CloudsmithAccessToken\nspec: {orgSlug: o}\n",
                    EXTERNAL_SECRET,
                ]),
                None,
                (KIND, "o"),
            ),
            // One document goes to the guest as it is, whatever it holds.
            (
                "bare spec",
                "orgSlug: bare\nserviceSlug: s\n".into(),
                None,
                ("", "bare"),
            ),
            (
                "bare spec as JSON",
                r#"{"orgSlug": "j", "serviceSlug": "s"}"#.into(),
                None,
                ("", "j"),
            ),
            (
                "one document of another kind",
                ecr.into(),
                None,
                ("ECRAuthorizationToken", ""),
            ),
        ];
        let mut wrong = Vec::new();
        for (case, text, name, (kind, org)) in &table {
            match to_json(text, *name) {
                Ok(json) if chosen(&json) == (kind.to_string(), org.to_string()) => {}
                other => wrong.push(format!("{case}: got {other:?}, want {kind}/{org}")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn refuses_with_a_one_line_error() {
        let a = generator("a", "org-a");
        let b = generator("b", "org-b");
        let c = cluster("c", "org-c");
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";
        let many = docs(&vec![secret; MAX_DOCUMENTS + 1]);
        let long_name = "n".repeat(500);
        // (case, file, --generator, needles the error must hold)
        let table: Vec<Case<Vec<&str>>> = vec![
            ("two generators", docs(&[&a, EXTERNAL_SECRET, &c]), None, vec![
                "2 generator documents (CloudsmithAccessToken/a, ClusterGenerator/c): choose one with --generator NAME",
            ]),
            ("unknown --generator", docs(&[&a, &b]), Some("zz"), vec![
                "no generator document named \"zz\" (generator documents: CloudsmithAccessToken/a, CloudsmithAccessToken/b)",
            ]),
            ("--generator names the ExternalSecret", docs(&[&a, EXTERNAL_SECRET]), Some("creds"), vec![
                "named \"creds\"", "CloudsmithAccessToken/a",
            ]),
            ("--generator with no generator", docs(&[EXTERNAL_SECRET, secret]), Some("a"), vec![
                "no generator document named \"a\" (there is no generator document; kinds found: ExternalSecret/creds, Secret/s)",
            ]),
            ("--generator on a bare spec", "orgSlug: o\n".into(), Some("a"), vec![
                "named \"a\"", "(no kind)/(no name)",
            ]),
            ("two generators with one name", docs(&[&a, &cluster("a", "x")]), Some("a"), vec![
                "2 generator documents (CloudsmithAccessToken/a, ClusterGenerator/a): names must be unique",
            ]),
            ("no generator", docs(&[EXTERNAL_SECRET, secret]), None, vec![
                "no generator document", "among 2 documents", "kinds found: ExternalSecret/creds, Secret/s",
            ]),
            ("empty file", "".into(), None, vec!["empty"]),
            ("only separators and comments", "---\n# nothing\n---\n".into(), None, vec!["empty"]),
            ("not a mapping", "- a\n- b\n".into(), None, vec!["not a mapping"]),
            ("a scalar among documents", docs(&[&a, "just text\n"]), None, vec!["document 2 of 2 is not a mapping"]),
            ("unclosed flow sequence", "spec: [1,\n".into(), None, vec!["invalid YAML"]),
            ("bad second document", docs(&[&a, "a: [\n"]), None, vec!["invalid YAML"]),
            ("tab indentation", "spec:\n\torgSlug: x\n".into(), None, vec!["invalid YAML"]),
            ("duplicate key", "kind: A\nkind: B\n".into(), None, vec!["invalid YAML: duplicate", "line 2"]),
            ("too many documents", many, None, vec!["more than 100 YAML documents"]),
            ("a long name is cut", docs(&[&a, &generator(&long_name, "o")]), None, vec!["2 generator documents", "…"]),
            ("a name with a newline", docs(&[&a, &generator("\"x\\ny\"", "o")]), None, vec!["CloudsmithAccessToken/x y"]),
        ];
        let mut wrong = Vec::new();
        for (case, text, name, needles) in &table {
            match to_json(text, *name) {
                Ok(json) => wrong.push(format!("{case}: accepted as {json}")),
                Err(e) => {
                    let message = format!("{e:#}");
                    if message.contains('\n') || message.len() > 1200 {
                        wrong.push(format!("{case}: not one short line: {message}"));
                    }
                    for needle in needles {
                        if !message.contains(needle) {
                            wrong.push(format!("{case}: {needle:?} not in {message:?}"));
                        }
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn scalars_read_as_serde_yaml_read_them() {
        // (YAML value, the JSON the guest sees: what serde_yaml 0.9.34 gave)
        let table = [
            ("yes", r#""yes""#),
            ("on", r#""on""#),
            ("true", "true"),
            ("007", r#""007""#),
            ("1_000", r#""1_000""#),
            ("42", "42"),
            ("'42'", r#""42""#),
            ("~", "null"),
            ("0x1F", "31"),
            ("0o17", "15"),
            ("1e3", "1000.0"),
            (".5", "0.5"),
        ];
        let mut wrong = Vec::new();
        for (yaml, json) in table {
            match to_json(&format!("v: {yaml}\n"), None) {
                Ok(got) if got == format!("{{\"v\":{json}}}") => {}
                other => wrong.push(format!("{yaml}: got {other:?}, want {json}")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
