//! `generate` and `info`: ESO's outputs for one manifest, printed as JSON, a Docker
//! config or a ready-to-apply Secret; and the generator's own description.

use cloudsmith_gen::{output, Credentials, NamespacePolicy};

use super::Reply;
use crate::failure::Failure;
use crate::mint::{Mint, MintRequest, TokenChoice};

/// How to print the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ESO's outputs: `{"auth": "...", "expiry": "..."}`.
    Json,
    /// A `kubernetes.io/dockerconfigjson` Secret manifest for `kubectl apply -f -`.
    Secret,
    /// The Docker config file: `{"auths": {"<registry>": {"auth": "..."}}}`.
    Dockerconfigjson,
}

/// The output: its format, and the Secret name and registry the Secret and Docker
/// config name.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// The format.
    pub format: Format,
    /// The Secret's `metadata.name` (with [`Format::Secret`]).
    pub secret_name: String,
    /// The registry key (with [`Format::Secret`] and [`Format::Dockerconfigjson`]).
    pub registry: String,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            format: Format::Json,
            secret_name: output::DEFAULT_SECRET_NAME.into(),
            registry: output::DEFAULT_REGISTRY.into(),
        }
    }
}

/// `generate`'s configuration besides the manifest.
#[derive(Clone)]
pub struct GenerateConfig {
    /// The target namespace (the ExternalSecret's).
    pub namespace: String,
    /// Where the service account token comes from.
    pub tokens: TokenChoice,
    /// Whether a `serviceAccountRef.namespace` other than the target is honoured.
    pub namespaces: NamespacePolicy,
    /// How to print the result.
    pub output: OutputConfig,
}

/// What `generate` warns of, after minting for `manifest` (the generator document as
/// JSON), in one line: an `apiHost` that ESO would never see
/// ([`cloudsmith_gen_core::spec::GeneratorSpec::api_host_eso_drops`]), so that a manifest that
/// works here is not taken to work in ESO.
pub fn warning(manifest: &str) -> Option<String> {
    let dropped = cloudsmith_gen_core::spec::GeneratorSpec::of_json(manifest)?.api_host_eso_drops()?;
    Some(format!("{}; {}", dropped.problem(), dropped.fix()))
}

/// Mints credentials for `manifest` (the generator document as JSON) and renders them.
pub async fn handle(manifest: String, mint: &impl Mint, config: &GenerateConfig) -> Result<Reply, Failure> {
    let minted = mint
        .mint(MintRequest {
            manifest,
            namespace: config.namespace.clone(),
            tokens: config.tokens.clone(),
            namespaces: config.namespaces,
            deadline: None,
        })
        .await?;
    Ok(Reply::ok(render(
        &minted.credentials,
        &config.output,
        &config.namespace,
    )))
}

/// The credentials in `output`'s format.
pub fn render(credentials: &Credentials, output: &OutputConfig, namespace: &str) -> String {
    match output.format {
        Format::Json => output::eso_json(credentials),
        Format::Dockerconfigjson => output::docker_config_json(credentials, &output.registry),
        Format::Secret => {
            output::secret_manifest(credentials, &output.secret_name, namespace, &output.registry)
        }
    }
}

/// The generator's description (`info`), as pretty JSON.
pub async fn info(mint: &impl Mint) -> Result<Reply, Failure> {
    let info = mint.info().await?;
    let json = serde_json::to_string_pretty(&info).map_err(|e| Failure::Other(e.into()))?;
    Ok(Reply::ok(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::fake::FakeMint;

    #[tokio::test]
    async fn every_format_renders_the_minted_credentials() {
        let mint = FakeMint::new("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2ln", 600);
        let mut config = GenerateConfig {
            namespace: "apps".into(),
            tokens: TokenChoice::Env("TOKEN".into()),
            namespaces: NamespacePolicy::TargetOnly,
            output: OutputConfig::default(),
        };
        let auth = "dG9rZW46ZXlKaGJHY2lPaUpJVXpJMU5pSjkuZXlKbGVIQWlPakUzTURBd01EQXdNREI5LmMybG4=";
        let reply = handle("{}".into(), &mint, &config).await.unwrap();
        assert_eq!(
            reply,
            Reply::ok(format!(r#"{{"auth":"{auth}","expiry":"1700000000"}}"#))
        );
        config.output.format = Format::Dockerconfigjson;
        config.output.registry = "registry.acme.com".into();
        let reply = handle("{}".into(), &mint, &config).await.unwrap();
        assert_eq!(
            reply.stdout,
            format!(r#"{{"auths":{{"registry.acme.com":{{"auth":"{auth}"}}}}}}"#)
        );
        config.output.format = Format::Secret;
        let reply = handle("{}".into(), &mint, &config).await.unwrap();
        assert!(reply.stdout.contains(r#""namespace":"apps""#), "{}", reply.stdout);
        let seen = mint.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            (seen[0].1.as_str(), seen[0].2.as_str()),
            ("apps", "environment variable TOKEN")
        );
    }

    #[tokio::test]
    async fn info_is_the_generators_own_description() {
        let reply = info(&FakeMint::new("t", 1)).await.unwrap();
        let json: serde_json::Value = serde_json::from_str(&reply.stdout).unwrap();
        assert_eq!(json["kind"], "CloudsmithAccessToken");
        assert_eq!(json["outputKeys"], serde_json::json!(["auth", "expiry"]));
    }
}
