//! The generator: the component compiled once and pre-linked once ([`Generator::new`]),
//! then a fresh [`wasmtime::Store`] per call, so calls are isolated from each other and
//! run concurrently from many tokio tasks. The host side of each call (its store state
//! and imports) is `host.rs`; the outbound policy `policy.rs`; the sandbox `sandbox.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi_http::WasiHttpCtx;

use crate::error::{Error, GenerateError, HostError, PresentedToken, UpstreamStatus};
use crate::host::{CallTarget, HostState, TokenBroker};
use crate::policy::{Journal, OutboundPolicy, PolicyHooks};
use crate::sandbox::{self, wasm_err, Budget, Capture, EngineOptions, Limiter, Limits, WasiGrants};
use crate::secret::{one_line, redact, Credentials, Secret};
use crate::token_source::{NamespacePolicy, TokenSource};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "secretgen:generator/cloudsmith-access-token",
        imports: { "secretgen:generator/token-source": async },
        exports: { default: async },
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
        require_store_data_send: true,
    });
}

use bindings::exports::secretgen::generator::generator as wit;

/// Longest guest-supplied message kept in an error.
const MAX_MESSAGE_CHARS: usize = 400;

/// Everything about a generator that is not the component or the token source.
#[derive(Debug, Clone)]
pub struct GeneratorOptions {
    /// Which outbound requests the guest may make.
    pub policy: OutboundPolicy,
    /// Memory, deadline and output capture limits per call.
    pub limits: Limits,
    /// Read-only directories and variables granted to the guest (none by default).
    pub wasi: WasiGrants,
    /// Whether a `serviceAccountRef.namespace` other than the target is honoured
    /// (refused by default; see [`crate::token_source`]).
    pub namespaces: NamespacePolicy,
    /// How many calls may run at once; further calls wait. Ignored on a pooled engine
    /// from [`sandbox::engine`]: there every generator of the engine shares the pool's
    /// [`EngineOptions::max_concurrent_calls`] slots.
    pub max_concurrent_calls: usize,
}

impl Default for GeneratorOptions {
    fn default() -> Self {
        GeneratorOptions {
            policy: OutboundPolicy::default(),
            limits: Limits::default(),
            wasi: WasiGrants::default(),
            namespaces: NamespacePolicy::default(),
            max_concurrent_calls: EngineOptions::default().max_concurrent_calls as usize,
        }
    }
}

/// One call's token source and namespace rule, in place of the generator's: so one
/// generator (one pre-linked component, one pool of slots) serves calls whose tokens
/// come from different places, as a long-lived host's callers do.
#[derive(Clone)]
pub struct CallTokens {
    /// Where the call's OIDC token comes from.
    pub source: Arc<dyn TokenSource>,
    /// Whether a `serviceAccountRef.namespace` other than the target is honoured.
    pub namespaces: NamespacePolicy,
}

impl std::fmt::Debug for CallTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTokens")
            .field("source", &self.source.describe())
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

/// What the generator says about itself (the WIT `generator-info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorInfo {
    /// The generator kind: `CloudsmithAccessToken`.
    pub kind: String,
    /// The generator resource's API version.
    pub api_version: String,
    /// The keys `generate` returns.
    pub output_keys: Vec<String>,
    /// The component's version.
    pub version: String,
}

/// What the host observed during one call, for diagnostics (`-v`). Holds no secret:
/// guest output is scrubbed of the tokens the host handed out or received, and of
/// anything shaped like a JWT.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    /// Time to instantiate the component.
    pub instantiate: Duration,
    /// Time in the guest call.
    pub call: Duration,
    /// Outbound requests and refusals.
    pub journal: Journal,
    /// One line per token request.
    pub token_requests: Vec<String>,
    /// The guest's stdout (bounded, scrubbed).
    pub guest_stdout: String,
    /// The guest's stderr (bounded, scrubbed).
    pub guest_stderr: String,
}

/// A call's result together with its [`CallReport`].
#[derive(Debug)]
pub struct Traced<T> {
    /// The call's result.
    pub result: Result<T, Error>,
    /// What the host observed.
    pub report: CallReport,
}

/// A loaded, pre-linked generator. Clone it freely: clones share the compiled component.
#[derive(Clone)]
pub struct Generator {
    inner: Arc<Inner>,
}

