//! Who may ask: the caller's bearer token is checked with the TokenReview API, and a
//! caller asking for a namespace other than its own needs a SubjectAccessReview.
//!
//! # The permission
//!
//! A service account may always ask for its own namespace (the ExternalSecret's). Any
//! other request is allowed only when a SubjectAccessReview for the caller allows:
//!
//! | attribute   | value                              |
//! |-------------|------------------------------------|
//! | group       | `generators.external-secrets.io`   |
//! | resource    | `cloudsmithaccesstokens`           |
//! | subresource | `generate`                         |
//! | verb        | `create`                           |
//! | namespace   | the URL's namespace                |
//! | name        | the URL's generator name           |
//!
//! A subresource, as `serviceaccounts/token` is for tokens: granting `create` on
//! `cloudsmithaccesstokens/generate` lets a subject mint credentials without letting it
//! create or edit ESO's `CloudsmithAccessToken` objects, and the reverse.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;

/// The permission's API group.
pub const GROUP: &str = "generators.external-secrets.io";
/// The permission's resource.
pub const RESOURCE: &str = "cloudsmithaccesstokens";
/// The permission's subresource.
pub const SUBRESOURCE: &str = "generate";
/// The permission's verb.
pub const VERB: &str = "create";

/// An authenticated caller, as TokenReview described it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `system:serviceaccount:<ns>:<name>` for a service account.
    pub username: String,
    uid: Option<String>,
    groups: Vec<String>,
    extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

impl Caller {
    /// The namespace of a service account caller.
    pub fn namespace(&self) -> Option<&str> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty()).then_some(ns)
    }
}

/// Why a caller is turned away.
#[derive(Debug)]
pub enum Refusal {
    /// The token is not valid (401).
    Unauthenticated(String),
    /// The caller may not ask for this (403).
    Forbidden(String),
    /// The Kubernetes API could not answer (503).
    Unavailable(String),
}

/// The TokenReview and SubjectAccessReview client.
pub struct Access {
    client: Client,
    audiences: Vec<String>,
}

impl Access {
    /// Reviews with `client`; tokens must carry one of `audiences` (empty: the API
    /// server's own).
    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        Access { client, audiences }
    }

    /// Who `token` belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                token: Some(token.to_string()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview failed: {}", describe(&e))))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if status.authenticated != Some(true) || username.is_empty() {
            let audiences = if self.audiences.is_empty() {
                "the API server's audience".to_string()
            } else {
                self.audiences.join(", ")
            };
            return Err(Refusal::Unauthenticated(format!(
                "the bearer token was not authenticated by TokenReview (expected audience: {audiences})"
            )));
        }
        Ok(Caller {
            username,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra,
        })
    }

    /// Whether `caller` may run generator `name` for `namespace`.
    pub async fn authorize(&self, caller: &Caller, namespace: &str, name: &str) -> Result<(), Refusal> {
        if caller.namespace() == Some(namespace) {
            return Ok(());
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: caller.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    subresource: Some(SUBRESOURCE.into()),
                    verb: Some(VERB.into()),
                    namespace: Some(namespace.into()),
                    name: Some(name.into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unavailable(format!("SubjectAccessReview failed: {}", describe(&e))))?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        Err(Refusal::Forbidden(format!(
            "{} may not ask for namespace {namespace:?}: only its own namespace, unless allowed to \
             {VERB} {RESOURCE}/{SUBRESOURCE} (group {GROUP}) named {name:?} there",
            caller.username
        )))
    }
}

/// The part of a kube error a person needs.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} {}: {}", status.code, status.reason, status.message),
        other => other.to_string(),
    }
}
