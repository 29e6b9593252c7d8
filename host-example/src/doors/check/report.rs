//! `check`'s report: the steps, how each ended, the documentation's troubleshooting
//! item and the fix; its text and JSON renderings and the exit rule.

use serde::Serialize;

/// The documentation's troubleshooting items, by their titles.
pub mod item {
    /// The OIDC service does not trust the cluster's issuer (or subject).
    pub const TOKEN_EXCHANGE_FAILS: &str = "Token Exchange Fails";
    /// The service account token lacks the audience Cloudsmith expects.
    pub const INVALID_AUDIENCE: &str = "Invalid Audience";
    /// The Cloudsmith API host is out of reach.
    pub const NETWORK_ISSUES: &str = "Network Issues";
    /// Images or Docker configuration name another registry than the credentials'.
    pub const REGISTRY_DOMAIN_ISSUES: &str = "Registry Domain Issues";
    /// The OIDC service lacks permissions on the repositories.
    pub const PERMISSIONS: &str = "Permissions";
}

/// The steps, in the order `generate` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    /// The generator document and its spec.
    Manifest,
    /// The service account token.
    TokenSource,
    /// Whether the API host may be reached.
    OutboundPolicy,
    /// Cloudsmith's OIDC exchange.
    Exchange,
    /// The registry the credentials are for.
    Registry,
}

impl StepName {
    /// The step as the text report names it.
    pub fn label(self) -> &'static str {
        match self {
            StepName::Manifest => "manifest",
            StepName::TokenSource => "token source",
            StepName::OutboundPolicy => "outbound policy",
            StepName::Exchange => "exchange",
            StepName::Registry => "registry",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to fix.
    Pass,
    /// It works now but will not for long (a token about to expire).
    Warn,
    /// `generate` would fail here.
    Fail,
    /// Not run: asked not to (`--no-exchange`) or an earlier step failed.
    Skipped,
}

impl Status {
    /// The text report's mark.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pass => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        }
    }
}

/// One fact a step found (`iss`, `https://...`). Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    /// What it is.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Which step.
    pub step: StepName,
    /// How it ended.
    pub status: Status,
    /// What it found, in order.
    pub facts: Vec<Fact>,
    /// What is wrong (a failure or warning), one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The documentation's troubleshooting item this is, when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<&'static str>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Step {
    pub(super) fn new(step: StepName, status: Status, facts: Vec<Fact>) -> Step {
        Step {
            step,
            status,
            facts,
            problem: None,
            item: None,
            fix: None,
        }
    }

    pub(super) fn failed(
        step: StepName,
        facts: Vec<Fact>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Step {
        Step {
            problem: Some(problem.into()),
            fix: Some(fix.into()),
            ..Step::new(step, Status::Fail, facts)
        }
    }

    pub(super) fn item(mut self, item: &'static str) -> Step {
        self.item = Some(item);
        self
    }

    /// A step not run, and why (`--no-exchange`, or the step it needs failed).
    pub fn skipped(step: StepName, why: &str) -> Step {
        Step {
            problem: Some(why.to_string()),
            ..Step::new(step, Status::Skipped, Vec::new())
        }
    }
}

pub(super) fn fact(name: &str, value: impl Into<String>) -> Fact {
    Fact {
        name: name.to_string(),
        value: value.into(),
    }
}

/// The whole report, in step order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether `check` exits 0 ([`Report::passed`]).
    pub ok: bool,
    /// Each step.
    pub steps: Vec<Step>,
}

impl Report {
    /// A report of `steps`.
    pub fn new(steps: Vec<Step>) -> Report {
        let ok = steps
            .iter()
            .all(|s| matches!(s.status, Status::Pass | Status::Skipped));
        Report { ok, steps }
    }

    /// The exit rule: every step that ran passed. A step skipped on request
    /// (`--no-exchange`) does not count against it; a warning does, since the next
    /// call may fail.
    pub fn passed(&self) -> bool {
        self.ok
    }

    /// The exit code: 0 when [`Report::passed`], else 1.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.passed())
    }

    /// One line per step (`ok manifest: ...`), then, for a step that did not pass, its
    /// problem and fix on the next lines, indented.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            let facts: Vec<String> = step
                .facts
                .iter()
                .map(|f| format!("{}={}", f.name, f.value))
                .collect();
            out.push_str(&format!("{:<4} {}", step.status.mark(), step.step.label()));
            if !facts.is_empty() {
                out.push_str(&format!(": {}", facts.join(", ")));
            }
            out.push('\n');
            if let Some(problem) = &step.problem {
                out.push_str(&format!("     {problem}\n"));
            }
            if let Some(fix) = &step.fix {
                match step.item {
                    Some(item) => out.push_str(&format!("     fix ({item}): {fix}\n")),
                    None => out.push_str(&format!("     fix: {fix}\n")),
                }
            }
        }
        out
    }

    /// The report as JSON (`--output json`): `{"ok": bool, "steps": [...]}`.
    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }
}