struct Inner {
    pre: bindings::CloudsmithAccessTokenPre<HostState>,
    token_source: Arc<dyn TokenSource>,
    policy: Arc<OutboundPolicy>,
    tls: Arc<rustls::ClientConfig>,
    options: GeneratorOptions,
    /// Engine-wide for pooled engines (see `sandbox::call_slots`), else this generator's own.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("token_source", &self.inner.token_source.describe())
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Generator {
    /// Links `component` against this host (WASI, `wasi:http`, `token-source`) once.
    ///
    /// The component may import `secretgen:generator/token-source` or have it satisfied
    /// inside (a composed component); both link. `engine` must come from
    /// [`sandbox::engine`] (async support and epoch interruption are required).
    pub fn new(
        engine: &Engine,
        component: &Component,
        token_source: Arc<dyn TokenSource>,
        options: GeneratorOptions,
    ) -> anyhow::Result<Self> {
        let mut linker = Linker::<HostState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm_err)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(wasm_err)?;
        bindings::secretgen::generator::token_source::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(wasm_err)?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(wasm_err)
            .context("linking the component")?;
        let pre = bindings::CloudsmithAccessTokenPre::new(pre)
            .map_err(wasm_err)
            .context("the component does not export secretgen:generator/generator")?;
        let tls = options.policy.tls_config()?;
        Ok(Generator {
            inner: Arc::new(Inner {
                pre,
                token_source,
                policy: Arc::new(options.policy.clone()),
                tls,
                permits: sandbox::call_slots(engine)
                    .unwrap_or_else(|| Arc::new(Semaphore::new(options.max_concurrent_calls.max(1)))),
                options,
            }),
        })
    }

    /// The options this generator was built with.
    pub fn options(&self) -> &GeneratorOptions {
        &self.inner.options
    }

    /// The token source's description (for logs).
    pub fn token_source(&self) -> String {
        self.inner.token_source.describe()
    }

    /// Runs the generator: `manifest` is the generator resource (or its spec) as JSON,
    /// `namespace` the target namespace.
    pub async fn generate(&self, manifest: &str, namespace: &str) -> Result<Credentials, Error> {
        self.generate_traced(manifest, namespace).await.result
    }

    /// [`Generator::generate`], also returning what the host observed.
    pub async fn generate_traced(&self, manifest: &str, namespace: &str) -> Traced<Credentials> {
        self.generate_traced_with(manifest, namespace, None).await
    }

    /// [`Generator::generate_traced`] with this call's own token source and namespace
    /// rule in place of the generator's (`None`: the generator's).
    pub async fn generate_traced_with(
        &self,
        manifest: &str,
        namespace: &str,
        tokens: Option<&CallTokens>,
    ) -> Traced<Credentials> {
        let mut call = match self
            .start(Some(CallTarget::new(manifest, namespace)), tokens)
            .await
        {
            Ok(call) => call,
            Err(e) => return failed(e),
        };
        let result = match call.instantiate().await {
            Ok(instance) => {
                let started = Instant::now();
                let generator = instance.secretgen_generator_generator();
                let calling = generator.call_generate(&mut call.store, manifest, namespace);
                // The epoch deadline stops a guest that computes forever; this timeout
                // stops one waiting forever in a host call (network, token source, sleep).
                let called = tokio::time::timeout_at(call.deadline_at, calling).await;
                call.finish(started, called)
            }
            Err(e) => Err(e),
        };
        let result = match result {
            Ok(Ok(outputs)) => {
                Credentials::from_outputs(outputs).map_err(|e| HostError::InvalidOutput(e.to_string()).into())
            }
            // The guest can only say "token source"; the host knows it was a timeout.
            Ok(Err(wit::GenerateError::TokenSource(_))) if call.store.data().tokens.unavailable.is_some() => {
                let why = call.store.data().tokens.unavailable.clone().unwrap_or_default();
                Err(HostError::TokenSourceUnavailable(why).into())
            }
            Ok(Err(e)) => Err(call.guest_error(e).into()),
            Err(e) => Err(e),
        };
        let mut extra = Vec::new();
        if let Ok(credentials) = &result {
            extra = secrets_in(credentials);
        }
        Traced {
            result,
            report: call.report(&extra),
        }
    }

