//! The per-call store state and the host side of the component's imports: WASI (empty
//! sandbox), `wasi:http` (through the outbound policy) and `token-source` (through the
//! embedder's [`TokenSource`]).

use std::sync::{Arc, Mutex};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::generator::bindings::secretgen::generator::token_source;
use crate::policy::{Journal, PolicyHooks};
use crate::sandbox::Limiter;
use crate::secret::Secret;
use crate::token_source::{NamespacePolicy, TokenRequest, TokenSource};

/// The generator asks once per call; a guest asking for more is misbehaving, and
/// refusing keeps it from hammering the Kubernetes API or hoarding tokens.
const MAX_TOKEN_REQUESTS_PER_CALL: u32 = 2;

/// What the host itself knows of a `generate` call, to check the guest's token
/// requests against: the guest is not trusted to ask only for what the manifest names.
pub(crate) struct CallTarget {
    /// The target namespace the host was given.
    pub(crate) namespace: String,
    /// `spec.serviceAccountRef.name` as the host reads the manifest, if it names one.
    pub(crate) account: Option<String>,
}

impl CallTarget {
    pub(crate) fn new(manifest: &str, namespace: &str) -> Self {
        CallTarget {
            namespace: namespace.to_string(),
            account: manifest_account(manifest),
        }
    }
}

/// `spec.serviceAccountRef.name` of a manifest (the whole resource or its spec), read
/// as the generator reads it (for duplicate keys, the last wins).
///
/// ESO's `ClusterGenerator` keeps the spec one level down, under
/// `spec.generator.cloudsmithAccessTokenSpec`; without reading it there the broker
/// would refuse every token request of a generator that accepts that form.
fn manifest_account(manifest: &str) -> Option<String> {
    crate::spec::GeneratorSpec::of_json(manifest)?
        .service_account_ref?
        .name
}

/// Everything one call's store holds.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) hooks: PolicyHooks,
    pub(crate) limiter: Limiter,
    pub(crate) tokens: TokenBroker,
    pub(crate) journal: Arc<Mutex<Journal>>,
    /// When the call must end (set as it starts): the epoch callback traps past it.
    pub(crate) deadline: Option<std::time::Instant>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Answers the guest's `token-source` calls for one call.
pub(crate) struct TokenBroker {
    pub(crate) source: Arc<dyn TokenSource>,
    pub(crate) namespaces: NamespacePolicy,
    /// The call as the *host* was given it; `None` for `info`.
    pub(crate) target: Option<CallTarget>,
    /// Tokens handed to the guest, to scrub from anything it says.
    pub(crate) handed_out: Vec<Secret>,
    /// The last token request's failure, when the source did not answer in time.
    pub(crate) unavailable: Option<String>,
    /// One line per request, for diagnostics (no secrets).
    pub(crate) log: Vec<String>,
    requests: u32,
}

impl TokenBroker {
    pub(crate) fn new(
        source: Arc<dyn TokenSource>,
        namespaces: NamespacePolicy,
        target: Option<CallTarget>,
    ) -> Self {
        TokenBroker {
            source,
            namespaces,
            target,
            handed_out: Vec::new(),
            unavailable: None,
            log: Vec::new(),
            requests: 0,
        }
    }

    /// Checks the guest's request against the host's view of the call.
    ///
    /// The guest passes the target namespace back to us, but it is not trusted to: the
    /// host compares it with the namespace it was itself given.
    fn request(
        &mut self,
        account: token_source::ServiceAccountRef,
        guest_namespace: &str,
    ) -> Result<TokenRequest, String> {
        self.requests += 1;
        if self.requests > MAX_TOKEN_REQUESTS_PER_CALL {
            return Err(format!(
                "more than {MAX_TOKEN_REQUESTS_PER_CALL} token requests in one call refused"
            ));
        }
        let Some(target) = &self.target else {
            return Err("no token is available outside generate".into());
        };
        if guest_namespace != target.namespace {
            return Err(format!(
                "the generator asked for a token in namespace {guest_namespace:?} but the target namespace is {:?}",
                target.namespace
            ));
        }
        match &target.account {
            Some(name) if *name == account.name => {}
            Some(name) => {
                return Err(format!(
                "the generator asked for a token for service account {:?} but the manifest names {name:?}",
                account.name
            ))
            }
            None => return Err("the manifest names no spec.serviceAccountRef.name".into()),
        }
        // A token with no audience is the API server's own: a credential for the cluster,
        // not for Cloudsmith. The generator always names one (the spec's, or Cloudsmith's
        // origin); a guest that names none is refused before any token is minted.
        if account.audiences.iter().all(|a| a.trim().is_empty()) {
            return Err(
                "the generator asked for a token with no audience (an API server token): refused".into(),
            );
        }
        let namespace = self
            .namespaces
            .resolve(&account.name, account.namespace.as_deref(), &target.namespace)
            .map_err(|e| e.to_string())?;
        Ok(TokenRequest {
            service_account: account.name,
            namespace,
            audiences: account.audiences,
        })
    }
}

impl token_source::Host for HostState {
    async fn service_account_token(
        &mut self,
        account: token_source::ServiceAccountRef,
        namespace: String,
    ) -> Result<String, String> {
        let broker = &mut self.tokens;
        let request = match broker.request(account, &namespace) {
            Ok(request) => request,
            Err(why) => {
                broker.log.push(format!("token request refused: {why}"));
                return Err(why);
            }
        };
        let source = broker.source.clone();
        match source.token(&request).await {
            Ok(token) => {
                broker.log.push(format!(
                    "token for {request} (audiences {}) from {}",
                    request.audiences.join(", "),
                    source.describe()
                ));
                let exposed = token.expose().to_string();
                broker.handed_out.push(token);
                Ok(exposed)
            }
            Err(e) => {
                broker.log.push(format!("token for {request} failed: {e}"));
                if e.is_unavailable() {
                    broker.unavailable = Some(e.to_string());
                }
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::manifest_account;

    #[test]
    fn reads_the_service_account_of_every_manifest_form() {
        // (case, manifest, the account the broker allows)
        let table = [
            (
                "resource",
                r#"{"kind": "CloudsmithAccessToken", "spec": {"serviceAccountRef": {"name": "a"}}}"#,
                Some("a"),
            ),
            ("bare spec", r#"{"serviceAccountRef": {"name": "b"}}"#, Some("b")),
            (
                "ClusterGenerator",
                r#"{"kind": "ClusterGenerator", "spec": {"kind": "CloudsmithAccessToken",
                    "generator": {"cloudsmithAccessTokenSpec": {"serviceAccountRef": {"name": "c"}}}}}"#,
                Some("c"),
            ),
            (
                "ClusterGenerator without the wrapped spec",
                r#"{"kind": "ClusterGenerator", "spec": {"serviceAccountRef": {"name": "d"}}}"#,
                None,
            ),
            ("no name", r#"{"spec": {"serviceAccountRef": {}}}"#, None),
            (
                "name not a string",
                r#"{"spec": {"serviceAccountRef": {"name": 1}}}"#,
                None,
            ),
            ("not JSON", "spec: {}", None),
        ];
        let wrong: Vec<String> = table
            .iter()
            .filter(|(_, manifest, want)| manifest_account(manifest).as_deref() != *want)
            .map(|(case, manifest, want)| {
                format!("{case}: got {:?}, want {want:?}", manifest_account(manifest))
            })
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
