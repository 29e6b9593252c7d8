//! Values that must never reach a log: the service account token handed to the guest,
//! and the credentials it returns. Both redact themselves in `Debug` and `Display`.

use std::fmt;

/// A secret string: the component's own type, whose `Debug` and `Display` print
/// `[redacted]`; [`Secret::expose`] is the only way to the value, so every place that
/// reveals it is easy to find.
pub use cloudsmith_access_token::secret::Secret;

/// What a successful `generate` returns: exactly ESO's outputs.
///
/// `auth` is standard base64 of `token:<access token>`; `expiry` is the access token's
/// `exp` in decimal UNIX seconds. Any further keys a future component returns are kept
/// in [`Credentials::outputs`]. `Debug` and `Display` show the expiry and key names only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    auth: Secret,
    expiry: String,
    outputs: Vec<(String, Secret)>,
}

/// Why a guest's outputs are not credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputsError {
    /// More than [`MAX_OUTPUT_KEYS`] outputs.
    #[error("{0} outputs, more than the {MAX_OUTPUT_KEYS} allowed")]
    TooMany(usize),
    /// More than [`MAX_OUTPUT_BYTES`] in all.
    #[error("outputs total {0} bytes, more than the {MAX_OUTPUT_BYTES} allowed")]
    TooLarge(usize),
    /// An output's value is not UTF-8.
    #[error("output `{0}` is not UTF-8")]
    NotUtf8(String),
    /// `auth` or `expiry` is missing.
    #[error("output `{0}` is missing")]
    Missing(&'static str),
    /// `expiry` is not decimal UNIX seconds.
    #[error("output `expiry` is not decimal UNIX seconds")]
    ExpiryNotSeconds,
}

/// ESO's outputs are two short strings; a plugin returning more is refused before the
/// host renders or stores anything.
pub const MAX_OUTPUT_KEYS: usize = 16;
/// Bound on the outputs' total size (keys and values): far above a real token's.
pub const MAX_OUTPUT_BYTES: usize = 128 * 1024;

impl Credentials {
    /// Builds credentials from the guest's output map. Fails, naming the problem, when
    /// `auth` or `expiry` is missing or not UTF-8, or `expiry` is not decimal seconds.
    pub fn from_outputs(outputs: Vec<(String, Vec<u8>)>) -> Result<Self, OutputsError> {
        if outputs.len() > MAX_OUTPUT_KEYS {
            return Err(OutputsError::TooMany(outputs.len()));
        }
        let total: usize = outputs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_OUTPUT_BYTES {
            return Err(OutputsError::TooLarge(total));
        }
        let mut entries = Vec::with_capacity(outputs.len());
        for (key, value) in outputs {
            let value = match String::from_utf8(value) {
                Ok(value) => value,
                Err(_) => return Err(OutputsError::NotUtf8(key)),
            };
            entries.push((key, Secret::new(value)));
        }
        let find = |key: &'static str| {
            let value = entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            value.ok_or(OutputsError::Missing(key))
        };
        let auth = find("auth")?;
        let expiry = find("expiry")?;
        let expiry = expiry.expose().to_string();
        // ESO prints a fractional `exp` as Go does ("1700000000.5"): digits, at most one point.
        let (whole, fraction) = expiry.split_once('.').unwrap_or((&expiry, "0"));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(fraction) {
            return Err(OutputsError::ExpiryNotSeconds);
        }
        Ok(Credentials {
            auth,
            expiry,
            outputs: entries,
        })
    }

    /// ESO's `auth` output: base64 of `token:<access token>`.
    pub fn auth(&self) -> &Secret {
        &self.auth
    }

    /// The access token inside `auth` when it is base64 of `token:<access token>`, as
    /// the Cloudsmith generator writes it; `None` for a generator that writes another
    /// form (a `--component` may).
    pub fn access_token(&self) -> Option<Secret> {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(self.auth.expose())
            .ok()?;
        let token = String::from_utf8(decoded)
            .ok()?
            .strip_prefix("token:")?
            .to_string();
        (!token.is_empty()).then(|| Secret::new(token))
    }

    /// ESO's `expiry` output: decimal UNIX seconds.
    pub fn expiry(&self) -> &str {
        &self.expiry
    }

    /// The expiry as a number, when it fits in a `u64`.
    pub fn expiry_unix(&self) -> Option<u64> {
        self.expiry.parse().ok()
    }

    /// Every output in the order the generator returned them.
    pub fn outputs(&self) -> &[(String, Secret)] {
        &self.outputs
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("auth", &self.auth)
            .field("expiry", &self.expiry)
            .field(
                "keys",
                &self.outputs.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "credentials (auth [redacted], expiry {})", self.expiry)
    }
}

/// Replaces each of `secrets` (and anything shaped like a JWT) in `text` with
/// `[redacted]`, so guest-supplied text can be shown safely.
///
/// The JWT rule is a backstop for secrets the host never saw, such as a token a composed
/// plug read itself: three dot-separated base64url runs, the first starting `eyJ`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    // Every call redacts the guest's output, which is nearly always empty.
    if text.is_empty() {
        return String::new();
    }
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(secret, "[redacted]");
    }
    redact_jwts(&out)
}