    /// Calls the generator's `info`.
    pub async fn info(&self) -> Result<GeneratorInfo, Error> {
        let mut call = self.start(None, None).await?;
        let instance = call.instantiate().await?;
        let started = Instant::now();
        let calling = instance
            .secretgen_generator_generator()
            .call_info(&mut call.store);
        let called = tokio::time::timeout_at(call.deadline_at, calling).await;
        let info = call.finish(started, called)?;
        Ok(GeneratorInfo {
            kind: info.kind,
            api_version: info.api_version,
            output_keys: info.output_keys,
            version: info.version,
        })
    }

    /// Prepares a fresh store for one call.
    async fn start(
        &self,
        target: Option<CallTarget>,
        tokens: Option<&CallTokens>,
    ) -> Result<Call<'_>, Error> {
        let inner = &*self.inner;
        // The semaphore is never closed, so acquiring only waits.
        let permit = inner.permits.acquire().await.ok();
        let limits = &inner.options.limits;
        let capture = Capture::new(limits.output_capture_bytes);
        let wasi = sandbox::wasi_ctx(&inner.options.wasi, &capture)
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        let journal = Arc::new(Mutex::new(Journal::default()));
        // One budget for everything the call holds (see `sandbox::Budget`): the limiter
        // counts linear memories and tables, the resource table's capacity is reserved
        // within it, and what one host call may copy in bounds what one entry holds.
        let budget = Budget::new(limits.memory_bytes);
        let mut table = ResourceTable::new();
        table.set_max_capacity(budget.resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(sandbox::FIELD_BYTES);
        let state = HostState {
            wasi,
            http,
            table,
            hooks: PolicyHooks::new(inner.policy.clone(), inner.tls.clone(), journal.clone()),
            limiter: Limiter::new(budget),
            tokens: match tokens {
                Some(t) => TokenBroker::new(t.source.clone(), t.namespaces, target),
                None => TokenBroker::new(inner.token_source.clone(), inner.options.namespaces, target),
            },
            journal,
            deadline: None,
        };
        let mut store = Store::new(inner.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(sandbox::HOST_CALL_BYTES);
        store.set_max_component_handles(sandbox::COMPONENT_HANDLES);
        // Every epoch tick, a guest that computes gives its tokio worker back (so a few
        // spinning guests cannot starve the server's other tasks, /healthz included),
        // and past its deadline it traps. The deadline is set when the call starts.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            let deadline = store.data().deadline;
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            Ok(wasmtime::UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        Ok(Call {
            generator: inner,
            store,
            capture,
            deadline: limits.deadline,
            deadline_at: tokio::time::Instant::now() + limits.deadline,
            report: CallReport::default(),
            _permit: permit,
        })
    }
}

fn failed<T>(e: Error) -> Traced<T> {
    Traced {
        result: Err(e),
        report: CallReport::default(),
    }
}

/// The secrets inside successful credentials: the `auth` value and the access token it
/// encodes, so guest output that echoes them is scrubbed too.
fn secrets_in(credentials: &Credentials) -> Vec<String> {
    let auth = credentials.auth().expose().to_string();
    match credentials.access_token() {
        Some(token) => vec![
            auth,
            format!("token:{}", token.expose()),
            token.expose().to_string(),
        ],
        None => vec![auth],
    }
}

/// One call in flight: its store, captured output and report.
struct Call<'g> {
    generator: &'g Inner,
    store: Store<HostState>,
    capture: Capture,
    deadline: Duration,
    deadline_at: tokio::time::Instant,
    report: CallReport,
    _permit: Option<tokio::sync::SemaphorePermit<'g>>,
}

impl Call<'_> {
    /// Instantiates the component; the call's deadline starts now.
    async fn instantiate(&mut self) -> Result<bindings::CloudsmithAccessToken, Error> {
        self.deadline_at = tokio::time::Instant::now() + self.deadline;
        self.store.data_mut().deadline = Some(self.deadline_at.into_std());
        let started = Instant::now();
        let instantiating = self.generator.pre.instantiate_async(&mut self.store);
        let instantiated = tokio::time::timeout_at(self.deadline_at, instantiating).await;
        self.report.instantiate = started.elapsed();
        match instantiated {
            Err(_) => Err(self.deadline_exceeded()),
            Ok(Err(e)) => Err(self.classify(e, true)),
            Ok(Ok(instance)) => Ok(instance),
        }
    }

