//! `REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`, as `component push` takes it and as
//! `--component oci://…` names a component.

use std::fmt;

use cloudsmith_gen_core::authority::{Authority, AuthorityError};

/// The scheme that marks a `--component` value as a registry reference.
pub const SCHEME: &str = "oci://";

/// A text that is not a component reference, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]: {why}")]
pub struct BadReference {
    text: String,
    why: String,
}

/// A digest that is not `sha256:` and 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest {0:?} is not sha256:<64 hex digits>")]
pub struct BadDigest(pub String);

/// A component in a registry. The registry is always named: Docker's default of
/// `docker.io` for a bare `name/name` would send a credential plugin's bytes (and the
/// user's registry credentials) somewhere the user did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ComponentRef {
    /// Parses `REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]` (no scheme).
    pub fn parse(text: &str) -> Result<ComponentRef, BadReference> {
        let bad = |why: &str| BadReference {
            text: text.to_string(),
            why: why.to_string(),
        };
        if text.contains("://") {
            return Err(bad("no scheme here"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest).map_err(|e| bad(&e.to_string()))?)),
            None => (text, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry"))?;
        let authority: Authority = registry
            .parse()
            .map_err(|e: AuthorityError| bad(&format!("registry: {e}")))?;
        // Docker's rule for "is this a registry?" (a dot, a port, or localhost): anything
        // else would be a Docker Hub namespace, which we refuse to guess.
        if !(registry.contains('.') || registry.contains(':') || authority.host() == "localhost") {
            return Err(bad(&format!(
                "{registry:?} is not a registry host (name it in full, e.g. docker.io/{path})"
            )));
        }
        // A tag is after the last '/' (a registry port has its own ':').
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (path, None),
        };
        if repository.is_empty()
            || !repository.split('/').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            })
        {
            return Err(bad(&format!(
                "repository {repository:?}: lower-case letters, digits, '.', '_', '-' and '/' only"
            )));
        }
        if let Some(tag) = tag {
            // The distribution spec's tag grammar: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !ok {
                return Err(bad(&format!("tag {tag:?}")));
            }
        }
        Ok(ComponentRef {
            registry: registry.to_ascii_lowercase(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// Parses `oci://REGISTRY/REPOSITORY…`; `None` when `text` has another form.
    pub fn parse_uri(text: &str) -> Option<Result<ComponentRef, BadReference>> {
        text.strip_prefix(SCHEME).map(ComponentRef::parse)
    }

    /// The registry, `host[:port]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest `sha256:<hex>`, when pinned.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// This reference with `tag` (replacing any), without its digest.
    pub fn with_tag(&self, tag: &str) -> ComponentRef {
        ComponentRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// This reference pinned to `digest`, without its tag.
    pub fn pinned(&self, digest: &str) -> ComponentRef {
        ComponentRef {
            tag: None,
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The same reference as oci-client takes it: by digest when pinned (the tag then
    /// says nothing more), else by tag.
    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.digest, &self.tag) {
            (Some(digest), _) => oci_client::Reference::with_digest(registry, repository, digest.clone()),
            (None, tag) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for ComponentRef {
    /// `REGISTRY/REPOSITORY[:TAG][@DIGEST]`, without the scheme.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lower-case hex digits: the one algorithm every registry serves.
pub fn parse_digest(text: &str) -> Result<String, BadDigest> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or_else(|| BadDigest(text.to_string()))?;
    if hex.len() != 64
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(BadDigest(text.to_string()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_in_every_form() {
        let r = ComponentRef::parse("registry.acme.com/plugins/cloudsmith:1.0").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("registry.acme.com", "plugins/cloudsmith", Some("1.0"), None)
        );
        let r = ComponentRef::parse(&format!("127.0.0.1:5000/x@{D}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("127.0.0.1:5000", "x", None, Some(D))
        );
        let r = ComponentRef::parse(&format!("localhost/a/b:t@{D}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("t"), Some(D)));
        assert_eq!(r.to_string(), format!("localhost/a/b:t@{D}"));
        assert_eq!(
            ComponentRef::parse_uri(&format!("oci://docker.cloudsmith.io/acme/plugins/gen@{D}"))
                .unwrap()
                .unwrap()
                .repository(),
            "acme/plugins/gen"
        );
        assert!(ComponentRef::parse_uri("/path/to/file.wasm").is_none());
    }

    #[test]
    fn bad_references_are_named() {
        for (text, needle) in [
            ("plugins/cloudsmith:1.0", "is not a registry host"),
            ("registry.acme.com", "no repository"),
            ("registry.acme.com/Upper", "lower-case"),
            ("registry.acme.com/x:-bad", "tag"),
            ("registry.acme.com/x@sha256:abc", "64 hex"),
            ("registry.acme.com/x@md5:abc", "sha256"),
            ("https://registry.acme.com/x", "no scheme"),
            ("bad host/x", "registry"),
        ] {
            let err = ComponentRef::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