fn redact_jwts(text: &str) -> String {
    let is_b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("eyJ") {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let end = candidate
            .find(|c: char| !(is_b64url(c) || c == '.'))
            .unwrap_or(candidate.len());
        let run = &candidate[..end];
        let parts: Vec<&str> = run.split('.').collect();
        if parts.len() >= 3 && parts[0].len() > 3 && parts[1].len() > 3 {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        rest = &candidate[end..];
        if run.is_empty() {
            // Cannot happen ("eyJ" is three base64url characters), but never loop forever.
            break;
        }
    }
    out.push_str(rest);
    out
}

/// Text made safe for a one-line message or log field: anything shaped like a JWT
/// redacted, control characters and runs of whitespace folded into one space, and at
/// most `max` characters: a longer text is cut at the last word that fits, with `…`
/// (a single word longer than the line is cut inside). Every message built from text
/// the host did not write (guest output, a server's answer, a parser's error, user
/// input) goes through it.
pub fn one_line(text: &str, max: usize) -> String {
    let folded = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let clean = redact_jwts(&folded);
    if clean.chars().count() <= max {
        return clean;
    }
    // Room for the ellipsis.
    let fits: String = clean.chars().take(max.saturating_sub(1)).collect();
    let next_is_space = clean.chars().nth(fits.chars().count()) == Some(' ');
    // At a word, unless the word cut is a blob (longer than any word a reader needs
    // whole): then inside it, so the line keeps showing what it was.
    let kept = match fits.rfind(' ') {
        Some(space) if !next_is_space && fits.len() - space <= 40 => &fits[..space],
        _ => fits.as_str(),
    };
    format!("{}…", kept.trim_end_matches([' ', ',', ';', ':', '(']))
}

/// A value from untrusted input (a server URL, an image name, an action), as an error
/// quotes it: [`one_line`], at most 80 characters.
pub fn shown(value: &str) -> String {
    one_line(value, 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s}"), "[redacted]");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn credentials_debug_hides_auth() {
        let c = Credentials::from_outputs(vec![
            ("auth".into(), b"dG9rZW46c2VjcmV0".to_vec()),
            ("expiry".into(), b"1700000000".to_vec()),
        ])
        .unwrap();
        let shown = format!("{c:?} {c}");
        assert!(!shown.contains("dG9rZW46"));
        assert!(shown.contains("1700000000"));
        assert_eq!(c.expiry_unix(), Some(1_700_000_000));
    }

    #[test]
    fn credentials_need_both_keys() {
        let err = Credentials::from_outputs(vec![("auth".into(), b"x".to_vec())]).unwrap_err();
        assert!(err.to_string().contains("expiry"));
        let err = Credentials::from_outputs(vec![
            ("auth".into(), b"x".to_vec()),
            ("expiry".into(), b"soon".to_vec()),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("decimal"));
    }

    #[test]
    fn fractional_expiry_as_eso_prints_it_is_accepted() {
        let output = |e: &str| {
            vec![
                ("auth".into(), b"x".to_vec()),
                ("expiry".into(), e.as_bytes().to_vec()),
            ]
        };
        assert_eq!(
            Credentials::from_outputs(output("1700000000.5"))
                .unwrap()
                .expiry(),
            "1700000000.5"
        );
        for bad in ["1700000000.", ".5", "1.2.3", "-1", ""] {
            assert!(Credentials::from_outputs(output(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outputs_past_the_bounds_are_refused() {
        let mut many: Vec<(String, Vec<u8>)> =
            (0..MAX_OUTPUT_KEYS).map(|i| (format!("k{i}"), vec![])).collect();
        many.push(("auth".into(), b"x".to_vec()));
        let err = Credentials::from_outputs(many).unwrap_err();
        assert_eq!(err.to_string(), "17 outputs, more than the 16 allowed");
        let huge = vec![
            ("auth".into(), vec![b'a'; MAX_OUTPUT_BYTES]),
            ("expiry".into(), b"1".to_vec()),
        ];
        let err = Credentials::from_outputs(huge).unwrap_err();
        assert_eq!(
            err.to_string(),
            "outputs total 131083 bytes, more than the 131072 allowed"
        );
    }

    #[test]
    fn redacts_known_secrets_and_jwts() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2ln";
        let text = format!("token={jwt} other=topsecret-value end");
        let clean = redact(&text, &["topsecret-value"]);
        assert_eq!(clean, "token=[redacted] other=[redacted] end");
        assert_eq!(redact("eyJ alone", &[]), "eyJ alone");
    }

    #[test]
    fn one_line_strips_controls_and_cuts() {
        assert_eq!(one_line("a\nb\x1b[31m", 100), "a b [31m");
        assert_eq!(one_line("  a \t\r\n  b  ", 100), "a b");
        assert_eq!(one_line("abcdef", 3), "ab…");
        assert_eq!(one_line("ééé", 2), "é…");
        assert_eq!(one_line("abc defgh", 8), "abc…");
        assert_eq!(one_line("abc: defgh", 8), "abc…");
        assert_eq!(
            one_line("abc defgh", 5),
            "abc…",
            "the next character is a space: the word fits"
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        assert_eq!(
            one_line(&format!("bad token {jwt}\n"), 100),
            "bad token [redacted]"
        );
        assert_eq!(shown(&"x".repeat(100)).chars().count(), 80);
    }
}