    /// Names the outcome of a guest call started at `started`.
    fn finish<T>(
        &mut self,
        started: Instant,
        called: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Error> {
        self.report.call = started.elapsed();
        match called {
            Err(_) => Err(self.deadline_exceeded()),
            Ok(Err(e)) => Err(self.classify(e, false)),
            Ok(Ok(value)) => Ok(value),
        }
    }

    fn deadline_exceeded(&self) -> Error {
        HostError::DeadlineExceeded {
            deadline: self.deadline,
        }
        .into()
    }

    /// Names a wasmtime error: memory budget, sandbox limit, deadline, trap or
    /// instantiation failure.
    fn classify(&self, e: wasmtime::Error, instantiating: bool) -> Error {
        let text = format!("{e:#}");
        let hit = match &self.store.data().limiter.hit {
            Some(hit) => Some(hit.clone()),
            None if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => return self.deadline_exceeded(),
            None => sandbox::limit_hit(&e, &text),
        };
        match hit {
            Some(sandbox::LimitHit::Budget) => {
                return HostError::MemoryLimitExceeded {
                    limit_bytes: self.generator.options.limits.memory_bytes,
                }
                .into()
            }
            Some(sandbox::LimitHit::Count(what)) => return HostError::SandboxLimitExceeded(what).into(),
            None => {}
        }
        let message = self.clean(&text);
        if instantiating {
            HostError::Instantiate(message).into()
        } else {
            HostError::Trap(message).into()
        }
    }

    /// Makes guest-supplied text one line, bounded, and free of known secrets.
    fn clean(&self, text: &str) -> String {
        let handed_out: Vec<&str> = self
            .store
            .data()
            .tokens
            .handed_out
            .iter()
            .map(Secret::expose)
            .collect();
        one_line(&redact(text, &handed_out), MAX_MESSAGE_CHARS)
    }

    /// Converts the guest's error, adding what the host knows about policy refusals and
    /// transport failures.
    fn guest_error(&self, e: wit::GenerateError) -> GenerateError {
        let journal = self
            .store
            .data()
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let status = |s: wit::UpstreamStatus| UpstreamStatus {
            status: s.status,
            detail: self.clean(&s.detail),
            token: None,
        };
        match e {
            wit::GenerateError::InvalidSpec(m) => GenerateError::InvalidSpec(self.clean(&m)),
            wit::GenerateError::TokenSource(m) => GenerateError::TokenSource(self.clean(&m)),
            wit::GenerateError::PolicyDenied(m) => GenerateError::PolicyDenied {
                message: self.clean(&m),
                host_reason: journal.denials.last().map(ToString::to_string),
            },
            wit::GenerateError::Unauthorized(s) => {
                let handed_out = self.store.data().tokens.handed_out.last();
                GenerateError::Unauthorized(UpstreamStatus {
                    token: Some(PresentedToken::of(handed_out.map(Secret::expose))),
                    ..status(s)
                })
            }
            wit::GenerateError::Rejected(s) => GenerateError::Rejected(status(s)),
            wit::GenerateError::RateLimited(r) => GenerateError::RateLimited {
                retry_after_seconds: r.retry_after_seconds,
                detail: self.clean(&r.detail),
            },
            wit::GenerateError::Upstream(u) => GenerateError::Upstream {
                host_note: match u.status {
                    None => journal.last_transport_failure().map(|s| self.clean(s)),
                    Some(_) => None,
                },
                status: u.status,
                detail: self.clean(&u.detail),
                attempts: u.attempts,
            },
            wit::GenerateError::InvalidToken(m) => GenerateError::InvalidToken(self.clean(&m)),
        }
    }

    /// Finishes the report: journal, token log and scrubbed guest output.
    fn report(mut self, extra_secrets: &[String]) -> CallReport {
        let state = self.store.data();
        let mut secrets: Vec<&str> = state.tokens.handed_out.iter().map(Secret::expose).collect();
        secrets.extend(extra_secrets.iter().map(String::as_str));
        self.report.journal = state.journal.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.report.token_requests = state.tokens.log.clone();
        self.report.guest_stdout = redact(&self.capture.stdout.contents(), &secrets);
        self.report.guest_stderr = redact(&self.capture.stderr.contents(), &secrets);
        self.report
    }
}
